# synthkit: set-up, tests, and the whole study as a graph of files. A finished step is not redone;
# `make -n reproduce` shows the plan; `make help` lists targets and variables.
PYTHON ?= python3
VENV   ?= .venv
SK     := $(VENV)/bin/synthkit
HERE   := $(patsubst %/,%,$(dir $(abspath $(firstword $(MAKEFILE_LIST)))))

# ---- the study's variables (override on the command line: make reproduce MODEL=/path/to/sd PER_CLASS=100).
# Those set here are the study's choices; those left empty take synthkit's own defaults (synthkit/core/config.py,
# shown by `synthkit COMMAND --help`), so that a default lives in one place.
MODEL        ?= CompVis/stable-diffusion-v1-4
CIFAR        ?= ../shared/data/cifar10-jpeg.tar.gz
YUD          ?= ../shared/data/yud-train
# Your own data instead of CIFAR-10: real training and test stores (synthkit data folder|cifar100|stl10 makes them).
# Classes and prompts then come from REAL; PER_CLASS and TEST_PER_CLASS default to the whole stores.
REAL         ?=
TEST         ?=
PER_CLASS    ?= $(if $(REAL),,500)
TEST_PER_CLASS ?=
SD_PER_CLASS ?= 2500
# The Stable Diffusion row as the original study made it: each real image's BLIP caption (CAPTION_MODEL) as its img2img
# prompt, from SD_MODEL (Stable Diffusion 1.5, separate from the DI MODEL), strength 0.75 and guidance 7.5 (synthkit's
# defaults). SD_PROMPTS=template keeps one class template (SD_PROMPT) for every image instead.
SD_PROMPTS   ?= captions
SD_MODEL     ?= runwayml/stable-diffusion-v1-5
CAPTION_MODEL ?= Salesforce/blip-image-captioning-base
SD_PROMPT    ?= a photo of a {class}
SD_INIT      ?= real
SD_RESOLUTION ?= 512
# Text-to-image samples of SD_PROMPT from SD_MODEL, PROMPTS_PER_CLASS per class (data/prompts.h5): a grid and the judge's
# score beside the img2img row. Empty (the study's default) skips them; the demo sets it.
PROMPTS_PER_CLASS ?=
SD_SAVE_SIZE ?= 128
MIX          ?=
SEED         ?= 0
# Every classifier of the table is trained once per seed of SEEDS (one job), and the report gives mean ± std.
SEEDS        ?= $(SEED)
# The training recipe (synthkit/core/config.py): di, the official evaluation (50,000 steps at batch 128, every row the
# same); study, the original study's; quick, for CPUs. TRAIN_STEPS, BATCH, LR, WARMUP_STEPS, EVALS override it.
RECIPE       ?= di
DEVICE       ?= auto
SHARDS       ?= 1
INVERT_BY    ?= $(if $(REAL),all,class)
PER_IMAGE    ?=
SD_STRENGTH  ?=
SD_STEPS     ?=
RESOLUTION   ?=
UPDATES      ?=
INV_BATCH    ?=
# The inversion's AdamW learning rate: empty is the official 0.03 (synthkit's default); the demo sets its own.
INV_LR       ?=
DI_STEPS     ?=
GEN_BATCH    ?=
# Every classifier trains at one size: IMAGE_SIZE, or when empty the recipe's own (study: 224) or else the real
# store's (32 px for CIFAR-10), so that prompt images saved larger (SD_SAVE_SIZE) are resized to it, as in the study.
IMAGE_SIZE   ?=
TRAIN_STEPS  ?=
BATCH        ?=
LR           ?=
WARMUP_STEPS ?=
EVALS        ?=
GRADCAM_N    ?=
VANISH_N     ?=
KEEP         ?=
KEEP_BY      ?=
FIDELITY_N   ?=
# The judge (synthkit judge): JUDGE_MODEL read as a zero-shot classifier scores whether each store's images show their
# labels. Empty (the study's default) skips it; the demo sets its generator. JUDGE_N: images per class of each store.
JUDGE_MODEL  ?=
JUDGE_N      ?=
# The sample-complexity sweep (make sweep): SIZES real images per class, nested subsets of one real store of the
# largest size, which is inverted once; every size samples the embeddings of its own images (sample --only).
SIZES        ?= 10 50 100 500 1000
SWEEP_SEEDS  ?= $(SEEDS)
SWEEP_EVALS  ?= $(EVALS)
# The largest size is cut from SWEEP_FROM (default: CIFAR-10's training set, or REAL) and inverted into SWEEP_EMB;
# give the study's own (SWEEP_FROM=data/real.h5 SWEEP_EMB=models/inv/all.safetensors with INVERT_BY=all) to reuse it.
SWEEP_FROM   ?=
SWEEP_EMB    ?= models/sweep/inv.safetensors
# The scene study (make geometry): an image folder at the generator's resolution, inverted and sampled.
SCENES       ?= $(YUD)
GEO_CLASS    ?= urban scene
GEO_SIZE     ?= 256
GEO_PER_CLASS ?=
GEO_UPDATES  ?=
GEO_SD_PER_CLASS ?= 100
GEO_N        ?=

# The study in miniature (make mini-study, mini-sweep; see there): its folder, and its protocol's two numbers.
MINI_DIR     ?= mini-study
# DI's gradient updates per image, at the official lr: 1,000, where the DI measurement on the miniature
# (bench/mini_quality.py, 2026-12-07) found retrieval saturated (99.5% of 200 sources; 85% at 300) and the loss at
# 0.61x its start; 3,000 gain 0.05x the sources' judged share more for three times the 30 CPU minutes.
MINI_UPDATES ?= 1000
# Its inversion's learning rate: empty is the official 0.03 (300 updates at 0.03 retrieve 85% of their sources on the
# shipped miniature, 60 at 0.3 92%: bench/README.md, 2026-12-06).
MINI_INV_LR  ?=
# Every row's training steps under MINI_RECIPE, measured by bench/mini_steps.py (real at 50 per class, 3 seeds,
# 2,000 test images; 2026-12-07): 150 steps 33.92 +- 0.51%, 300 38.40 +- 0.40%, 600 40.03 +- 1.47%. At 300 the seeds'
# spread is smallest, and doubling gains 1.6 points, about its own spread then.
MINI_STEPS   ?= 300
MINI_RECIPE  ?= quick

