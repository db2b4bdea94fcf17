"""Step histories read back from MLflow: a campaign's in-loop proxies and one training run's in-loop metrics."""
from __future__ import annotations

import pandas as pd

from proxy_exp.config import STATISTICS, WEIGHTINGS
from proxy_exp.tracking import keys, query

PROXY_KEYS = [keys.proxy_key(s, w) for s in STATISTICS for w in WEIGHTINGS]


def in_loop_steps(uri: str, run_id: str, wanted: list[str]) -> tuple[pd.DataFrame, int]:
    """One run's step history of the metric keys ``wanted``: a frame indexed by step with one column per key it holds
    (the value last logged at that step), and the run's planned last step as its artifact says it (0: not said).

    Read from the run's :data:`keys.IN_LOOP_HISTORY` artifact (one download: a proxy-exp training run with in-loop
    metrics); a key that the artifact lacks (a run logged before it existed, a team's run, a step scored into the run
    afterwards by ``proxy-score tracking.run_id=...``) from its metric history."""
    return _steps(uri, run_id, wanted, query.parquet_artifact(uri, run_id, keys.IN_LOOP_HISTORY))


def _steps(uri: str, run_id: str, wanted: list[str], table) -> tuple[pd.DataFrame, int]:
    """:func:`in_loop_steps` from the run's history artifact as read (``table``: a ``pyarrow.Table`` or None)."""
    tidy = pd.DataFrame(columns=list(keys.HISTORY_COLUMNS))
    last = 0
    if table is not None:
        last = int((table.schema.metadata or {}).get(keys.HISTORY_TOTAL_STEPS.encode(), 0))
        tidy = table.to_pandas()
        tidy = tidy[tidy["key"].isin(wanted)]
    held = set(tidy["key"])
    read = [(step, key, value) for key in wanted if key not in held for step, value in query.metric_history(uri, run_id, key)]
    if read:
        tidy = pd.concat([tidy, pd.DataFrame(read, columns=list(keys.HISTORY_COLUMNS))], ignore_index=True)
    wide = (tidy.astype({"step": int, "value": float}).drop_duplicates(["step", "key"], keep="last")
            .pivot(index="step", columns="key", values="value"))
    wide.columns.name = None
    return wide, last


def checkpoint_frame(uri: str, frame: pd.DataFrame, artifact_uris: dict[str, str] | None = None) -> pd.DataFrame | None:
    """In-loop proxies of a campaign's proxy training runs (``campaign.in_loop_score_every``), one row per run and
    step: corpus, size, seed, step, fraction (of the run's last step) and the 80 ``proxy/<s>/<w>`` values; None
    when no proxy training run logged them. ``frame`` is :func:`analysis.runs.campaign_frame`'s output. One artifact
    download per run (:func:`in_loop_steps`), several at a time; ``artifact_uris`` (run id -> the run's
    ``artifact_uri`` from the search) spares the store a read of each whole run to find its artifacts."""
    trains = frame[(frame["kind"] == "train") & (frame["role"] == "proxy")]
    if trains.empty or PROXY_KEYS[0] not in trains.columns:
        return None
    records = trains[trains[PROXY_KEYS[0]].notna()].to_dict("records")
    tables = query.parquet_artifacts(uri, [(r["run_id"], (artifact_uris or {}).get(r["run_id"], "")) for r in records],
                                     keys.IN_LOOP_HISTORY, progress="in-loop histories")
    out = []
    for r in records:
        wide, last = _steps(uri, r["run_id"], [k for k in PROXY_KEYS if k in r and pd.notna(r[k])], tables[r["run_id"]])
        last = last or max((step for step, _ in query.metric_history(uri, r["run_id"], keys.TRAIN_LOSS)), default=0)
        if not last or wide.empty:
            continue
        out.append(wide.reset_index().assign(corpus=r["corpus"], size=r["size"], seed=r["seed"],
                                             fraction=lambda d: d["step"] / last))
    if not out:
        return None
    both = pd.concat(out, ignore_index=True)
    return both[["corpus", "size", "seed", "step", "fraction", *[k for k in PROXY_KEYS if k in both.columns]]]


