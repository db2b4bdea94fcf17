"""The gpu tier: on a machine without CUDA the gpu tests are left out by their marker with a line that says how many
and why (never a silent skip); on a GPU machine they run (benchmarks/gpu_check.sh)."""
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
    import re

    with open(f"{REPO}/benchmarks/gpu_check.sh") as f:
        limits = [int(m) for m in re.findall(r"^step \w+ (\d+) ", f.read(), flags=re.M)]
    assert len(limits) == 5 and sum(limits) <= 8 * 60 - 30, limits
