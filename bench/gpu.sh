#!/usr/bin/env bash
# The GPU numbers in bench/README.md, in one go (about 6 minutes on one H200): a CLI smoke run of
# the pipeline on the GPU with the tiny model, then the three benchmarks at full size. Each step has its
# own time limit, so that one slow step cannot take the others' time; logs go to OUTDIR/<step>.log.
# Usage: bench/gpu.sh OUTDIR [STEP...]   (synthkit importable, e.g. `pip install -e .`; CIFAR-10 as for the
# benchmarks). With STEP names, only those steps run (mini-defaults mini-study smoke generation-bf16 generation-fp32
# train-speed fleet di-accuracy mini-4 mini-8 accuracy any-store); mini-defaults (the miniature at model train's own
# defaults) and mini-study run first, the study's report kept in OUTDIR/mini-study. PARALLEL=1 runs the named steps
# side by side (each still under its limit); DEADLINE=SECONDS cuts every limit to end within that many seconds of the
# script's start.
set -uo pipefail
out=${1:-bench/.cache/gpu}
shift || true
only=" $* "
mkdir -p "$out"
export PYTHONUNBUFFERED=1

step() {  # step NAME SECONDS COMMAND...: run it under a limit, log it, go on whatever happens
    local name=$1 limit=$2
    shift 2
    [[ "$only" == "  " || "$only" == *" $name "* ]] || return 0
    if [[ -n "${DEADLINE:-}" ]] && ((DEADLINE - SECONDS < limit)); then limit=$((DEADLINE - SECONDS)); fi
    if [[ "${PARALLEL:-}" == 1 && -z "${IN_STEP:-}" ]]; then
        IN_STEP=1 step "$name" "$limit" "$@" &
        return 0
    fi
    echo "== [$(date +%T)] $name (limit ${limit}s): $*" | tee -a "$out/$name.log"
    local start=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee -a "$out/$name.log"
    echo "== $name: exit ${PIPESTATUS[0]} after $((SECONDS - start)) s" | tee -a "$out/$name.log"
}

