"""Faults a campaign that runs for days survives: a training job killed with SIGKILL, two campaigns that share units
started at once, the MLflow server restarted during a run, many jobs logging to one server, several jobs opening a
fresh SQLite store at once."""
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers import REPO, loss_history, mlflow_client, run_cli, runs_of, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.integration]
# argv: root, tracking uri, seconds each step is held back (the tiny run takes ~15 ms a step: without a brake it ends
# before a test can act between two checkpoints; the brake sits in the per-step preemption check, outside the numerics)
TRAIN = ("import sys, time\nfrom tests.helpers import tiny_train_cfg\nfrom proxy_exp.train.job import train\n"
         "import proxy_exp.train.loop as L\nagreed, pause = L.PreemptionFlag.agreed, float(sys.argv[3])\n"
         "L.PreemptionFlag.agreed = lambda self, *a, **k: (time.sleep(pause), agreed(self, *a, **k))[1]\n"
         "cfg = tiny_train_cfg(sys.argv[1], steps=200, checkpoint_every=20, uri=sys.argv[2])\n"
         "cfg.tracking.outage_s = 180\nr = train(cfg, progress=False)\nprint('final', repr(r.final_loss), r.run_id)\n")


def _train_process(root, uri="", pause=0.0):
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE")}
    return subprocess.Popen([sys.executable, "-c", TRAIN, str(root), uri, str(pause)], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**env, "OMP_NUM_THREADS": "1"},
                            start_new_session=True)


def _complete(root, step):
    import glob

    return bool(glob.glob(f"{root}/units/*/checkpoints/step-{step}/COMPLETE"))


def _final(proc, timeout=600, said=""):
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-2000:] + err[-3000:]
    assert said in err, err[-3000:]
    line = next(line for line in out.splitlines() if line.startswith("final"))
    return float(line.split()[1]), line.split()[2]


def test_training_killed_at_a_random_step_resumes_to_the_same_loss(tmp_path):
    reference, _ = _final(_train_process(tmp_path / "reference"))
    rng = random.Random(int(os.environ.get("PROXY_EXP_FAULT_SEED", time.time())))
    after = rng.choice([20, 40, 60, 80, 100])  # the checkpoint after which the kill comes, then a random delay
    delay = rng.uniform(0.0, 0.5)
    proc = _train_process(tmp_path / "killed", pause=0.05)  # 1 s between checkpoints
    wait_for(lambda: _complete(tmp_path / "killed", after) or proc.poll() is not None, 300, f"checkpoint step-{after}",
             poll_s=0.05)
    time.sleep(delay)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"the job ended by itself before the kill (after {after}, {delay:.2f} s)"
    resumed, run_id = _final(_train_process(tmp_path / "killed"))
    assert resumed == reference  # bit-exact on CPU: the resumed run saw exactly the data of an uninterrupted one
    steps = [s for s, _ in loss_history(tmp_path / "killed", run_id)]
    assert steps == list(range(1, 201)), f"killed after step-{after} + {delay:.2f} s: steps lost or duplicated"


