#!/bin/bash
# Run a command and append its wall time, in seconds, and the command to $TIMED_LOG (default bench/logs/timed.tsv):
# how bench/README.md's seconds per stage are measured, imports included. Usage, as the Makefile's synthkit:
#   make mini-study SK="$PWD/bench/timed.sh $PWD/.venv/bin/synthkit" TIMED_LOG=$PWD/bench/logs/<date>-cpu/mini-study.tsv
log=${TIMED_LOG:-$(dirname "$0")/logs/timed.tsv}
start=$(date +%s.%N)
"$@"
code=$?
awk -v a="$start" -v b="$(date +%s.%N)" -v c="$*" 'BEGIN { printf "%.1f\t%s\n", b - a, c }' >> "$log"
exit $code
