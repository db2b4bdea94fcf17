import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")

import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402

from tests.slurm_cluster import slurm_cluster  # noqa: E402,F401  (session fixture: the local Slurm cluster)

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
FIXTURES = os.path.join(REPO, "tests", "fixtures")
BIN = os.path.dirname(sys.executable)


def run_cli(name: str, *args: str, ok: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run one of the venv's console scripts as a user would (one torch thread); with ``ok``, fail the test with
    the output's tail unless it exits 0."""
    r = subprocess.run([os.path.join(BIN, name), *args], capture_output=True, text=True, timeout=timeout,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    if ok:
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return r


@pytest.fixture
def compose_cfg():
    """Compose a real entry-point config from conf/ with overrides (Hydra's compose API)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    import launchers.app as app

    def _compose(name: str, overrides: list[str] | None = None):
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=app.CONF_DIR, version_base="1.3"):
            return compose(config_name=name, overrides=overrides or [])

    yield _compose
    GlobalHydra.instance().clear()
