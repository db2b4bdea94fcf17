"""Runs read back from MLflow: campaign_frame's tidy frame and invariants, and a real MLflow store round trip."""
from __future__ import annotations


import pandas as pd
import pytest

from analysis.campaign_report import campaign_decisions
from analysis.runs import campaign_frame, load_runs
from proxy_exp.tracking.keys import proxy_key

from tests.helpers import as_mlflow_frame, synthetic_records


def test_campaign_frame_tidy_and_filters():
    recs = synthetic_records(["c0", "c1"], [0], [0])
    recs.append({"tags": {**recs[0]["tags"], "proxy_exp.unit_id": "failed"}, "metrics": {}, "status": "FAILED"})
    recs.append({"tags": {"proxy_exp.kind": "campaign", "proxy_exp.unit_id": "parent"}, "metrics": {},
                 "status": "FINISHED"})
    runs = as_mlflow_frame(recs)
    frame = campaign_frame(runs)
    assert len(frame) == len(recs) - 2  # the failed and the campaign run are dropped
    assert not frame.duplicated(["kind", "corpus", "size", "role", "seed"]).any()
    assert {"flops/train", "flops/score", "eval/mean/logprob_per_char", proxy_key("top5", "freq")} <= set(frame.columns)
    assert not any(c.startswith("metrics.") for c in frame.columns)
    assert frame["seed"].dtype.kind == "i"
    only = campaign_frame(runs, unit_ids={recs[0]["tags"]["proxy_exp.unit_id"]})
    assert len(only) == 1 and only["kind"].iloc[0] == recs[0]["tags"]["proxy_exp.kind"]


def test_campaign_frame_rejects_duplicates_and_missing_columns():
    recs = synthetic_records(["c0", "c1"], [0], [0])
    dup = {"tags": {**recs[1]["tags"], "proxy_exp.unit_id": "again"}, "metrics": recs[1]["metrics"],
           "status": "FINISHED"}
    runs = as_mlflow_frame(recs + [dup])
    t = recs[1]["tags"]
    with pytest.raises(ValueError, match=f"{t['proxy_exp.kind']}/c0/xs/seed 0"):
        campaign_frame(runs)
    # Restricting to this campaign's unit ids resolves it.
    ids = {r["tags"]["proxy_exp.unit_id"] for r in recs}
    assert len(campaign_frame(runs, unit_ids=ids)) == len(recs)
    with pytest.raises(ValueError, match="tags.proxy_exp.role"):
        campaign_frame(runs.drop(columns=["tags.proxy_exp.role"]))


# --------------------------------------------------------------------------- MLflow round trip
def test_load_runs_real_mlflow_store(tmp_path):
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("proxy-exp", artifact_location=str(tmp_path / "art"))
    corpora = ["c0", "c1", "c2"]
    recs = synthetic_records(corpora, [0], [0], proxy_eval=False)
    other = synthetic_records(["c0", "c1"], [0], [0], campaign="other", proxy_eval=False)[:1]
    failed = {"tags": {**recs[0]["tags"], "proxy_exp.unit_id": "crashed"}, "metrics": {}, "status": "FAILED"}
    for r in recs + other + [failed]:
        run = client.create_run(exp, tags=r["tags"])
        metrics = [Metric(k, v, 0, 0) for k, v in r["metrics"].items()]
        for i in range(0, len(metrics), 1000):
            client.log_batch(run.info.run_id, metrics=metrics[i:i + 1000])
        client.set_terminated(run.info.run_id, status=r["status"])

    runs = load_runs(uri, "proxy-exp", filter_string="tags.`proxy_exp.campaign` = 'syn'")
    assert len(runs) == len(recs) + 1  # this campaign's runs plus the failed one
    assert {"run_id", "status", "tags.proxy_exp.kind", "metrics.flops/train"} <= set(runs.columns)
    frame = campaign_frame(runs)
    assert len(frame) == len(recs)
    direct = campaign_frame(as_mlflow_frame(recs))
    key = ["kind", "corpus", "size", "role", "seed"]
    pd.testing.assert_frame_equal(frame.drop(columns="run_id").set_index(key).sort_index(axis=1),
                                  direct.drop(columns="run_id").set_index(key).sort_index(axis=1),
                                  check_dtype=False)
    rep = campaign_decisions(frame)
    assert rep.methods.set_index("method").loc["top5/freq", "decision_accuracy"] == pytest.approx(1.0)

    assert len(load_runs(uri, "proxy-exp")) == len(recs) + len(other) + 1
    with pytest.raises(ValueError, match="no MLflow experiment named 'nope'"):
        load_runs(uri, "nope")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_runs(f"sqlite:///{tmp_path / 'missing.db'}", "proxy-exp")
