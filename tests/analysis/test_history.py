"""In-loop histories read back in one download: the train job's in_loop/history.parquet artifact (through a real,
resumed training run), read by analysis/history.py, and the per-metric fallback for runs logged without it."""
from __future__ import annotations

import os

import pandas as pd
import pytest

from analysis.history import PROXY_KEYS, checkpoint_frame, in_loop_steps, train_history
from analysis.runs import campaign_frame, load_runs
from proxy_exp.config import TrackingConfig
from proxy_exp.tracking import Run, keys, query, tracking_uri
from tests.helpers import FIXTURE_TRACES, tiny_train_cfg

EXPERIMENT = "history"
SCORE_EVERY = 5
STEPS = 4 * SCORE_EVERY


def _history_from_metrics(uri: str, run_id: str, wanted: list[str]) -> pd.DataFrame:
    """What the run's per-metric histories hold (the ground truth the artifact must equal), tidy."""
    rows = [(step, key, value) for key in wanted for step, value in query.metric_history(uri, run_id, key)]
    return pd.DataFrame(rows, columns=list(keys.HISTORY_COLUMNS))


def _tidy(frame: pd.DataFrame) -> pd.DataFrame:
    return (frame.astype({"step": int, "key": str, "value": float}).sort_values(["key", "step"])
            .reset_index(drop=True))


def test_a_resumed_train_run_logs_its_whole_in_loop_history(tmp_path):
    from proxy_exp.config import InLoopConfig, TracesConfig
    from proxy_exp.train.job import train

    cfg = tiny_train_cfg(tmp_path, experiment=EXPERIMENT, steps=STEPS, checkpoint_every=SCORE_EVERY,
                         stop_after_steps=STEPS // 2)
    cfg.in_loop = InLoopConfig(score_every=SCORE_EVERY, traces=TracesConfig(source="jsonl", tasks=[], per_task=0,
                                                                            paths=[FIXTURE_TRACES]))
    part = train(cfg, progress=False)
    assert part.stopped
    cfg.pretrain.stop_after_steps = 0
    full = train(cfg, progress=False)  # resumes: the steps scored before the stop stay in the history
    assert not full.stopped and full.run_id == part.run_id
    uri = tracking_uri(cfg.tracking, str(tmp_path))

    table = query.parquet_artifact(uri, full.run_id, keys.IN_LOOP_HISTORY)
    assert table is not None and tuple(table.column_names) == keys.HISTORY_COLUMNS
    assert int(table.schema.metadata[keys.HISTORY_TOTAL_STEPS.encode()]) == full.steps
    logged = table.to_pandas()
    assert sorted(set(logged["step"])) == list(range(SCORE_EVERY, STEPS + 1, SCORE_EVERY))
    pd.testing.assert_frame_equal(_tidy(logged), _tidy(_history_from_metrics(uri, full.run_id, sorted(set(logged["key"])))))

    frame = campaign_frame(load_runs(uri, EXPERIMENT))
    ckpt = checkpoint_frame(uri, frame)
    assert sorted(ckpt["step"]) == sorted(set(logged["step"]))
    assert (ckpt["fraction"] == ckpt["step"] / full.steps).all()
    assert set(PROXY_KEYS) <= set(ckpt.columns)


def _logged_run(root, steps: list[int], metrics: dict[str, float], artifact: pd.DataFrame | None = None) -> str:
    """A train run holding ``metrics`` (value + step) at each of ``steps`` and ``train/loss`` at every step up to
    :data:`TOTAL`, optionally with an in-loop history artifact (``artifact``: tidy rows; its total steps
    :data:`ARTIFACT_TOTAL`)."""
    cfg = TrackingConfig(experiment=EXPERIMENT)
    tags = keys.unit_tags("train", "u", "c", corpus="c0", size="xs", role="proxy", seed=0)
    with Run(cfg, str(root), "train", tags) as run:
        for step in steps:
            run.log_metrics({k: v + step for k, v in metrics.items()}, step=step)
        for step in range(1, TOTAL + 1):
            run.log_metric(keys.TRAIN_LOSS, 1.0 / step, step=step)
        if artifact is not None:
            import pyarrow as pa
            import pyarrow.parquet as pq

            path = os.path.join(str(root), os.path.basename(keys.IN_LOOP_HISTORY))
            table = pa.Table.from_pandas(artifact, preserve_index=False)
            pq.write_table(table.replace_schema_metadata({keys.HISTORY_TOTAL_STEPS: str(ARTIFACT_TOTAL)}), path)
            run.log_artifact(path, os.path.dirname(keys.IN_LOOP_HISTORY))
        return run.run_id


STEPS_LOGGED = [SCORE_EVERY, 2 * SCORE_EVERY]
TOTAL = 3 * SCORE_EVERY  # train/loss's last step: past the last in-loop step
ARTIFACT_TOTAL = 4 * SCORE_EVERY  # what the artifact says (differs from TOTAL, to tell which one was read)
VALUES = {key: float(i) for i, key in enumerate(PROXY_KEYS)}


def test_history_reads_the_artifact_and_the_metrics_it_lacks(tmp_path):
    """The artifact is what is read (its values, deliberately not the logged ones here); a key it lacks (scored into
    the run afterwards) comes from that key's metric history."""
    uri = tracking_uri(TrackingConfig(experiment=EXPERIMENT), str(tmp_path))
    late = keys.eval_key(keys.MEAN, "acc")
    rows = pd.DataFrame([(s, k, -VALUES[k] - s) for s in STEPS_LOGGED for k in PROXY_KEYS],
                        columns=list(keys.HISTORY_COLUMNS))
    run_id = _logged_run(tmp_path, STEPS_LOGGED, {**VALUES, late: 0.5}, artifact=rows)
    wide, last = in_loop_steps(uri, run_id, [*PROXY_KEYS, late])
    assert last == ARTIFACT_TOTAL and list(wide.index) == STEPS_LOGGED
    for key in PROXY_KEYS:
        assert list(wide[key]) == [-VALUES[key] - s for s in STEPS_LOGGED]  # the artifact's, not the metrics'
    assert list(wide[late]) == [0.5 + s for s in STEPS_LOGGED]
    hist = train_history(uri, run_id, {"ce": PROXY_KEYS[0], "accuracy": late})
    assert list(hist["step"]) == STEPS_LOGGED and list(hist["accuracy"]) == [0.5 + s for s in STEPS_LOGGED]
    assert hist["train_loss"].notna().all()


def test_history_of_a_run_without_the_artifact(tmp_path):
    """A run logged before the artifact existed: its in-loop proxies are read from their metric histories, and the
    fraction of training from train/loss's last step."""
    uri = tracking_uri(TrackingConfig(experiment=EXPERIMENT), str(tmp_path))
    run_id = _logged_run(tmp_path, STEPS_LOGGED, VALUES)
    assert query.parquet_artifact(uri, run_id, keys.IN_LOOP_HISTORY) is None
    wide, last = in_loop_steps(uri, run_id, PROXY_KEYS)
    assert last == 0 and list(wide.index) == STEPS_LOGGED
    for key in PROXY_KEYS:
        assert list(wide[key]) == [VALUES[key] + s for s in STEPS_LOGGED]
    ckpt = checkpoint_frame(uri, campaign_frame(load_runs(uri, EXPERIMENT)))
    assert list(ckpt["step"]) == STEPS_LOGGED
    assert list(ckpt["fraction"]) == pytest.approx([s / TOTAL for s in STEPS_LOGGED])
    assert list(ckpt[PROXY_KEYS[-1]]) == [VALUES[PROXY_KEYS[-1]] + s for s in STEPS_LOGGED]
