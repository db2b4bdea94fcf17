"""Small-model mode (executor.units_per_job): several single-process training units share one job, each in its
own process, concurrently; through submitit's local executor and through the real Slurm cluster."""
import subprocess

import pytest
from mlflow.tracking import MlflowClient

from proxy_exp.units import Unit
from launchers.submit import groupable, run_units, submit_slurm
from proxy_exp import tracking, units
from proxy_exp.config import ExecutorConfig, TrackingConfig
from tests.helpers import tiny_train_cfg, wait_for as _wait

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def _train_cfg(root, micro_batch=16, **pretrain):
    return tiny_train_cfg(root, experiment="slurm", micro_batch=micro_batch, sample_bytes=100_000,
                          corpus_bytes=300_000, **pretrain)


def _units(root, seeds, steps=8, **pretrain):
    out = []
    for seed in seeds:
        cfg = _train_cfg(root, max_tokens=64 * 16 * steps, checkpoint_every=0, **pretrain)
        cfg.seed = seed
        cfg.unit_id = units.train_unit_id(cfg.model, cfg.tokenizer, cfg.tokenizer_corpora, cfg.corpus, cfg.pretrain,
                                          seed)
        out.append(Unit(cfg.unit_id, "train", "proxy", "shakespeare", "xs", seed, cfg))
    return out


def _intervals(root, run_ids):
    c = MlflowClient(tracking.tracking_uri(TrackingConfig(experiment="slurm"), str(root)))
    return [(c.get_run(r).info.start_time, c.get_run(r).info.end_time) for r in run_ids]


def test_units_share_a_local_job_run_concurrently_and_fail_alone(tmp_path, monkeypatch):
    plan = _units(tmp_path, [0, 1, 2], steps=300)  # several seconds each: longer than the processes' staggered start
    assert all(groupable(u) for u in plan) and not groupable(_units(tmp_path, [0], tasks_per_node=2)[0])
    # warm the shared caches (tokenizer, packed corpus) once, so the three units race on nothing but the device
    from proxy_exp.train.job import train

    train(_units(tmp_path / "warm", [9], steps=1)[0].config, progress=False)
    monkeypatch.setenv("PROXY_EXP_FAIL_UNITS", plan[2].id)
    events = []
    out = run_units(plan, set(), ExecutorConfig(kind="local", max_parallel=1, units_per_job=3),
                    str(tmp_path / "submitit"), on_event=lambda what, u, msg: events.append((what, u.id, msg)))
    assert sorted(out.done) == sorted(u.id for u in plan[:2]) and list(out.failed) == [plan[2].id]
    assert "failure injected" in out.failed[plan[2].id]
    started = [msg for what, _, msg in events if what == "started"]
    assert len(started) == 3 and len(set(started)) == 1 and started[0].endswith("(3 units)")  # one job
    for u in plan[:2]:
        assert units.read_done(str(tmp_path), u.id) is not None
    (a0, a1), (b0, b1) = _intervals(tmp_path, [out.done[u.id].run_id for u in plan[:2]])
    assert a0 < b1 and b0 < a1  # the two trainings overlapped in time


def test_units_share_a_slurm_array_element(slurm_cluster, tmp_path):
    plan = _units(tmp_path, [0, 1, 2])
    # one lane (max_parallel=1): the two jobs stay one array
    ex = ExecutorConfig(kind="slurm", partition="debug", timeout_min=30, units_per_job=2, max_parallel=1)
    records = submit_slurm(plan, {u.id for u in plan}, {}, ex, str(tmp_path / "submitit"))
    jobs = [records[u.id]["job_id"] for u in plan]
    assert jobs[0] == jobs[1] != jobs[2]  # 2 + 1 units in two elements of one array
    assert jobs[0].split("_")[0] == jobs[2].split("_")[0]
    _wait(lambda: all(units.read_done(str(tmp_path), u.id) for u in plan), 600, "the grouped units")
    done = [units.read_done(str(tmp_path), u.id) for u in plan]
    assert len({d["run_id"] for d in done}) == 3 and all(d["steps"] == 8 for d in done)
    array = jobs[0].split("_")[0]

    def states():
        out = subprocess.run(["sacct", "-j", array, "-X", "-n", "-P", "-o", "JobID,State"], capture_output=True,
                             text=True, check=True).stdout.split()
        return out if len(out) == 2 and not any(e.endswith(("|RUNNING", "|PENDING")) for e in out) else None

    _wait(states, 120, "the array's elements to end")  # a unit's marker is written before its job exits
    elements = states()
    assert all(e.endswith("|COMPLETED") for e in elements), elements