smoke() {  # the study's commands on the GPU (device auto), tiny model, a few images per class
    local w
    w=$(mktemp -d)
    set -e
    python3 -m synthkit model tiny --out "$w/tiny"
    python3 -m synthkit data cifar10 --source "$ARCHIVE" --split train --per-class 10 --out "$w/real.h5"
    python3 -m synthkit data cifar10 --source "$ARCHIVE" --split test --per-class 10 --out "$w/test.h5"
    python3 -m synthkit invert --class airplane --data "$w/real.h5" --model "$w/tiny" --resolution 64 --updates 20 --out "$w/inv.safetensors"
    python3 -m synthkit sample --embeddings "$w/inv.safetensors" --per-image 2 --steps 5 --out "$w/inv.h5"
    python3 -m synthkit sample --prompt "a photo of a {class}" --per-class 4 --model "$w/tiny" --steps 5 --resolution 64 --out "$w/sd.h5"
    python3 -m synthkit train --data "$w/real.h5,$w/sd.h5" --recipe quick --steps 20 --batch-size 32 --test "$w/test.h5" --out "$w/clf.safetensors"
    python3 -m synthkit evaluate --model "$w/clf.safetensors" --test "$w/test.h5" --results "$w/results"
    python3 -m synthkit gradcam --model "$w/clf.safetensors" --data "$w/test.h5" --n 8 --out "$w/gradcam"
    python3 -m synthkit info "$w/inv.h5"
}
di_accuracy() {  # issue 19: the official evaluation's recipe on all 50,000 real images, scored on the 10,000 real test images
    local w
    w=$(mktemp -d)
    set -e
    python3 -m synthkit data cifar10 --source "$ARCHIVE" --split train --out "$w/real.h5"
    python3 -m synthkit data cifar10 --source "$ARCHIVE" --split test --out "$w/test.h5"
    local start=$SECONDS
    python3 -m synthkit train --data "$w/real.h5" --recipe di --test "$w/test.h5" --out "$out/di.safetensors"
    echo "train wall $((SECONDS - start)) s"
}
mini() {  # issues 29, 38: the miniature on all 50,000 training images; $1 latent channels (MINI_ARGS the sizes) or defaults
    local w
    w=$(mktemp -d)
    set -e
    python3 -m synthkit data cifar10 --source "$ARCHIVE" --split train --out "$w/real.h5"
    local start=$SECONDS
    if [[ "$1" == defaults ]]; then
        python3 -m synthkit model train --data "$w/real.h5" --out "$out/mini-sd-$1"
    else
        python3 -m synthkit model train --data "$w/real.h5" --out "$out/mini-sd-$1" --latent-channels "$1" $MINI_ARGS
    fi
    echo "model train wall $((SECONDS - start)) s"
}
any_store() {  # train at 96 px (ImageNet stem) on CUDA with the set over a small memory limit, so it streams
    local w
    w=$(mktemp -d)
    set -e
    python3 -m synthkit data cifar10 --source "$ARCHIVE" --split train --per-class 100 --out "$w/real.h5"
    python3 -m synthkit data cifar10 --source "$ARCHIVE" --split test --per-class 100 --out "$w/test.h5"
    python3 -m synthkit train --data "$w/real.h5" --image-size 96 --memory-limit 20MB --recipe quick --steps 30 --batch-size 128 --out "$w/clf96.safetensors"
    python3 -m synthkit evaluate --model "$w/clf96.safetensors" --test "$w/test.h5" --memory-limit 5MB --results "$w/results"
    python3 -m synthkit info "$w/clf96.safetensors"
}
mini_study() {  # issue 39: make mini-study at the study's own 500 real images per class; its results/ kept in OUTDIR
    local w
    w=$(mktemp -d)
    set -e
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # this tree's synthkit, wherever make runs it
    mkdir -p "$w/venv/bin"  # the Makefile runs $(VENV)/bin/synthkit and $(VENV)/bin/python
    printf '#!/bin/sh\nexec python3 -m synthkit "$@"\n' >"$w/venv/bin/synthkit"
    printf '#!/bin/sh\nexec python3 "$@"\n' >"$w/venv/bin/python"
    chmod +x "$w/venv/bin/synthkit" "$w/venv/bin/python"
    local start=$SECONDS
    make --no-print-directory mini-study VENV="$w/venv" MINI_DIR="$w/mini-study" CIFAR="$ARCHIVE" PER_CLASS=500
    echo "mini-study wall $((SECONDS - start)) s"
    rm -rf "$out/mini-study" && cp -r "$w/mini-study/results" "$out/mini-study"
}
ARCHIVE=$(python3 -c 'import sys; sys.path.insert(0, "bench"); from common import ARCHIVE; print(ARCHIVE)')
export ARCHIVE
MINI_ARGS=${MINI_ARGS:---vae-steps 6000 --vae-batch-size 256 --steps 8000 --batch-size 512 --lr 1e-3 --vae-width 48}
export ARCHIVE out MINI_ARGS
export -f smoke any_store di_accuracy mini mini_study

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.log"
# issue 38: first, the miniature at `model train`'s own defaults (instance codes included); ship it if it measures better
step mini-defaults 560 bash -c "mini defaults"
step mini-study 540 bash -c mini_study
step smoke 150 bash -c smoke
step generation-bf16 110 python3 bench/generation_speed.py --model sd15 --resolution 128 --groups 8 --precision bf16 --sample-batch 128 --windows 5 --steps 4
step generation-fp32 110 python3 bench/generation_speed.py --model sd15 --resolution 128 --groups 8 --precision fp32 --sample-batch 128 --windows 5 --steps 4
step train-speed 240 python3 bench/train_speed.py --sizes 32,64,96 --batch-size 512 --windows 5 --steps 20
step fleet 240 python3 bench/fleet_speed.py --classifiers 8 --steps 200 --batch-size 128 --windows "${FLEET_WINDOWS:-3}"
step di-accuracy 560 bash -c di_accuracy
step accuracy 150 python3 bench/accuracy_vs_size.py --sizes 5000 --steps 12000 --out "$out/accuracy.md"
step any-store 120 bash -c any_store
step mini-4 560 bash -c "mini 4"
step mini-8 560 bash -c "mini 8"
wait
