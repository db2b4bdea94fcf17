#!/usr/bin/env bash
# The GPU check (issue 11), one prepared script: on a bare GPU machine with a copy of the repo and .whl/ (the wheels
# of benchmarks/gpu_wheels.txt: `bash benchmarks/gpu_wheels.sh` here, then carry .whl), it runs the gpu tests
# (the fused kernel against the torch path on CUDA tensors, bf16 scoring of a Qwen2-0.5B-shape model, sharded vs
# one-device scoring, a 32k-token trace at 152k vocabulary, a 1-rank NCCL train with checkpoint and resume, 4 small
# units sharing one GPU), then bench_scorer.py (Qwen2-0.5B shape, 8 x 1,024, bf16; and the 32k trace beside a 7B
# model), bench_train.py (124M: DeepSpeed compiled vs HF eager and compiled) and bench_small_models.py, each under a
# time limit (together under 8 minutes), and prints one summary (benchmarks/gpu_summary.py) with the targets.
#   device run: bash benchmarks/gpu_check.sh        (carry .whl; results in $OUT, default /tmp/gpu-check)
# $OUT gets 8 files (device.txt, steps.txt, one log per step, summary.md): the device tool brings back at most 8.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/gpu-check}"
mkdir -p "$OUT"
: > "$OUT/steps.txt"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "gpu_check: installing .whl/ failed" >&2; exit 1; }
  export PYTHONPATH="/tmp/site:$PWD"
else
  echo "gpu_check: no .whl/ (run bash benchmarks/gpu_wheels.sh and carry .whl): DeepSpeed steps will fail" >&2
  export PYTHONPATH="$PWD"
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1 MPLBACKEND=Agg
export OMP_NUM_THREADS=8
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT/device.txt" 2>&1
python3 -c "import torch, transformers, triton; print('torch', torch.__version__, '| transformers', \
transformers.__version__, '| triton', triton.__version__, '| GPUs', torch.cuda.device_count())" >> "$OUT/device.txt" 2>&1

step() {  # step NAME LIMIT_S COMMAND...: the command's output in $OUT/NAME.log, "NAME rc seconds" in steps.txt
  local name=$1 limit=$2 start rc
  shift 2
  start=$(date +%s)
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  echo "$name $rc $(( $(date +%s) - start ))" >> "$OUT/steps.txt"
  echo "[gpu_check] $name: exit $rc after $(( $(date +%s) - start )) s"
}

step gpu_tests 205 python3 -m pytest -v -s --durations=0 -p no:cacheprovider -m gpu \
  tests/proxy_exp/score/test_gpu.py tests/proxy_exp/train/test_gpu.py tests/proxy_exp/evaluate/test_gpu.py
step bench_scorer 60 python3 benchmarks/bench_scorer.py --device cuda
step bench_scorer_32k 45 python3 benchmarks/bench_scorer.py --device cuda --models qwen2-7b --batch 1 \
  --seq-len 32768 --repeats 2
step bench_train 80 python3 benchmarks/bench_train.py --device cuda --models llama-124m --compile
step bench_small_models 60 python3 benchmarks/bench_small_models.py --device cuda --n 4 --tokens 4000000
python3 benchmarks/gpu_summary.py "$OUT" | tee "$OUT/summary.md"
