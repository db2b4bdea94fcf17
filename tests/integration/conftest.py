"""Session fixture `slurm_cluster` of the integration tests: the local 2-node Slurm test cluster of slurm/cluster.sh,
freshly started. The first test that asks for it runs
``bash slurm/cluster.sh start --fresh`` (job ids restart at 1, no stale jobs or state); the cluster is stopped at
the end of the session. When Slurm is missing or does not start, the test FAILS with the way to fix it.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import warnings
from dataclasses import dataclass
from typing import Iterator

import pytest

from tests.helpers import REPO

CLUSTER_SH = os.path.join(REPO, "slurm", "cluster.sh")
SLURM_CONF_TEMPLATE = os.path.join(REPO, "slurm", "local", "slurm.conf")
FIX = ("Fix: `bash install.sh test` (installs Slurm too), or "
       "`bash slurm/cluster.sh install && bash slurm/cluster.sh start` (as root); see slurm/README.md.")
START_TIMEOUT_S = 120


@dataclass(frozen=True)
class SlurmCluster:
    """What tests need to submit to the local cluster."""

    partition: str  # the default partition of slurm/local/slurm.conf ("debug")
    nodes: tuple[str, ...]  # node names, e.g. ("n1", "n2")
    cpus_per_node: int


def read_cluster_layout(conf_path: str = SLURM_CONF_TEMPLATE) -> SlurmCluster:
    """Partition, node names and CPUs per node from the slurm.conf template the cluster is started from."""
    try:
        with open(conf_path) as f:
            text = f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"{conf_path} is missing: it is the template slurm/cluster.sh installs; restore it "
                                "from git") from None
    nodes = tuple(re.findall(r"^NodeName=(\S+)", text, flags=re.M))
    cpus = re.findall(r"^NodeName=\S+.*\bCPUs=(\d+)", text, flags=re.M)
    partition = re.search(r"^PartitionName=(\S+).*\bDefault=YES", text, flags=re.M)
    if not nodes or not cpus or partition is None:
        raise ValueError(f"{conf_path}: expected NodeName=... CPUs=... lines and a PartitionName=... Default=YES line")
    return SlurmCluster(partition=partition.group(1), nodes=nodes, cpus_per_node=int(cpus[0]))


def run_cluster_sh(*args: str, timeout: float = START_TIMEOUT_S) -> subprocess.CompletedProcess:
    """``bash slurm/cluster.sh <args>`` with stdout and stderr merged into ``.stdout``."""
    return subprocess.run(["bash", CLUSTER_SH, *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=timeout)


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """Start the local test cluster fresh once per session; stop it at the end of the session."""
    if os.geteuid() != 0:
        pytest.fail(f"the local Slurm test cluster needs root (it starts munged, mariadbd and the Slurm daemons). {FIX}",
                    pytrace=False)
    missing = [cmd for cmd in ("slurmctld", "slurmd", "slurmdbd", "munged", "mariadbd", "sinfo", "srun", "sacct")
               if shutil.which(cmd) is None and not os.path.exists(f"/usr/sbin/{cmd}")]
    if missing:
        pytest.fail(f"Slurm is not installed (missing: {', '.join(missing)}). {FIX}", pytrace=False)
    layout = read_cluster_layout()
    try:
        started = run_cluster_sh("start", "--fresh")
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"`bash slurm/cluster.sh start --fresh` did not finish in {START_TIMEOUT_S} s:\n{e.stdout or ''}\n"
                    f"{FIX}", pytrace=False)
    if started.returncode != 0:
        run_cluster_sh("stop")  # no half-started daemons outlive the session; the logs are in the message
        pytest.fail(f"`bash slurm/cluster.sh start --fresh` failed (exit {started.returncode}):\n{started.stdout}\n{FIX}",
                    pytrace=False)
    try:
        yield layout
    finally:
        stopped = run_cluster_sh("stop")
        if stopped.returncode != 0:
            warnings.warn(f"`bash slurm/cluster.sh stop` failed (exit {stopped.returncode}):\n{stopped.stdout}")
