"""The gpu tier: on a machine without CUDA the gpu tests are left out by their marker with a line that says how many
and why (never a silent skip); on a GPU machine they run (benchmarks/gpu_check.sh)."""
import os
import re
import subprocess
import sys

import pytest
import torch

from tests.helpers import REPO

GPU_TEST_FILES = ["tests/proxy_exp/score/test_gpu.py", "tests/proxy_exp/train/test_gpu.py",
                  "tests/proxy_exp/evaluate/test_gpu.py"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is here: the gpu tests run instead of being left out")
def test_gpu_tests_are_left_out_and_counted_without_cuda():
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *GPU_TEST_FILES],
                       capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 5, r.stdout[-2000:] + r.stderr[-2000:]  # 5: every collected test was left out
    n = int(r.stdout.split(" gpu test(s) left out: no CUDA device")[0].split()[-1])
    assert n >= 6 and f"{n} deselected" in r.stdout
    with open(f"{REPO}/benchmarks/gpu_check.sh") as f:  # the prepared check runs every one of these files
        script = f.read()
    assert all(path in script for path in GPU_TEST_FILES)


def test_the_gpu_check_fits_its_eight_minutes():
    """Every step of benchmarks/gpu_check.sh runs under its own time limit; together they leave half a minute of the
    8 minutes for installing the carried wheels and starting up."""
    with open(f"{REPO}/benchmarks/gpu_check.sh") as f:
        limits = [int(m) for m in re.findall(r"^step \w+ (\d+) ", f.read(), flags=re.M)]
    assert len(limits) == 5 and sum(limits) <= 8 * 60 - 30, limits
    assert len(limits) + 3 <= 8  # a log per step, device.txt, steps.txt, summary.md: the device tool returns 8 files


def test_the_gpu_summary_reads_real_benchmark_output(tmp_path):
    """benchmarks/gpu_summary.py over what gpu_check.sh leaves in $OUT, made here by the same commands on CPU (tiny
    sizes): the step table with each step's outcome (a timed-out step says so), the targets read from the tables,
    and every benchmark table carried over."""
    def step(name: str, *cmd: str) -> None:
        r = subprocess.run([sys.executable, *cmd], capture_output=True, text=True, cwd=REPO, timeout=300,
                           env={**os.environ, "PYTHONPATH": REPO})
        (tmp_path / f"{name}.log").write_text(r.stdout + r.stderr)
        with open(tmp_path / "steps.txt", "a") as f:
            f.write(f"{name} {r.returncode} 1\n")

    printing = tmp_path / "test_prints.py"  # as the 32k-trace gpu test prints its peak memory (-s: on pytest's line)
    printing.write_text("def test_prints():\n    print('32k-token trace, vocab 152k: peak 9.50 GiB, weights 3.77 GiB, "
                        "kernel triton')\n")
    step("gpu_tests", "-m", "pytest", "-v", "-s", "--durations=0", "-p", "no:cacheprovider", "--rootdir", str(tmp_path),
         str(printing), "tests/proxy_exp/test_devices.py", "-k", "sharing_a_gpu or prints")
    step("bench_scorer", "benchmarks/bench_scorer.py", "--device", "cpu", "--models", "tiny-llama", "--batch", "1",
         "--seq-len", "64", "--repeats", "1")
    step("bench_train", "benchmarks/bench_train.py", "--device", "cpu", "--models", "xs", "--steps", "2", "--warmup",
         "1", "--rounds", "1")
    with open(tmp_path / "steps.txt", "a") as f:
        f.write("bench_small_models 124 50\n")  # killed by its time limit before printing anything
    (tmp_path / "bench_small_models.log").write_text("")
    r = subprocess.run([sys.executable, "benchmarks/gpu_summary.py", str(tmp_path)], capture_output=True, text=True,
                       cwd=REPO, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    out = r.stdout
    assert "| gpu_tests | 0 | 1 | " in out and "2 passed" in out.split("| gpu_tests |")[1].splitlines()[0]
    assert "\n- 32k-token trace, vocab 152k: peak 9.50 GiB, weights 3.77 GiB, kernel triton\n" in out
    assert "| bench_small_models | 124 | 50 | timed out |" in out
    assert re.search(r"- pretraining xs \(llama\) proxy-exp DeepSpeed: MFU [\d.]+% \(target >= 45%\)", out), out
    scorer = out.split("## bench_scorer\n")[1].split("## ")[0]
    assert scorer.count("| chunked torch") == 2 and "tiny-llama" in scorer and scorer.count("\n| ") >= 6
