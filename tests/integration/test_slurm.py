"""proxy-exp on a real Slurm cluster (the local 2-node test cluster of slurm/cluster.sh, started by the
`slurm_cluster` fixture): a Hydra multirun through submitit_slurm, a non-blocking campaign with a failed and a
cancelled unit, multi-node DeepSpeed against an MLflow server on 127.0.0.1, preemption and requeue."""
import glob
import json
import os
import subprocess
import time

import pytest
from mlflow.tracking import MlflowClient

from tests.helpers import SLURM_CAMPAIGN, run_cli, tiny_train_cfg, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.integration]
ENV = {"GLOO_SOCKET_IFNAME": "lo"}


def _cli(name, *args, ok=True, env=None, timeout=900):
    return run_cli(name, *args, ok=ok, env={**ENV, **(env or {})}, timeout=timeout)


def _train_cfg(root, uri="", micro_batch=16, **pretrain):
    return tiny_train_cfg(root, experiment="slurm", uri=uri, steps=30, micro_batch=micro_batch, sample_bytes=100_000,
                          corpus_bytes=300_000, **pretrain)


def _executor(folder, **params):
    import submitit

    ex = submitit.AutoExecutor(folder=str(folder), cluster="slurm")
    ex.update_parameters(timeout_min=30, slurm_partition="debug", cpus_per_task=1, **params)
    return ex


def test_hydra_multirun_through_submitit_slurm(slurm_cluster, tmp_path):
    _cli("proxy-train", "-m", "hydra/launcher=submitit_slurm", "hydra.launcher.partition=debug",
         "hydra.launcher.timeout_min=20", f"paths.root={tmp_path}", "tracking.experiment=sweep", "seed=0,1",
         "tokenizer.vocab_size=512", "tokenizer.sample_bytes_per_corpus=100000", "corpus.max_bytes=200000",
         "pretrain.max_tokens=10240")
    c = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = c.search_runs([c.get_experiment_by_name("sweep").experiment_id])
    assert sorted(r.data.params["seed"] for r in runs) == ["0", "1"]
    assert all(r.info.status == "FINISHED" and r.data.metrics["train/final_loss"] > 0 for r in runs)
    assert glob.glob(f"{tmp_path}/hydra/multirun/*/*/.submitit/*/*_result.pkl")  # results came back via Slurm


CAMPAIGN = SLURM_CAMPAIGN + ["tracking.experiment=slurm-c"]
CAMPAIGN += [f"campaign.corpora.{c}.max_bytes=200000" for c in ("python_code", "shakespeare", "wikipedia")]


def test_campaign_with_a_failed_a_killed_and_a_vanished_unit(slurm_cluster, tmp_path, compose_cfg):
    """A campaign submits and returns at once. One unit fails (an exception), one is killed (SIGKILL while it runs),
    one's Slurm job disappears (Slurm has no record of it): the others finish, status names all three with the
    reason, and a rerun submits only those three."""
    import launchers.app as app
    from launchers.plan import plan_campaign
    from proxy_exp.config import CampaignJobConfig

    overrides = CAMPAIGN + [f"paths.root={tmp_path}"]
    plan = plan_campaign(app.to_job(compose_cfg("campaign", overrides), CampaignJobConfig))
    leaves = [u for u in plan if u.kind in ("score", "evaluate")]
    fail, kill, vanish = leaves[0], next(u for u in leaves if u.kind == "evaluate"), leaves[-1]
    assert len({fail.id, kill.id, vanish.id}) == 3

    t0 = time.time()
    r = _cli("proxy-campaign", *overrides, env={**ENV, "PROXY_EXP_FAIL_UNITS": fail.id})
    assert time.time() - t0 < 120  # submits and returns; it does not wait for the units
    assert f"submitted {len(plan)} unit(s)" in r.stdout
    jobs_file = glob.glob(f"{tmp_path}/campaigns/*/slurm_jobs.json")[0]
    jobs = json.load(open(jobs_file))
    # the vanished one: its job cancelled before it starts and its record pointing at a job Slurm never ran
    subprocess.run(["scancel", jobs[vanish.id]["job_id"]], check=True)
    jobs[vanish.id] |= {"job_id": "99999", "submitted": time.time() - 3600}
    with open(jobs_file, "w") as f:
        json.dump(jobs, f)

    def running(job_id):
        out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True)
        return out.stdout.strip() == "RUNNING"

    wait_for(lambda: running(jobs[kill.id]["job_id"]), 600, "the unit to kill to start")

    def python_pids():  # the unit's own Python process on its node (as the OOM killer would find it)
        import psutil

        job = jobs[kill.id]["job_id"].encode()
        found = []
        for proc in psutil.process_iter(["pid", "cmdline"]):
            try:
                if "submitit.core._submit" in " ".join(proc.info["cmdline"] or []) and (
                        f"SLURM_JOB_ID={job.decode()}" in proc.environ().get("SLURM_JOB_ID", "") or
                        proc.environ().get("SLURM_JOB_ID") == job.decode()):
                    found.append(proc.info["pid"])
            except psutil.Error:
                continue
        return found

    wait_for(lambda: bool(python_pids()), 120, "the unit's Python process")
    for pid in python_pids():
        os.kill(pid, 9)

    def settled():
        out = _cli("proxy-campaign", *overrides, "action=status").stdout
        return "pending" not in out and "running" not in out

    wait_for(settled, 900, "the campaign's units to finish")
    status = _cli("proxy-campaign", *overrides, "action=status").stdout
    by_unit = {u.id: next(line for line in status.splitlines() if u.id in line) for u in (fail, kill, vanish)}
    assert by_unit[fail.id].startswith("failed") and "reason: RuntimeError: failure injected" in by_unit[fail.id], status
    acct = subprocess.run(["sacct", "-j", jobs[kill.id]["job_id"], "-n", "-P", "-o", "JobID,State,ExitCode,DerivedExitCode"],
                          capture_output=True, text=True).stdout
    assert by_unit[kill.id].startswith("failed") and "reason: killed by signal 9" in by_unit[kill.id], status + acct
    assert by_unit[vanish.id].startswith("vanished") and "unknown to Slurm" in by_unit[vanish.id], status
    assert f"{len(plan) - 3} done" in status, status
    log = by_unit[fail.id].split("log ")[1].strip()
    assert "failure injected" in open(log).read()

    r = _cli("proxy-campaign", *overrides)  # rerun: only the three
    assert "submitted 3 unit(s)" in r.stdout, r.stdout
    wait_for(settled, 600, "the resubmitted units")
    r = _cli("proxy-campaign", *overrides, "action=collect")
    assert f"{len(plan)} done" in r.stdout and "decision accuracy" in r.stdout.lower()


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    from proxy_exp.distributed import free_port

    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    _cli("proxy-mlflow-server", "start", "--root", str(root), "--port", str(port), "--allowed-hosts", "n1,n2")
    yield f"http://127.0.0.1:{port}"
    _cli("proxy-mlflow-server", "stop", "--root", str(root), ok=False)


