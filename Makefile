# synthkit: set-up, tests, and the study's pipeline as file targets (a finished step is not redone).
PYTHON ?= python3
VENV   ?= .venv
SK     := $(VENV)/bin/synthkit
CIFAR  ?= ../shared/data/cifar10-jpeg.tar.gz
PER_CLASS ?= 500
SEED   ?= 0

ifeq ($(wildcard $(CIFAR)),)
CIFAR_SOURCE := --download
else
CIFAR_SOURCE := --source $(CIFAR)
endif

.PHONY: help install test data

help:  ## show targets and variables
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 14
	@echo "variables: CIFAR=$(CIFAR) PER_CLASS=$(PER_CLASS) SEED=$(SEED)"

install:  ## create .venv and install synthkit with its test tools
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --upgrade pip
	$(VENV)/bin/pip install -e '.[dev]'

test:  ## run the test suite
	$(VENV)/bin/pytest

data: data/real.h5 data/test.h5  ## real training subset (PER_CLASS per class) and the real test set

data/real.h5:
	$(SK) data cifar10 $(CIFAR_SOURCE) --split train --per-class $(PER_CLASS) --seed $(SEED) --out $@ --resume

data/test.h5:
	$(SK) data cifar10 $(CIFAR_SOURCE) --split test --out $@ --resume
