"""Suite-wide set-up: the offline environment, the test tiers, and the config-composition fixture.

Tiers (markers, pyproject.toml): ``slow`` (end to end, minutes), ``integration`` (tests/integration/: the real
local Slurm cluster and whole campaigns), ``golden`` (what must never drift, against tests/golden/; regenerate
with ``PROXY_EXP_UPDATE_GOLDEN=1``, see tests/golden/README.md). All of them run in the default suite.
"""
import os

from proxy_exp.environment import offline_env

offline_env()
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402

from tests.helpers import compose  # noqa: E402


@pytest.fixture
def compose_cfg():
    """Compose a real entry-point config from conf/ with overrides (Hydra's compose API)."""
    return compose


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` need CUDA: on a machine without it they are left out (deselected, and counted in a line
    of the summary, never skipped silently); benchmarks/gpu_check.sh runs them on a GPU machine."""
    gpu = [item for item in items if item.get_closest_marker("gpu") is not None]
    if not gpu or _cuda():
        return
    items[:] = [item for item in items if item.get_closest_marker("gpu") is None]
    config.hook.pytest_deselected(items=gpu)
    config.stash[_GPU_LEFT_OUT] = len(gpu)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    n = config.stash.get(_GPU_LEFT_OUT, 0)
    if n:
        terminalreporter.write_line(f"{n} gpu test(s) left out: no CUDA device on this machine; they run on a GPU "
                                    "machine through benchmarks/gpu_check.sh")


_GPU_LEFT_OUT = pytest.StashKey[int]()