@pytest.mark.parametrize("tasks_per_node", [1, 2])
def test_multinode_deepspeed_matches_single_process(slurm_cluster, tmp_path, mlflow_server, tasks_per_node):
    from launchers.submit import run_unit
    from proxy_exp.train.job import train

    world = 2 * tasks_per_node
    single = train(_train_cfg(tmp_path / "single", micro_batch=16), progress=False)
    cfg = _train_cfg(tmp_path / "multi", uri=mlflow_server, micro_batch=16 // world, nodes=2,
                     tasks_per_node=tasks_per_node)
    job = _executor(tmp_path / "submitit", nodes=2, tasks_per_node=tasks_per_node).submit(run_unit, "train", cfg)
    results = job.results()
    assert len(results) == world
    rank0 = results[0]
    assert rank0.final_loss == pytest.approx(single.final_loss, abs=2e-4)
    assert rank0.tokens == single.tokens
    c = MlflowClient(mlflow_server)
    runs = c.search_runs([c.get_experiment_by_name("slurm").experiment_id],
                         filter_string=f"tags.`proxy_exp.unit_id` = '{rank0.unit_id}'")
    assert len(runs) == 1  # only rank 0 logs
    assert runs[0].data.params["world_size"] == str(world)
    multi = sorted(c.get_metric_history(runs[0].info.run_id, "train/loss"), key=lambda m: m.step)
    assert [m.step for m in multi] == list(range(1, 31))
    print(f"\ntokens/s: 1 rank {single.tokens / single.seconds:.0f}, 2 nodes x {tasks_per_node} "
          f"{rank0.tokens / rank0.seconds:.0f}")


@pytest.mark.parametrize("interrupt", ["usr2", "requeue"])
def test_preempted_or_requeued_training_resumes(slurm_cluster, tmp_path, interrupt):
    from launchers.submit import run_unit
    from proxy_exp.train.job import train

    steps = 600
    ref = train(_train_cfg(tmp_path / "ref", max_tokens=64 * 16 * steps), progress=False)
    root = tmp_path / "job"
    cfg = _train_cfg(root, max_tokens=64 * 16 * steps)
    job = _executor(tmp_path / "submitit").submit(run_unit, "train", cfg)
    ckpts = str(root / "units" / ref.unit_id / "checkpoints" / "step-*" / "COMPLETE")
    wait_for(lambda: glob.glob(ckpts), 300, "the first checkpoint", poll_s=0.1)
    if interrupt == "usr2":
        subprocess.run(["scancel", "--signal=USR2", job.job_id], check=True)
    else:
        subprocess.run(["scontrol", "requeue", job.job_id], check=True)
    result = job.result()
    assert result.steps == steps and result.final_loss == pytest.approx(ref.final_loss, abs=1e-5)
    sacct = subprocess.run(["sacct", "-D", "-n", "-X", "-j", job.job_id, "-o", "State"], capture_output=True,
                           text=True).stdout
    assert "REQUEUED" in sacct, sacct  # it really was requeued and ran again
    c = MlflowClient(f"sqlite:///{root}/mlflow.db")
    run = c.get_run(result.run_id)
    hist = sorted(c.get_metric_history(result.run_id, "train/loss"), key=lambda m: m.step)
    assert [m.step for m in hist] == list(range(1, steps + 1))  # no lost or duplicated steps
    if interrupt == "usr2":
        assert int(run.data.tags["proxy_exp.preempted_at_step"]) >= 10
