"""The read side against a real MLflow store: searches page through every match (no cap drops runs), one client per
URI, and the analysis timeout distinct from a job's."""
from __future__ import annotations

import os

from proxy_exp.config import TrackingConfig
from proxy_exp.tracking import Run, keys, query, tracking_uri

PAGE = 3  # runs per search request here: every search below needs several pages
PAGES = 3
EXPERIMENT = "paging"


def _runs(root, n: int, tags: dict | None = None, parent: str = "") -> list[str]:
    cfg = TrackingConfig(experiment=EXPERIMENT)
    ids = []
    for i in range(n):
        with Run(cfg, str(root), f"run {i}", tags, parent_run_id=parent) as run:
            run.log_metric("m", i)
            ids.append(run.run_id)
    return ids


def test_searches_page_through_every_run(tmp_path):
    uri = tracking_uri(TrackingConfig(experiment=EXPERIMENT), str(tmp_path))
    n = PAGE * PAGES + 1  # a last, partial page
    ids = _runs(tmp_path, n, keys.unit_tags("train", "u", "c"))
    with Run(TrackingConfig(experiment=EXPERIMENT), str(tmp_path), "parent") as parent:
        pass
    children = _runs(tmp_path, n, parent=parent.run_id)

    train = keys.tag_filter(keys.KIND, "train")
    frame = query.runs_frame(uri, EXPERIMENT, train, page_size=PAGE)
    assert sorted(frame["run_id"]) == sorted(ids) and frame["metrics.m"].notna().all()
    assert len(query.runs_frame(uri, EXPERIMENT, page_size=PAGE)) == len(ids) + 1 + len(children)
    found = query.find_runs(uri, EXPERIMENT, train, page_size=PAGE)
    assert sorted(r.info.run_id for r in found) == sorted(ids)
    starts = [r.info.start_time for r in found]
    assert starts == sorted(starts, reverse=True)  # newest first
    (newest,) = query.find_runs(uri, EXPERIMENT, train, limit=1, page_size=PAGE)
    assert newest.info.start_time == max(starts)
    assert sorted(r.info.run_id for r in query.child_runs(uri, EXPERIMENT, parent.run_id, page_size=PAGE)) == sorted(
        children)
    # a list of filters: the runs matching any of them, each once
    either = [keys.tag_filter(keys.UNIT_ID, "u"), train, f"tags.`{keys.PARENT_RUN_ID}` = '{parent.run_id}'"]
    assert sorted(query.runs_frame(uri, EXPERIMENT, either, page_size=PAGE)["run_id"]) == sorted(ids + children)


def test_one_client_per_uri_and_the_analysis_timeout(tmp_path):
    cfg = TrackingConfig(experiment=EXPERIMENT, http_timeout_s=7, analysis_timeout_s=123)
    uri = query.configure_reads(cfg, str(tmp_path))
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == str(cfg.analysis_timeout_s)
    assert query._client(uri) is query._client(uri)
    Run(cfg, str(tmp_path), "a job's run").end()  # a job configures its own, short timeout
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == str(cfg.http_timeout_s)



def test_artifacts_are_read_without_leaving_files_and_a_real_error_is_not_taken_for_a_missing_one(tmp_path,
                                                                                                 monkeypatch):
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq
    import pytest

    cfg = TrackingConfig(experiment=EXPERIMENT)
    uri = tracking_uri(cfg, str(tmp_path))
    pq.write_table(pa.table({"x": [1, 2, 3]}), tmp_path / "t.parquet")
    (tmp_path / "p.json").write_text(json.dumps([{"id": "a"}]))
    with Run(cfg, str(tmp_path), "with artifacts") as run:
        run.log_artifact(str(tmp_path / "t.parquet"), "tables")
        run.log_artifact(str(tmp_path / "p.json"), "plan")
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(temp))
    assert query.parquet_artifact(uri, run.run_id, "tables/t.parquet").column("x").to_pylist() == [1, 2, 3]
    assert query.json_artifact(uri, run.run_id, "plan/p.json") == [{"id": "a"}]
    assert query.parquet_artifact(uri, run.run_id, "tables/none.parquet") is None
    assert query.json_artifact(uri, run.run_id, "elsewhere/p.json") is None
    assert list(temp.iterdir()) == []  # every download's folder removed (3,000 runs read left 3,000 folders)
    # an artifact that exists but cannot be downloaded (here: the download denied) is an error, not "no artifact"
    def denied(*args, **kwargs):
        raise PermissionError("denied")

    monkeypatch.setattr(query._client(uri), "download_artifacts", denied)
    with pytest.raises(PermissionError):
        query.parquet_artifact(uri, run.run_id, "tables/t.parquet")
    assert query.parquet_artifact(uri, run.run_id, "tables/none.parquet") is None
    assert list(temp.iterdir()) == []