ifneq ($(strip $(REAL)),)
ifeq ($(strip $(TEST)),)
$(error REAL=$(REAL) needs TEST=: a real test store with the same classes (CIFAR-10's test set would not match))
endif
endif
# INVERT_BY=class makes a job per class of CLASSES: CIFAR-10's, or give your store's (names without spaces).
CLASSES ?= airplane automobile bird cat deer dog frog horse ship truck
ifeq ($(wildcard $(CIFAR)),)
CIFAR_SOURCE := --download
else
CIFAR_SOURCE := --source $(CIFAR)
endif
TEST_SUBSET := $(if $(TEST_PER_CLASS),--per-class $(TEST_PER_CLASS) --seed $(SEED))
# `$(call opt,--flag,$(VAR))` passes the option only when the variable is set.
opt = $(if $(strip $(2)),$(1) $(strip $(2)))
CAPTIONS     := $(filter captions,$(SD_PROMPTS))
ifneq ($(filter-out captions template,$(SD_PROMPTS)),)
$(error SD_PROMPTS=$(SD_PROMPTS): use captions or template)
endif
ifneq ($(CAPTIONS),)
ifeq ($(strip $(SD_INIT)),)
$(error SD_PROMPTS=captions prompts each init image with its caption: it needs SD_INIT (e.g. real))
endif
endif
SD_INIT_STORE = $(if $(SD_INIT),data/$(SD_INIT)$(if $(CAPTIONS),-captions).h5)
SD_INIT_ARGS = $(if $(SD_INIT),--init $(SD_INIT_STORE) $(call opt,--strength,$(SD_STRENGTH)))
SD_PROMPT_ARGS = $(if $(CAPTIONS),--prompt-from caption,--prompt $(call shell_quote,$(SD_PROMPT)) --classes data/real.h5)
SD_SAVE_ARGS = $(call opt,--save-size,$(SD_SAVE_SIZE))
# With SHARDS=1 each generation stage writes its store directly; with more, shards then one merge.
SHARDED := $(filter-out 1,$(SHARDS))
SHARD_ARG = $(if $(SHARDED),--shard $*/$(SHARDS))
SHARD_IDS := $(shell seq 0 $$(( $(SHARDS) - 1 )))
# The tiny offline model is built on demand when it is the MODEL.
MODEL_DEP := $(filter models/tiny-sd,$(MODEL))
SD_MODEL_DEP := $(filter models/tiny-sd,$(SD_MODEL))
CAPTION_DEP := $(filter models/tiny-blip,$(CAPTION_MODEL))

# Each stage's settings are kept in .make/STAGE; when they change, that stage and what follows are redone.
# (Not for goals that only start another make or touch no study file: they must not reset the settings.)
STAMPS ?= .make
# An interrupted run's leftovers are continued (the commands pass --resume) unless a prerequisite (an input,
# or the stage's settings stamp) is newer than they are: then they are stale and removed first.
leftovers = rm -f $@; $(call stale,$(1))
shell_quote = '$(subst ','\'',$(1))'
# A stage's stamp holds its settings; its recipe rewrites it when they changed (the FORCE idiom), so only a real
# run touches .make/: `make -n`, `make help` and a dry run with other values change no file.
stamp_data = $(CIFAR) $(REAL) $(TEST) $(PER_CLASS) $(TEST_PER_CLASS) $(SEED)
stamp_sd = $(SD_MODEL) $(SD_PROMPTS) $(SD_PER_CLASS) $(PROMPTS_PER_CLASS) $(SD_PROMPT) $(SD_INIT) $(SD_STRENGTH) $(SD_STEPS) $(SD_RESOLUTION) $(SD_SAVE_SIZE) $(SEED)
stamp_captions = $(CAPTION_MODEL) $(SEED)
stamp_invert = $(MODEL) $(INVERT_BY) $(RESOLUTION) $(UPDATES) $(INV_BATCH) $(INV_LR) $(SEED)
stamp_inv = $(PER_IMAGE) $(DI_STEPS) $(SEED)
stamp_train = $(RECIPE) $(TRAIN_STEPS) $(BATCH) $(LR) $(WARMUP_STEPS) $(EVALS) $(MIX) $(IMAGE_SIZE)
stamp_filter = $(KEEP) $(KEEP_BY)
stamp_analysis = $(GRADCAM_N) $(VANISH_N) $(FIDELITY_N) $(JUDGE_MODEL) $(JUDGE_N) $(SEED)
stamp_sweep = $(CIFAR) $(REAL) $(SWEEP_FROM) $(SIZES) $(SEED)
stamp_geometry = $(SCENES) $(GEO_CLASS) $(GEO_SIZE) $(GEO_PER_CLASS) $(GEO_UPDATES) $(GEO_SD_PER_CLASS) $(GEO_N) $(MODEL) $(PER_IMAGE) $(DI_STEPS) $(SD_STEPS) $(SD_PROMPT) $(SEED)
# A stamp whose settings differ from the file's (read, never written, while parsing) gets FORCE, so that `make -n`
# shows exactly the stages a real run would redo.
STAGES := data sd captions invert inv train filter analysis sweep geometry
differ = $(subst $(1),,$(2))$(subst $(2),,$(1))
CHANGED := $(foreach s,$(STAGES),$(if $(call differ,x$(stamp_$(s)),x$(shell cat $(STAMPS)/$(s) 2>/dev/null)),$(s)))
$(CHANGED:%=$(STAMPS)/%): FORCE
$(STAMPS)/%:
	@mkdir -p $(STAMPS) && printf '%s\n' $(call shell_quote,$(stamp_$*)) > $@
.PHONY: FORCE
FORCE:

# ---- the variables, checked before any stage runs: one line naming the variable.
digits = $(subst 0,,$(subst 1,,$(subst 2,,$(subst 3,,$(subst 4,,$(subst 5,,$(subst 6,,$(subst 7,,$(subst 8,,$(subst 9,,$(1)))))))))))
not_count = $(strip $(foreach w,$(1),$(if $(call digits,$(w)),$(w))))
check_list = $(if $(strip $($(1))),,$(error $(1) is empty: give one or more non-negative integers))$(if $(call not_count,$($(1))),$(error $(1)=$($(1)): '$(firstword $(call not_count,$($(1))))' is not a non-negative integer))$(if $(filter-out $(words $($(1))),$(words $(sort $($(1))))),$(error $(1)=$($(1)) repeats a value))
check_number = $(if $(strip $($(1))),$(if $(or $(word 2,$($(1))),$(call not_count,$($(1)))),$(error $(1)=$($(1)) is not a non-negative integer),$(if $(2),$(if $(subst 0,,$($(1))),,$(error $(1)=$($(1)) must be at least 1)))))
RECIPE_NAMES := $(shell sed -n 's/^    "\([a-z0-9-]*\)": {  # .*/\1/p' $(dir $(firstword $(MAKEFILE_LIST)))synthkit/core/config.py)
ifeq ($(filter help,$(MAKECMDGOALS)),)
$(foreach v,SIZES SEEDS SWEEP_SEEDS,$(call check_list,$(v)))
$(foreach v,SHARDS PER_CLASS TEST_PER_CLASS SD_PER_CLASS PROMPTS_PER_CLASS SD_RESOLUTION SD_SAVE_SIZE PER_IMAGE SD_STEPS RESOLUTION UPDATES INV_BATCH DI_STEPS GEN_BATCH IMAGE_SIZE TRAIN_STEPS BATCH GRADCAM_N VANISH_N FIDELITY_N JUDGE_N GEO_SIZE GEO_PER_CLASS GEO_UPDATES GEO_SD_PER_CLASS GEO_N MINI_UPDATES MINI_STEPS,$(call check_number,$(v),1))
$(foreach v,SEED EVALS WARMUP_STEPS SWEEP_EVALS,$(call check_number,$(v)))
$(foreach v,RECIPE MINI_RECIPE,$(if $(filter $($(v)),$(RECIPE_NAMES))$(if $(RECIPE_NAMES),,no list),,$(error $(v)=$($(v)) is not a recipe: use one of $(RECIPE_NAMES))))
endif

# One embeddings file per class (INVERT_BY=class: separate jobs, as the official scripts), or one for all.
INV_FILES   := $(if $(filter all,$(INVERT_BY)),models/inv/all.safetensors,$(CLASSES:%=models/inv/%.safetensors))
# The table's classifiers, one per row and seed: models/resnet18-ROW-sSEED.safetensors. The rows that need no
# filtered store train in one job, the filtered ones in a second (the filter needs the first seed's real classifier).
MAIN_ROWS   := real inv sd real+inv real+sd
KEPT_ROWS   := inv-kept real+inv-kept
classifiers = $(foreach r,$(1),$(foreach s,$(SEEDS),models/resnet18-$(r)-s$(s).safetensors))
MAIN_CLFS   := $(call classifiers,$(MAIN_ROWS))
KEPT_CLFS   := $(call classifiers,$(KEPT_ROWS))
CLASSIFIERS := $(MAIN_CLFS) $(KEPT_CLFS)
clf         = models/resnet18-$(1)-s$(firstword $(SEEDS)).safetensors
PROMPTS     := $(if $(PROMPTS_PER_CLASS),data/prompts.h5)
GRIDS       := results/grids/real.png results/grids/sd.png results/grids/inv.png $(PROMPTS:data/%.h5=results/grids/%.png)

.PHONY: help install test data captions sd invert inv filter train evaluate analysis geometry sweep report reproduce demo demo-model mini-study mini-sweep clean-study

help:  ## show targets and variables
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 14
	@echo
	@echo "variables (now):"
	@echo "  MODEL=$(MODEL)  (the Stable Diffusion model: mini, the shipped miniature, a hub id or a diffusers folder)"
	@echo "  REAL=$(REAL) TEST=$(TEST)  (your own real training and test stores; empty: CIFAR-10 from CIFAR=$(CIFAR))"
	@echo "  PER_CLASS=$(PER_CLASS)  (real training images per class)  TEST_PER_CLASS=$(TEST_PER_CLASS)  (empty: all 1,000)"
	@echo "  SD_PER_CLASS=$(SD_PER_CLASS)  (prompt images per class)  SEED=$(SEED)  DEVICE=$(DEVICE)"
	@echo "  RECIPE=$(RECIPE)  SEEDS=$(SEEDS)  (a classifier per row and seed)  MIX=$(MIX)  (empty: the recipe's real + synthetic halves)"
	@echo "  SHARDS=$(SHARDS)  (generation processes; use make -j)  INVERT_BY=$(INVERT_BY)  (class: a job per class; all: one job)"
	@echo "  SD_PROMPTS=$(SD_PROMPTS)  (captions: BLIP captions as img2img prompts; template: SD_PROMPT)  SD_MODEL=$(SD_MODEL)  CAPTION_MODEL=$(CAPTION_MODEL)"
	@echo "  SD_PROMPT='$(SD_PROMPT)'  (the template: SD_PROMPTS=template, and the scene study's prompts)  SD_INIT=$(SD_INIT)  (img2img source store; empty: text to image)"
	@echo "  PROMPTS_PER_CLASS=$(PROMPTS_PER_CLASS)  (text-to-image samples of SD_PROMPT per class in data/prompts.h5; empty: none)"
	@echo "  CLASSES=$(CLASSES)  (INVERT_BY=class: a job per class)"
	@echo "  SD_RESOLUTION=$(SD_RESOLUTION) SD_SAVE_SIZE=$(SD_SAVE_SIZE)"
	@echo "  empty means synthkit's default (or the recipe's): PER_IMAGE=$(PER_IMAGE) TRAIN_STEPS=$(TRAIN_STEPS) BATCH=$(BATCH) LR=$(LR) WARMUP_STEPS=$(WARMUP_STEPS) EVALS=$(EVALS)"
	@echo "  IMAGE_SIZE=$(IMAGE_SIZE)  (classifiers' training size; empty: the recipe's, else the real store's)"
	@echo "  RESOLUTION=$(RESOLUTION) UPDATES=$(UPDATES) INV_BATCH=$(INV_BATCH) INV_LR=$(INV_LR) DI_STEPS=$(DI_STEPS) SD_STEPS=$(SD_STEPS)"
	@echo "  SD_STRENGTH=$(SD_STRENGTH) GEN_BATCH=$(GEN_BATCH) GRADCAM_N=$(GRADCAM_N) VANISH_N=$(VANISH_N)"
	@echo "  KEEP=$(KEEP) KEEP_BY=$(KEEP_BY)  (filter: share of each class kept, criterion)  FIDELITY_N=$(FIDELITY_N)  (images per class)"
	@echo "  JUDGE_MODEL=$(JUDGE_MODEL)  (synthkit judge: this model as a zero-shot classifier of each store; empty: skipped)  JUDGE_N=$(JUDGE_N)"
	@echo "  sweep: SIZES=$(SIZES)  (real images per class)  SWEEP_SEEDS=$(SWEEP_SEEDS)  SWEEP_EVALS=$(SWEEP_EVALS)  SWEEP_FROM=$(SWEEP_FROM)  SWEEP_EMB=$(SWEEP_EMB)"
	@echo "  TRAIN_LAUNCH=$(TRAIN_LAUNCH)  (e.g. torchrun: a job's classifiers split across ranks)"
	@echo "  geometry: SCENES=$(SCENES) GEO_CLASS=$(GEO_CLASS) GEO_SIZE=$(GEO_SIZE) GEO_PER_CLASS=$(GEO_PER_CLASS) GEO_UPDATES=$(GEO_UPDATES) GEO_SD_PER_CLASS=$(GEO_SD_PER_CLASS) GEO_N=$(GEO_N)"
	@echo "  YUD=$(YUD)  (York Urban with gt.json: vanish-score scores the line detector)"
	@echo "  demo: DEMO_DIR=$(DEMO_DIR)  (its own data/, models/, results/, stage settings)  DEMO_MODEL=$(DEMO_MODEL)  (its generator)"
	@echo "  mini-study, mini-sweep: MINI_DIR=$(MINI_DIR)  (their folder)  MINI_UPDATES=$(MINI_UPDATES) MINI_INV_LR=$(MINI_INV_LR)  (DI's updates per image and learning rate)  MINI_RECIPE=$(MINI_RECIPE) MINI_STEPS=$(MINI_STEPS)  (every row's recipe and steps)"
	@echo "  set-up: PYTHON=$(PYTHON) VENV=$(VENV) STAMPS=$(STAMPS)  (the stage settings' folder)"

install:  ## create .venv and install synthkit with its test tools
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --upgrade pip
	$(VENV)/bin/pip install -e '.[dev]'

test: $(SK)  ## lint and format check (ruff), the layers (import-linter), then the test suite (installing first if needed)
	$(VENV)/bin/ruff check synthkit tests bench
	$(VENV)/bin/ruff format --check synthkit tests bench
	$(VENV)/bin/lint-imports
	$(VENV)/bin/pytest

# ---- the study
data: data/real.h5 data/test.h5  ## real training subset (PER_CLASS per class) and the real test set

data/real.h5: $(STAMPS)/data $(REAL)
	$(call leftovers,$@.partial)
	$(if $(REAL),$(SK) subset $(REAL) $(call opt,--per-class,$(PER_CLASS)) --seed $(SEED) --out $@ --overwrite,\
	  $(SK) data cifar10 $(CIFAR_SOURCE) --split train --per-class $(PER_CLASS) --seed $(SEED) --out $@ --resume)

data/test.h5: $(STAMPS)/data $(TEST)
	$(call leftovers,$@.partial)
	$(if $(TEST),$(SK) subset $(TEST) $(TEST_SUBSET) --out $@ --overwrite,\
	  $(SK) data cifar10 $(CIFAR_SOURCE) --split test $(TEST_SUBSET) --out $@ --resume)

sd: data/sd.h5  ## prompt generation (img2img from the real store by default, as the original study)

$(if $(SHARDED),data/sd.shard-%-of-$(SHARDS).h5,data/sd.h5): $(STAMPS)/sd data/real.h5 $(SD_INIT_STORE) | $(SD_MODEL_DEP)
	$(call leftovers,$@.partial)
	$(SK) sample $(SD_PROMPT_ARGS) --per-class $(SD_PER_CLASS) --model $(SD_MODEL) $(SD_INIT_ARGS) \
	  $(call opt,--steps,$(SD_STEPS)) $(call opt,--resolution,$(SD_RESOLUTION)) $(SD_SAVE_ARGS) $(call opt,--batch-size,$(GEN_BATCH)) \
	  --seed $(SEED) --device $(DEVICE) $(SHARD_ARG) --out $@ --resume

data/prompts.h5: $(STAMPS)/sd data/real.h5 | $(SD_MODEL_DEP)
	$(call leftovers,$@.partial)
	$(SK) sample --prompt $(call shell_quote,$(SD_PROMPT)) --classes data/real.h5 --per-class $(PROMPTS_PER_CLASS) --model $(SD_MODEL) \
	  $(call opt,--steps,$(SD_STEPS)) $(call opt,--resolution,$(SD_RESOLUTION)) $(SD_SAVE_ARGS) $(call opt,--batch-size,$(GEN_BATCH)) \
	  --seed $(SEED) --device $(DEVICE) --out $@ --resume

captions: $(if $(CAPTIONS),$(SD_INIT_STORE))  ## BLIP captions of the img2img source store (SD_PROMPTS=captions)

# a store with its images' captions (the same images: the same fingerprint), read by sample --prompt-from caption
data/%-captions.h5: data/%.h5 $(STAMPS)/captions | $(CAPTION_DEP)
	$(call leftovers,$@.partial)
	$(SK) caption --data $< --model $(CAPTION_MODEL) --seed $(SEED) --device $(DEVICE) --out $@ --resume

models/tiny-blip:
	$(SK) model tiny-blip --out $@

invert: $(INV_FILES)  ## Diffusion Inversion: one embeddings file per class

models/inv/%.safetensors: data/real.h5 $(STAMPS)/invert | $(MODEL_DEP)
	$(call leftovers,$(@:.safetensors=.invert-state) $@.partial)
	$(SK) invert --class $* --data data/real.h5 --model $(MODEL) $(call opt,--resolution,$(RESOLUTION)) \
	  $(call opt,--updates,$(UPDATES)) $(call opt,--batch-size,$(INV_BATCH)) $(call opt,--lr,$(INV_LR)) --seed $(SEED) --device $(DEVICE) --out $@ --resume

inv: data/inv.h5  ## DI sampling from the learned embeddings

$(if $(SHARDED),data/inv.shard-%-of-$(SHARDS).h5,data/inv.h5): $(INV_FILES) $(STAMPS)/inv
	$(call leftovers,$@.partial)
	$(SK) sample $(INV_FILES:%=--embeddings %) --model $(MODEL) $(call opt,--per-image,$(PER_IMAGE)) \
	  $(call opt,--steps,$(DI_STEPS)) $(call opt,--batch-size,$(GEN_BATCH)) --seed $(SEED) --device $(DEVICE) $(SHARD_ARG) --out $@ --resume

ifneq ($(SHARDED),)
data/%.h5: $(foreach i,$(SHARD_IDS),data/%.shard-$(i)-of-$(SHARDS).h5)
	$(SK) merge $^ --out $@ --overwrite
endif

# The DI store filtered by the real-trained classifier (trained on the real training store, never on test images).
filter: data/inv-kept.h5  ## keep the best share of each class of the DI store (synthkit filter)

data/inv-kept.h5: data/inv.h5 $(call clf,real) $(STAMPS)/filter
	$(SK) filter --data data/inv.h5 --classifier $(call clf,real) $(call opt,--keep,$(KEEP)) \
	  $(call opt,--by,$(KEEP_BY)) $(if $(filter cam,$(KEEP_BY)),--real data/real.h5) --device $(DEVICE) --out $@ --overwrite

train: $(CLASSIFIERS)  ## the study's rows (real, inv, sd, real+inv, real+sd, inv-kept, real+inv-kept), once per seed of SEEDS

# Each job trains its rows for every seed, all for the recipe's steps, scoring data/test.h5 EVALS times on the way.
# TRAIN_LAUNCH (e.g. "$(VENV)/bin/torchrun --standalone --nproc-per-node 8") splits a job's classifiers across ranks.
TRAIN = $(if $(TRAIN_LAUNCH),$(TRAIN_LAUNCH) -m synthkit train --shard auto,$(SK) train)
# A recipe that sets its own image size (config.RECIPES: study's 224) trains at it unless IMAGE_SIZE is given; the
# others at IMAGE_SIZE or the real store's size. tests/test_pipeline.py checks this list against config.RECIPES.
SIZED_RECIPES := study
train_size = $(if $(IMAGE_SIZE),--image-size $(IMAGE_SIZE),$(if $(filter $(RECIPE),$(SIZED_RECIPES)),,--image-size $$($(STORE_SIZE) $(1))))
TRAIN_ARGS = --recipe $(RECIPE) $(call opt,--steps,$(TRAIN_STEPS)) \
  $(call opt,--batch-size,$(BATCH)) $(call opt,--lr,$(LR)) $(call opt,--warmup-steps,$(WARMUP_STEPS)) \
  $(call opt,--evals,$(EVALS)) $(call opt,--mix,$(MIX)) --test data/test.h5 --device $(DEVICE) --resume
STORE_SIZE = $(VENV)/bin/python -c 'import sys; from synthkit.io.store import Store; print(Store(sys.argv[1]).image_shape[0])'
# A job's finished classifiers are kept (--resume skips them) unless one of their own inputs is newer: then they,
# their state and their .partial are removed first, so a changed store retrains only the rows that read it.
stale = for f in $(1); do for d in $(or $(2),$^); do if [ -e "$$f" ] && [ "$$f" -ot "$$d" ]; then rm -rf "$$f"; fi; done; done
# $(call train_leftovers,ROWS,SEEDS,DATA_DIR,MODELS_DIR): a row's inputs are its stores, the test store and the stamp.
row_inputs = $(foreach s,$(subst +, ,$(1)),$(2)/$(s).h5) data/test.h5 $(STAMPS)/train
train_leftovers = $(foreach r,$(1),$(foreach s,$(2),$(call stale,$(foreach x,.safetensors .train-state.safetensors .safetensors.partial,$(4)/resnet18-$(r)-s$(s)$(x)),$(call row_inputs,$(r),$(3)));))
train_data = $(foreach r,$(1),--data $(subst $(space),$(comma),$(foreach s,$(subst +, ,$(r)),$(2)$(s)$(3))))
space := $(subst ,, )
comma := ,

$(MAIN_CLFS) &: data/real.h5 data/inv.h5 data/sd.h5 data/test.h5 $(STAMPS)/train
	$(call train_leftovers,$(MAIN_ROWS),$(SEEDS),data,models)
	$(TRAIN) $(call train_data,$(MAIN_ROWS)) --out 'models/resnet18-{data}-s{seed}.safetensors' $(SEEDS:%=--seed %) \
	  $(call train_size,data/real.h5) $(TRAIN_ARGS)

$(KEPT_CLFS) &: data/real.h5 data/inv-kept.h5 data/test.h5 $(STAMPS)/train
	$(call train_leftovers,$(KEPT_ROWS),$(SEEDS),data,models)
	$(TRAIN) $(call train_data,$(KEPT_ROWS)) --out 'models/resnet18-{data}-s{seed}.safetensors' $(SEEDS:%=--seed %) \
	  $(call train_size,data/real.h5) $(TRAIN_ARGS)

evaluate: results/accuracy.md  ## test accuracy of the seven rows (each seed of SEEDS) on the real test set

results/accuracy.md: $(CLASSIFIERS) data/test.h5
	$(SK) evaluate $(CLASSIFIERS:%=--model %) --test data/test.h5 --device $(DEVICE)

JUDGED := $(if $(JUDGE_MODEL),results/judge.json)
analysis: results/fidelity/summary.json results/gradcam/summary.json results/vanish/summary.json $(JUDGED) $(if $(wildcard $(YUD)/gt.json),results/vanish-yud/gt_scores.json)  ## fidelity of each store, Grad-CAM of real/inv/sd, vanish (lines and VPs of real, sd, inv), the judge when JUDGE_MODEL is set, vanish-score when YUD has gt.json

JUDGED_STORES = data/real.h5 data/test.h5 data/sd.h5 $(PROMPTS) data/inv.h5
results/judge.json: $(JUDGED_STORES) $(STAMPS)/analysis | $(filter models/tiny-sd,$(JUDGE_MODEL))
	$(SK) judge $(JUDGED_STORES:%=--data %) --model $(JUDGE_MODEL) $(call opt,--per-class,$(JUDGE_N)) \
	  --seed $(SEED) --device $(DEVICE) --out $@

results/gradcam/summary.json: $(call clf,real) $(call clf,inv) $(call clf,sd) data/test.h5 $(STAMPS)/analysis
	$(SK) gradcam --model $(call clf,real) --model $(call clf,inv) --model $(call clf,sd) --data data/test.h5 $(call opt,--n,$(GRADCAM_N)) --seed $(SEED) --device $(DEVICE) --out results/gradcam

results/fidelity/summary.json: data/real.h5 data/test.h5 data/sd.h5 data/inv.h5 data/inv-kept.h5 $(call clf,real) $(STAMPS)/analysis
	$(SK) fidelity --real data/real.h5 --data data/test.h5 --data data/sd.h5 --data data/inv.h5 --data data/inv-kept.h5 \
	  --classifier $(call clf,real) $(call opt,--per-class,$(FIDELITY_N)) --seed $(SEED) --device $(DEVICE) --out results/fidelity

results/vanish/summary.json: data/real.h5 data/sd.h5 data/inv.h5 $(STAMPS)/analysis
	$(SK) vanish --data data/real.h5 --data data/sd.h5 --data data/inv.h5 $(call opt,--n,$(VANISH_N)) --seed $(SEED) --out results/vanish

results/vanish-yud/gt_scores.json:
	$(SK) vanish-score --gt $(YUD) --out results/vanish-yud

results/grids/%.png: data/%.h5
	$(SK) show data/$*.h5 --out $@ --per-row 10 --seed $(SEED) --overwrite

# ---- the sample-complexity sweep: test accuracy against the number of real images per class, for real, DI and both
sweep: results/sweep/accuracy.md  ## real, inv and real+inv at each of SIZES real images per class, once per seed of SWEEP_SEEDS; the figure in the report
	$(SK) report

SWEEP_MAX   := $(lastword $(shell printf '%s\n' $(SIZES) | sort -n))
SWEEP_LESS  := $(filter-out $(SWEEP_MAX),$(SIZES))
SWEEP_ROWS  := $(foreach n,$(SIZES),real-$(n) inv-$(n) real-$(n)+inv-$(n))
SWEEP_CLFS  := $(foreach r,$(SWEEP_ROWS),$(foreach s,$(SWEEP_SEEDS),models/sweep/resnet18-$(r)-s$(s).safetensors))

SWEEP_SOURCE = $(or $(SWEEP_FROM),$(REAL))
data/sweep/real-$(SWEEP_MAX).h5: $(STAMPS)/sweep $(SWEEP_SOURCE)
	$(call leftovers,$@.partial)
	$(if $(SWEEP_SOURCE),$(SK) subset $(SWEEP_SOURCE) --per-class $(SWEEP_MAX) --seed $(SEED) --out $@ --overwrite,\
	  $(SK) data cifar10 $(CIFAR_SOURCE) --split train --per-class $(SWEEP_MAX) --seed $(SEED) --out $@ --resume)

# the same seed's subsets are nested: each smaller size is inside every larger one
$(SWEEP_LESS:%=data/sweep/real-%.h5): data/sweep/real-%.h5: data/sweep/real-$(SWEEP_MAX).h5
	$(SK) subset $< --per-class $* --seed $(SEED) --out $@ --overwrite

models/sweep/inv.safetensors: data/sweep/real-$(SWEEP_MAX).h5 $(STAMPS)/invert | $(MODEL_DEP)
	$(call leftovers,$(@:.safetensors=.invert-state) $@.partial)
	$(SK) invert --class all --data $< --model $(MODEL) $(call opt,--resolution,$(RESOLUTION)) \
	  $(call opt,--updates,$(UPDATES)) $(call opt,--batch-size,$(INV_BATCH)) $(call opt,--lr,$(INV_LR)) --seed $(SEED) --device $(DEVICE) --out $@ --resume

data/sweep/inv-%.h5: data/sweep/real-%.h5 $(SWEEP_EMB) $(STAMPS)/inv
	$(call leftovers,$@.partial)
	$(SK) sample --embeddings $(SWEEP_EMB) --only $< --model $(MODEL) $(call opt,--per-image,$(PER_IMAGE)) \
	  $(call opt,--steps,$(DI_STEPS)) $(call opt,--batch-size,$(GEN_BATCH)) --seed $(SEED) --device $(DEVICE) --out $@ --resume

$(SWEEP_CLFS) &: $(SIZES:%=data/sweep/real-%.h5) $(SIZES:%=data/sweep/inv-%.h5) data/test.h5 $(STAMPS)/train
	$(call train_leftovers,$(SWEEP_ROWS),$(SWEEP_SEEDS),data/sweep,models/sweep)
	$(TRAIN) $(call train_data,$(SWEEP_ROWS),data/sweep/,.h5) --out 'models/sweep/resnet18-{data}-s{seed}.safetensors' \
	  $(SWEEP_SEEDS:%=--seed %) $(call train_size,data/sweep/real-$(SWEEP_MAX).h5) $(TRAIN_ARGS) $(call opt,--evals,$(SWEEP_EVALS))

results/sweep/accuracy.md: $(SWEEP_CLFS) data/test.h5
	$(SK) evaluate $(SWEEP_CLFS:%=--model %) --test data/test.h5 --out results/sweep --device $(DEVICE)

# ---- the scene study: does generation keep projective geometry? (scenes at the generator's resolution)
geometry: results/geometry/summary.json  ## scenes: import, invert, DI and prompt samples, lines and VPs against their sources

data/scenes.h5: $(STAMPS)/geometry
	$(call leftovers,$@.partial)
	$(SK) data folder --source $(call shell_quote,$(SCENES)) --size $(GEO_SIZE) $(if $(GEO_CLASS),--class-name $(call shell_quote,$(GEO_CLASS))) \
	  $(if $(GEO_PER_CLASS),--per-class $(GEO_PER_CLASS) --seed $(SEED)) --out $@ --resume

models/inv-scenes/all.safetensors: data/scenes.h5 $(STAMPS)/geometry | $(MODEL_DEP)
	$(call leftovers,$(@:.safetensors=.invert-state) $@.partial)
	$(SK) invert --class all --data data/scenes.h5 --model $(MODEL) --resolution $(GEO_SIZE) $(call opt,--updates,$(GEO_UPDATES)) \
	  --seed $(SEED) --device $(DEVICE) --out $@ --resume

data/scenes-inv.h5: models/inv-scenes/all.safetensors $(STAMPS)/geometry
	$(call leftovers,$@.partial)
	$(SK) sample --embeddings $< --model $(MODEL) $(call opt,--per-image,$(PER_IMAGE)) $(call opt,--steps,$(DI_STEPS)) \
	  --save-size $(GEO_SIZE) --seed $(SEED) --device $(DEVICE) --out $@ --resume

data/scenes-sd.h5: data/scenes.h5 $(STAMPS)/geometry | $(MODEL_DEP)
	$(call leftovers,$@.partial)
	$(SK) sample --prompt $(call shell_quote,$(SD_PROMPT)) --classes data/scenes.h5 --per-class $(GEO_SD_PER_CLASS) --model $(MODEL) \
	  --resolution $(GEO_SIZE) $(call opt,--steps,$(SD_STEPS)) --seed $(SEED) --device $(DEVICE) --out $@ --resume

results/geometry/summary.json: data/scenes.h5 data/scenes-inv.h5 data/scenes-sd.h5 $(STAMPS)/geometry
	$(SK) vanish --data data/scenes.h5 --data data/scenes-inv.h5 --data data/scenes-sd.h5 --sources data/scenes.h5 \
	  $(call opt,--n,$(GEO_N)) --seed $(SEED) --out results/geometry

report: results/README.md  ## results/README.md from what is in results/ and models/

results/README.md: results/accuracy.md results/fidelity/summary.json results/gradcam/summary.json results/vanish/summary.json $(JUDGED) $(GRIDS) $(INV_FILES) \
  $(if $(wildcard $(YUD)/gt.json),results/vanish-yud/gt_scores.json) $(if $(wildcard $(SCENES)),results/geometry/summary.json)
	$(SK) report

reproduce: report  ## the whole study (GPU for full size), in this order: data, invert, inv, captions, sd, train, filter, train (kept rows), evaluate, analysis (fidelity, gradcam, vanish, grids, vanish-score), geometry (when SCENES exists), report

# ---- the offline demo: the same graph on the shipped miniature generator (mini), small enough for a 2-core CPU
# It runs in its own folder DEMO_DIR (demo/: its own data/, models/, results/ and stage settings), by this Makefile
# started there with the demo's variables, so that a later `make TARGET` here neither redoes nor deletes its work.
# Its work is fixed, not its time: each classifier trains 8 steps of 16 images (7 rows x 2 seeds), every class is
# inverted in one job, and the detector is not scored on York Urban (YUD=). The scene study runs on 12 York Urban
# photos at 64 px when ../shared has them (SCENES). bench/README.md gives each stage's work and seconds.
# Its images: 20 train and 10 test per class from CIFAR; without it (a clone without ../shared), the committed sample
# of 12 and 6 per class (tests/data), so that the demo runs offline anywhere. DEMO_MODEL is its generator: mini (a
# 32 px Stable Diffusion trained on CIFAR-10, synthkit/assets/mini-sd), whose prompt and DI images show their classes,
# and which the judge reads as a classifier; DEMO_MODEL=models/tiny-sd runs the graph on random weights (noise). Its
# Stable Diffusion row is img2img from the real images with SD_PROMPT (the miniature learned that template alone, so
# BLIP captions would mean nothing to it), and PROMPTS_PER_CLASS adds text-to-image samples of the same template.
DEMO_DIR   ?= demo
DEMO_MODEL ?= mini
# The demo writes its data/, models/ and results/ in DEMO_DIR: never this project's folder or a folder above it
# (links followed). DEMO_PATH is DEMO_DIR made absolute without its final slash: "" for the root.
DEMO_PATH = $(patsubst %/,%,$(or $(realpath $(DEMO_DIR)),$(abspath $(DEMO_DIR))))
ifneq ($(filter demo,$(MAKECMDGOALS)),)
$(if $(strip $(DEMO_DIR)),,$(error DEMO_DIR is empty: give the demo a folder of its own, e.g. DEMO_DIR=demo))
$(if $(filter $(DEMO_PATH)/%,$(realpath $(HERE))/),$(error DEMO_DIR=$(DEMO_DIR) is $(if $(filter $(DEMO_PATH),$(realpath $(HERE))),the project folder $(DEMO_PATH),$(or $(DEMO_PATH),/), a folder above the project $(realpath $(HERE))): the demo would write its data/, models/ and results/ there; give it a folder of its own, e.g. DEMO_DIR=demo))
endif
DEMO_DATA := $(if $(wildcard $(CIFAR)),CIFAR=$(abspath $(CIFAR)) PER_CLASS=20 TEST_PER_CLASS=10,\
  CIFAR=$(HERE)/tests/data/cifar10-mini.tar.gz PER_CLASS=12 TEST_PER_CLASS=6)
DEMO_VARS := MODEL=$(DEMO_MODEL) SD_MODEL=$(DEMO_MODEL) JUDGE_MODEL=$(DEMO_MODEL) SD_PROMPTS=template PROMPTS_PER_CLASS=20 \
  CAPTION_MODEL=models/tiny-blip $(DEMO_DATA) PER_IMAGE=2 SD_PER_CLASS=40 SD_STEPS=10 SD_RESOLUTION= SD_SAVE_SIZE= \
  RESOLUTION= UPDATES=60 INV_LR=0.3 INVERT_BY=all DI_STEPS=25 GEN_BATCH=40 \
  RECIPE=quick SEEDS="0 1" TRAIN_STEPS=8 WARMUP_STEPS=1 EVALS=2 BATCH=16 GRADCAM_N=16 VANISH_N=100 YUD= \
  SCENES=$(abspath $(YUD)) GEO_SIZE=64 GEO_PER_CLASS=12 GEO_UPDATES=20 GEO_SD_PER_CLASS=12 \
  SIZES="5 10" SWEEP_EVALS=1 SWEEP_FROM=data/real.h5 SWEEP_EMB=models/inv/all.safetensors

demo: $(SK)  ## the whole graph offline in minutes on a CPU, in demo/, on the shipped miniature generator (DEMO_MODEL)
	$(call in_folder,demo,$(DEMO_DIR),reproduce sweep,$(DEMO_VARS))

# ---- the study in miniature: the study's graph at a size whose table can order its rows, on the shipped miniature
# generator, on a CPU (about 2½ hours on 2 cores; bench/README.md gives each stage's time) or a GPU (minutes), in its
# own folder MINI_DIR as the demo is. Its protocol is fixed: MODEL=mini for DI, prompts and the judge, DI at MINI_UPDATES,
# the `sd` row text-to-image samples of the class template in the same number as the DI samples (PER_CLASS x
# PER_IMAGE per class), every row under one recipe and step budget (MINI_RECIPE, MINI_STEPS), no scene study. Its
# sizes are defaults that yours replace: PER_CLASS=50 real images per class (the scale at which the study's figures say
# DI matters most), PER_IMAGE=5, TEST_PER_CLASS=200 (2,000 real test images), SEEDS="0 1 2", and for `make mini-sweep`
# SIZES="10 50 100" at SWEEP_SEEDS="0 1". The sweep is a second target in the same folder (its own inversion of the
# largest size, its 18 classifiers: time of its own in bench/README.md), so that the mini-study keeps its budget.
MINI_PER_CLASS = $(call or_given,PER_CLASS,50)
MINI_PER_IMAGE = $(call or_given,PER_IMAGE,5)
MINI_VARS = MODEL=mini SD_MODEL=mini JUDGE_MODEL=mini SD_PROMPTS=template SD_INIT= PROMPTS_PER_CLASS= \
  SD_PER_CLASS=$(shell expr $(MINI_PER_CLASS) \* $(MINI_PER_IMAGE)) SD_RESOLUTION= SD_SAVE_SIZE= RESOLUTION= \
  INVERT_BY=all UPDATES=$(MINI_UPDATES) INV_LR=$(MINI_INV_LR) RECIPE=$(MINI_RECIPE) TRAIN_STEPS=$(MINI_STEPS) YUD= SCENES=
MINI_SIZES = CIFAR=$(abspath $(CIFAR)) PER_CLASS=$(MINI_PER_CLASS) PER_IMAGE=$(MINI_PER_IMAGE) \
  TEST_PER_CLASS=$(call or_given,TEST_PER_CLASS,200) SEEDS="$(call or_given,SEEDS,0 1 2)" \
  SIZES="$(call or_given,SIZES,10 50 100)" SWEEP_SEEDS="$(call or_given,SWEEP_SEEDS,0 1)"
mini-study: $(SK)  ## the study in miniature (1 h 24 min measured on a 2-core CPU, budget 2½ h), in mini-study/, on the miniature generator: the rows over 3 seeds, and whether the study's claims held
	$(call in_folder,mini-study,$(MINI_DIR),reproduce,$(MINI_VARS),$(MINI_SIZES))

mini-sweep: $(SK)  ## the sample-complexity sweep in miniature, in mini-study/: real, inv and real+inv at SIZES="10 50 100", 2 seeds
	$(call in_folder,mini-sweep,$(MINI_DIR),sweep,$(MINI_VARS),$(MINI_SIZES))

# ---- a study in a folder of its own (the demo, the mini-study): this Makefile started there with that study's
# variables, so that a later `make TARGET` here neither redoes nor deletes its work, and it made again redoes nothing.
# $(call in_folder,NAME,DIR,TARGETS,OWN,SIZES): OWN are its own values, which replace yours (each of yours named, not
# ignored in silence); SIZES are its defaults where you gave none (or_given); the rest of yours reach it as they reach
# any make started by make. A dry run (make -n NAME) runs that make (+: the macro hides $(MAKE) from make's eye), and
# before the first run plans it in an empty temporary folder, so that it creates nothing here.
DRY_RUN := $(findstring n,$(firstword -$(MAKEFLAGS)))
given = $(filter command line environment,$(origin $(1)))
or_given = $(if $(call given,$(1)),$($(1)),$(2))
replaced = $(strip $(foreach a,$(1),$(if $(findstring =,$(a)),$(if $(call given,$(firstword $(subst =, ,$(a)))),$(firstword $(subst =, ,$(a)))))))
define in_folder
@$(if $(call replaced,$(4)),echo "$(1): its own values replace yours of $(call replaced,$(4))")
+dir=$(2); if [ -n "$(DRY_RUN)" ] && [ ! -d "$$dir" ]; then dir=$$(mktemp -d); trap 'rm -rf "$$dir"' EXIT; \
  echo "($(2)/ does not exist yet: the plan is made in an empty folder)"; else mkdir -p "$$dir"; fi; \
  $(MAKE) --no-print-directory -C "$$dir" -f $(HERE)/Makefile $(3) VENV=$(abspath $(VENV)) $(5) $(4)
@echo "the $(1)'s report: $(2)/results/README.md"
endef

$(SK):
	$(MAKE) install

models/tiny-sd:
	$(SK) model tiny --out $@

clean-study:  ## delete data/, models/, results/ and the stage settings (keeps .venv, demo/ and mini-study/)
	rm -rf data models results $(STAMPS)
