"""benchmarks/bench_campaign_scale.py builds the state it says it builds (at its tiny size, SQLite store only, nothing
measured): the sources' files, the recipes (some sources at weight 0), a done unit folder for every planned unit, and
the MLflow runs of the campaign and of other campaigns."""
import glob
import json
import os
import subprocess
import sys

import yaml

from tests.helpers import REPO

BENCH = os.path.join(REPO, "benchmarks", "bench_campaign_scale.py")


def test_the_tiny_state_is_what_was_asked_for(tmp_path):
    r = subprocess.run([sys.executable, BENCH, "--size", "tiny", "--build-only", "--stores", "local", "--workdir",
                        str(tmp_path), "--keep", "--source-gb", "0.001"], capture_output=True, text=True, cwd=REPO,
                       timeout=180)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    state = json.loads(r.stdout.strip().splitlines()[-1])
    base = tmp_path / "tiny"

    files = sorted(glob.glob(str(base / "data" / "s*" / "*.jsonl")))
    assert len(files) == 8 * 3
    for path in files:
        assert os.path.getsize(path) == state["file_size"]
        with open(path, "rb") as f:
            assert json.loads(f.readline())["text"]  # the first line is a real record

    with open(base / "conf" / "campaign" / "bench_scale.yaml") as f:
        campaign = yaml.safe_load(f)
    assert len(campaign["corpora"]) == 2
    weights = [s["weight"] for c in campaign["corpora"].values() for s in c["mix"].values()]
    assert len(weights) == 2 * 8 and 0.0 in weights and all(w >= 0 for w in weights)

    # 2 recipes x (1 proxy size + the target) x 1 seed; score units for proxies only; evaluate units for all
    counts = state["counts"]
    assert (counts["train"], counts.get("score"), counts["evaluate"]) == (4, 2, 4)
    assert counts["tokenize"] >= 8 and counts["units"] == sum(v for k, v in counts.items() if k != "units")
    done = glob.glob(str(base / "local" / "units" / "*" / "DONE.json"))
    assert len(done) == counts["units"]
    assert all(os.path.exists(os.path.join(os.path.dirname(p), "MANIFEST.json")) for p in done)
    models = glob.glob(str(base / "local" / "units" / "train-*" / "model" / "model.safetensors"))
    assert len(models) == 4 and all(os.path.getsize(m) > 10**6 for m in models)

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{base}/local/mlflow.db")
    exp = client.get_experiment_by_name("proxy-exp")
    runs = client.search_runs([exp.experiment_id], max_results=10000)
    runs_state = state["runs"]["local"]
    assert len(runs) == runs_state["total"] >= 15
    mine = [x for x in runs if x.data.tags.get("proxy_exp.campaign") == "bench_scale"]
    assert len(mine) == runs_state["campaign"] == 4 + 2 + 4 + 1  # + the parent run
    assert len(runs) - len(mine) == runs_state["other"] > 0
    proxy_train = [x for x in mine if x.data.tags.get("proxy_exp.kind") == "train"
                   and x.data.tags.get("proxy_exp.role") == "proxy"]
    history = client.get_metric_history(proxy_train[0].info.run_id, "proxy/ce/uniform")
    assert len(history) > 1  # in-loop proxies at several steps