def _series(uri: str, run_id: str, key: str, column: str) -> pd.DataFrame:
    hist = query.metric_history(uri, run_id, key)
    return (pd.DataFrame({"step": [s for s, _ in hist], column: [v for _, v in hist]})
            .drop_duplicates("step", keep="last"))


def latest_run_with(uri: str, experiment: str, wanted: list[str]) -> str:
    """The newest train run that logs every metric in ``wanted``."""
    for run in query.find_runs(uri, experiment, keys.tag_filter(keys.KIND, "train")):
        if all(k in run.data.metrics for k in wanted):
            return run.info.run_id
    raise ValueError(f"no train run in experiment {experiment!r} logs {sorted(wanted)}: train with "
                     "in_loop.score_every=N in_loop.eval_every=N (same N), or set analysis.train_run_id")


def _children_history(uri: str, run_id: str, columns: dict[str, str]) -> pd.DataFrame:
    """Rows of a parent run whose children are checkpoints: each FINISHED child tagged ``proxy_exp.step`` contributes
    its latest values of the wanted metrics at that step (score children the proxies, evaluate children the accuracy).

    When several children log the same metric at one step (a checkpoint re-scored, e.g. an overwritten ``latest/``),
    the newest one (by start time) wins, metric by metric. Children that are not FINISHED are skipped: a FAILED or
    KILLED one may have logged part of its metrics, and a RUNNING one is still being written (or died without
    ending its run), so none of them stands for the checkpoint."""
    experiment = query.experiment_of(uri, run_id)
    finished = [c for c in query.child_runs(uri, experiment, run_id) if c.info.status == "FINISHED"]
    rows: dict[int, dict] = {}
    # oldest first, so that a newer child's values overwrite an older one's at the same step
    for child in sorted(finished, key=lambda c: (c.info.start_time or 0, c.info.end_time or 0)):
        step = child.data.tags.get(keys.tag(keys.STEP))
        if step is None:
            continue
        row = rows.setdefault(int(step), {"step": int(step)})
        for column, key in columns.items():
            if key in child.data.metrics:
                row[column] = child.data.metrics[key]
        if keys.TRAIN_TOKENS in child.data.metrics:
            row["tokens"] = child.data.metrics[keys.TRAIN_TOKENS]
    frame = pd.DataFrame(list(rows.values()))
    return frame.dropna(subset=[c for c in columns if c in frame.columns]) if not frame.empty else frame


def train_history(uri: str, run_id: str, columns: dict[str, str]) -> pd.DataFrame:
    """One run's step history: ``step``, then one column per ``columns`` item (column name -> metric key), inner-
    joined on step, plus ``train_loss`` where the run logs ``train/loss``; sorted by step.

    The run is either one whose metrics have a step history (a proxy-exp training run with in-loop metrics, or a
    team's run that ``proxy-score ... step=N tracking.run_id=<run>`` filled), or a parent whose child runs are its
    checkpoints, each tagged with its step (``proxy-score ... step=N parent_run_id=<run>``)."""
    have = query.latest_metrics(uri, run_id)
    missing = [key for key in columns.values() if key not in have]
    if missing:
        children = _children_history(uri, run_id, columns)
        if not children.empty and all(c in children.columns for c in columns):
            return children.sort_values("step").reset_index(drop=True)
        raise ValueError(f"run {run_id} has no metric {missing[0]!r}, nor FINISHED child runs tagged with a step "
                         f"that log {sorted(columns.values())}; check analysis.primary_proxy / "
                         "analysis.accuracy_metric and how the checkpoints were scored (in_loop settings, or "
                         "proxy-score step=N)")
    wide, _ = in_loop_steps(uri, run_id, list(columns.values()))
    hist = wide.reindex(columns=list(columns.values())).set_axis(list(columns), axis=1).dropna().reset_index()
    if keys.TRAIN_LOSS in have:
        hist = hist.merge(_series(uri, run_id, keys.TRAIN_LOSS, "train_loss"), on="step", how="left")
    return hist.sort_values("step").reset_index(drop=True)