def test_two_campaigns_sharing_units_started_at_once_run_each_unit_once(tmp_path):
    common = ["campaign=tiny", "executor=inline", "tokenizer.vocab_size=512", "tokenizer.sample_bytes_per_corpus=60000",
              "traces.per_task=2", "traces.tasks=[gsm8k,mbpp]", "evaluate.tasks=[piqa]", "evaluate.limit=4",
              "pretrain.max_tokens=4096", "analysis.n_boot=20", f"paths.root={tmp_path}", "tracking.experiment=twin"]
    common += [f"campaign.corpora.{c}.max_bytes=120000" for c in ("python_code", "shakespeare", "wikipedia")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    exe = os.path.join(os.path.dirname(sys.executable), "proxy-campaign")
    procs = [subprocess.Popen([exe, *common, f"campaign.name={name}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env) for name in ("alpha", "beta")]
    outs = [p.communicate(timeout=1200) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, out[-2000:] + err[-3000:]
    runs = [r for r in runs_of(tmp_path, "twin") if r.data.tags.get("proxy_exp.kind") in ("train", "score", "evaluate")]
    ids = [r.data.tags["proxy_exp.unit_id"] for r in runs]
    assert len(ids) == len(set(ids)), "a shared unit ran twice"
    assert all(r.info.status == "FINISHED" for r in runs)
    import glob

    import pandas as pd

    tables = [pd.read_csv(glob.glob(f"{tmp_path}/campaigns/{name}-*/analysis/ranking.csv")[0]) for name in ("alpha",
                                                                                                            "beta")]
    pd.testing.assert_frame_equal(tables[0], tables[1])  # both campaigns finish with the same results


@pytest.fixture
def server(tmp_path, monkeypatch):
    from proxy_exp.distributed import free_port

    for name in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
    root, port = tmp_path / "server", free_port()
    start = ["start", "--root", str(root), "--port", str(port)]
    run_cli("proxy-mlflow-server", *start)
    yield f"http://127.0.0.1:{port}", root, start
    run_cli("proxy-mlflow-server", "stop", "--root", str(root), ok=False)


def test_mlflow_server_restarted_during_a_run_loses_and_duplicates_no_metric(tmp_path, server):
    uri, root, start = server
    proc = _train_process(tmp_path / "job", uri, pause=0.1)  # 16 s of steps left after step 40
    wait_for(lambda: _complete(tmp_path / "job", 40) or proc.poll() is not None, 300, "checkpoint step-40", poll_s=0.1)
    run_cli("proxy-mlflow-server", "stop", "--root", str(root))
    time.sleep(8)  # the job meets the outage: it buffers, and waits at its next checkpoint
    run_cli("proxy-mlflow-server", *start)
    _, run_id = _final(proc, said="does not answer")  # it said so, and went on once the server was back
    from mlflow.tracking import MlflowClient

    history = sorted(m.step for m in MlflowClient(uri).get_metric_history(run_id, "train/loss"))
    assert history == list(range(1, 201))  # none lost, none duplicated


LOGGER = ("import sys; from proxy_exp.config import TrackingConfig; from proxy_exp.tracking import Run\n"
          "cfg = TrackingConfig(uri=sys.argv[1], experiment='many')\n"
          "with Run(cfg, sys.argv[2], name='job' + sys.argv[3], tags={'proxy_exp.kind': 'train'}) as run:\n"
          "    for step in range(int(sys.argv[4])):\n"
          "        run.log_metric('train/loss', 1.0 / (step + 1), step=step)\n"
          "        run.log_metric('train/lr', 0.1, step=step)\n")


def _loggers(n, uri, root, points):
    procs = [subprocess.Popen([sys.executable, "-c", LOGGER, uri, str(root), str(i), str(points)], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(n)]
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]


def test_sixteen_jobs_on_one_server_and_four_on_a_fresh_sqlite_store_lose_no_metric(tmp_path, server):
    uri, _, _ = server
    _loggers(16, uri, tmp_path / "a", 300)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("many").experiment_id], max_results=100)
    assert len(runs) == 16 and all(r.info.status == "FINISHED" for r in runs)
    for r in runs:
        assert sorted(m.step for m in client.get_metric_history(r.info.run_id, "train/loss")) == list(range(300))
    fresh = tmp_path / "fresh"  # no store yet: the four race to create it
    _loggers(4, "", fresh, 200)
    runs = runs_of(fresh, "many")
    assert len(runs) == 4
    for r in runs:
        assert len(mlflow_client(fresh).get_metric_history(r.info.run_id, "train/lr")) == 200
    assert json.dumps(sorted(r.data.tags["mlflow.runName"] for r in runs)) == json.dumps(
        [f"job{i}" for i in range(4)])
