#!/usr/bin/env bash
# One part of the GPU acceptance run on the lent GPU machine (no network, at most 600 s a command):
#
#   acceptance/device_run.sh PART [gpu_check arguments...]
#
# from the repository root, with the working tree and wheels/py312 carried (`make gpu-wheels` fills it here;
# run's carry: ["wheels/py312", "runs/gpu-check"]). It
#   1. prints the versions the machine has (before anything is installed),
#   2. installs, offline, only the carried wheels whose import fails there (acceptance/wheels.py: pip --no-index
#      --no-deps --target $SITE, so the image's own packages stay as they are) and checks the image's pyarrow
#      against datasets' floor,
#   3. runs `python -m acceptance.gpu_check --part PART` with weights and runs in $WORKDIR and the report in
#      $OUT/gpu-check (rewritten after every case, so a part cut off at the time limit still returns what it did).
# A part resumes what an earlier one finished: the report of earlier parts is taken from $STATE (runs/gpu-check:
# left there on a warm machine, or carried back after copying the fetched files into it here).
#
# Environment (defaults for the GPU machine): PYTHON=python3, WHEELS=wheels/py312, SITE=/tmp/tallrec-site,
# WORKDIR=/tmp/tallrec-gpu-work, OUT=$OUT or runs/gpu-check-out, STATE=runs/gpu-check. `make gpu-rehearsal` runs
# this same script on the CPU with the rehearsal venv's python, the host's wheel set and --smoke.
set -euo pipefail

part=${1:?usage: acceptance/device_run.sh PART [gpu_check arguments...]}
shift
PYTHON=${PYTHON:-python3}
WHEELS=${WHEELS:-wheels/py312}
SITE=${SITE:-/tmp/tallrec-site}
WORKDIR=${WORKDIR:-/tmp/tallrec-gpu-work}
OUT=${OUT:-runs/gpu-check-out}
STATE=${STATE:-runs/gpu-check}
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false

mkdir -p "$OUT/gpu-check" "$SITE" "$WORKDIR"
SITE=$(cd "$SITE" && pwd)  # PYTHONPATH entries must not depend on the working directory
started=$(date +%s)
stamp() { echo "device_run: part $part: $1 at $(( $(date +%s) - started )) s"; }

# 1. what is here, before anything is installed (the image may not be the one recorded in ../shared/FACTS.md)
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PYTHON" -m acceptance.gpu_check --versions | tee "$OUT/versions-before.txt"
df -h "$WORKDIR" | tail -1

# 2. offline install of what fails to import (a second part on a warm machine finds it all in $SITE)
"$PYTHON" -m acceptance.wheels install --wheels "$WHEELS" --target "$SITE" --python "$PYTHON" \
    --json "$OUT/wheels-part$part.json" 2>&1 | tee "$OUT/wheels-part$part.log"
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
stamp "wheels checked"

# 3. the part, resuming the report of earlier parts
if [ -f "$STATE/gpu_check.json" ] && [ ! -f "$OUT/gpu-check/gpu_check.json" ]; then
    cp "$STATE/gpu_check.json" "$OUT/gpu-check/gpu_check.json"
fi
status=0
"$PYTHON" -m acceptance.gpu_check --part "$part" --workdir "$WORKDIR" --output "$OUT/gpu-check" "$@" \
    2>&1 | tee "$OUT/part$part.log" || status=$?
mkdir -p "$STATE"
cp "$OUT/gpu-check/gpu_check.json" "$OUT/gpu-check/gpu_check.md" "$STATE/" 2>/dev/null || true
stamp "gpu_check exited with $status"
exit "$status"
