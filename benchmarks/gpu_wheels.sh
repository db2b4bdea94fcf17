#!/usr/bin/env bash
# Fetch (or build) the wheels of benchmarks/gpu_wheels.txt into .whl/ (git-ignored), for the GPU machine's
# Python 3.12 on manylinux x86_64. Run here, then carry .whl to the GPU machine (benchmarks/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
PIP="${PIP:-.venv/bin/python -m pip}"
mkdir -p .whl
grep -v '^\s*#' benchmarks/gpu_wheels.txt | sed 's/#.*//' | awk 'NF' | while read -r req; do
  name=${req%%==*}
  if [ "$name" = deepspeed ]; then   # sdist only: build a pure-Python wheel (no torch in the build env: no ops)
    ls .whl/deepspeed-* >/dev/null 2>&1 || $PIP wheel -q --no-deps -w .whl "$req"
    continue
  fi
  $PIP download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      -d .whl "$req"
done
du -sh .whl && ls .whl
