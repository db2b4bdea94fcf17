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
