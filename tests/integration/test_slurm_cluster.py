"""The local 2-node Slurm test cluster (slurm/cluster.sh): multi-node srun, accounting, submitit round trip."""
from __future__ import annotations

import os
import subprocess
import time

import pytest
import submitit

from tests.integration.conftest import SlurmCluster

pytestmark = pytest.mark.integration


def run(cmd: list[str], timeout: float = 60) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(cmd)} failed (exit {done.returncode}): {done.stderr}"
    return done.stdout


def test_srun_spans_both_nodes(slurm_cluster: SlurmCluster):
    out = run(["srun", "-p", slurm_cluster.partition, "-N2", "-n2", "bash", "-c",
               'echo "$SLURM_PROCID $SLURMD_NODENAME $SLURM_NNODES"'])
    rows = sorted(line.split() for line in out.strip().splitlines())
    assert [r[0] for r in rows] == ["0", "1"], out
    assert sorted(r[1] for r in rows) == sorted(slurm_cluster.nodes) == ["n1", "n2"], out
    assert {r[2] for r in rows} == {"2"}, out


def test_sacct_reports_finished_job(slurm_cluster: SlurmCluster, tmp_path):
    log = tmp_path / "job-%j.out"
    job_id = run(["sbatch", "--parsable", "--wait", "-p", slurm_cluster.partition, "-J", "trivial", "-o", str(log),
                  "--wrap", "echo hello from $SLURMD_NODENAME"]).strip().split(";")[0]
    assert (tmp_path / f"job-{job_id}.out").read_text().startswith("hello from n"), "the batch script did not run"
    # The accounting record lags the job's end by ~1-2 s, and its first version may carry JobName "allocation".
    deadline, row = time.monotonic() + 30, ""
    while time.monotonic() < deadline:
        row = run(["sacct", "-n", "-P", "-X", "-j", job_id, "-o", "JobName,State,ExitCode"]).strip()
        if row == "trivial|COMPLETED|0:0":
            break
        time.sleep(0.5)
    assert row == "trivial|COMPLETED|0:0", f"sacct -j {job_id} says {row!r} after 30 s"


def test_submitit_result_round_trip(slurm_cluster: SlurmCluster, tmp_path):
    # A fresh folder per run: job ids restart at 1 after `start --fresh`, and submitit would take an old
    # <id>_result.pkl in a reused folder as the answer.
    executor = submitit.AutoExecutor(folder=tmp_path / "%j", cluster="slurm")
    executor.update_parameters(timeout_min=5, slurm_partition=slurm_cluster.partition, cpus_per_task=1)
    # A function importable on the node (stdlib): it reports where it ran.
    job = executor.submit(os.getenv, "SLURMD_NODENAME")
    assert job.result() in slurm_cluster.nodes
    assert os.path.exists(job.paths.result_pickle)
