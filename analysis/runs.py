"""Read a campaign's runs back from MLflow into pandas.

Tag schema written by proxy_exp/tracking.py on every run (prefix ``proxy_exp.``): ``kind``
(campaign | train | score | evaluate | analyze), ``unit_id``, ``campaign``, ``corpus``, ``size``,
``role`` (proxy | target), ``seed`` and, on score/evaluate runs, ``train_unit`` (the training unit
whose model was scored). Metrics: score runs ``proxy/<statistic>/<weighting>``, ``flops/score``,
``flops/train``; evaluate runs ``eval/mean/<metric>``, ``flops/eval``, ``flops/train``; train runs
``train/final_loss``, ``flops/train``.
"""
from __future__ import annotations

import os
from typing import Iterable
from urllib.parse import urlparse

import pandas as pd

TAG = "tags.proxy_exp."  # the column prefix of proxy-exp's own tags (proxy_exp.tracking.TAG)
KINDS = ("campaign", "train", "score", "evaluate", "analyze")
UNIT_KINDS = ("train", "score", "evaluate")  # the kinds campaign_frame keeps (one per model unit)
ROLES = ("proxy", "target")
KEY = ["kind", "corpus", "size", "seed"]  # at most one finished run per key in a campaign
IDENTITY = ["kind", "corpus", "size", "role", "seed", "unit_id", "campaign", "train_unit", "run_id"]


def _check_sqlite_exists(tracking_uri: str) -> None:
    """A ``sqlite:///`` URI to a missing file would silently create an empty store: refuse."""
    if not tracking_uri.startswith("sqlite:"):
        return
    path = urlparse(tracking_uri).path
    if tracking_uri.startswith("sqlite:////"):
        path = "/" + path.lstrip("/")
    elif tracking_uri.startswith("sqlite:///"):
        path = path[1:]
    if path and path != ":memory:" and not os.path.exists(path):
        raise FileNotFoundError(f"MLflow store {tracking_uri!r}: file {path!r} does not exist; check "
                                "tracking.uri / paths.root (the campaign's store is <paths.root>/mlflow.db)")


def load_runs(tracking_uri: str, experiment: str, filter_string: str = "") -> pd.DataFrame:
    """All active runs of ``experiment`` as MLflow gives them: one row per run, columns ``run_id``,
    ``status``, ..., ``metrics.*``, ``params.*``, ``tags.*`` (``mlflow.search_runs`` pandas output).

    ``filter_string`` is MLflow's search filter, e.g. ``"tags.`proxy_exp.campaign` = 'mini'"``.
    The process-wide MLflow tracking URI is restored afterwards.
    """
    import mlflow
    from mlflow.tracking import MlflowClient

    if not tracking_uri:
        raise ValueError("load_runs: tracking_uri is empty; pass the store's URI, e.g. "
                         "'sqlite:////abs/path/mlflow.db' or 'http://127.0.0.1:5000'")
    _check_sqlite_exists(tracking_uri)
    client = MlflowClient(tracking_uri=tracking_uri)
    if client.get_experiment_by_name(experiment) is None:
        known = [e.name for e in client.search_experiments()]
        raise ValueError(f"load_runs: no experiment named {experiment!r} in {tracking_uri}; "
                         f"experiments there: {known} (set tracking.experiment)")
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tracking_uri)
    try:
        runs = mlflow.search_runs(experiment_names=[experiment], filter_string=filter_string,
                                  output_format="pandas")
    finally:
        mlflow.set_tracking_uri(previous)
    return runs


def _seed_values(seeds: pd.Series) -> pd.Series:
    """Seeds as integers where every seed tag is an integer, else as given."""
    try:
        return pd.to_numeric(seeds).astype(int)
    except (ValueError, TypeError):
        return seeds


def campaign_frame(runs: pd.DataFrame, unit_ids: Iterable[str] | None = None) -> pd.DataFrame:
    """A tidy frame of a campaign's unit runs: one row per (kind, corpus, size, role, seed).

    Keeps FINISHED runs of kind train/score/evaluate (runs without a ``proxy_exp.kind`` tag are not
    proxy-exp runs and are ignored; campaign/analyze runs are dropped), optionally only those whose
    ``proxy_exp.unit_id`` is in ``unit_ids``. Columns: kind, corpus, size, role, seed, unit_id,
    campaign, train_unit, run_id, then every metric that some kept run has, named without the
    ``metrics.`` prefix. Invariants checked first (DataDecide style): required columns present,
    known kinds and roles, no missing identity tag, and no two runs with the same
    (kind, corpus, size, seed), else ValueError naming the offenders.
    """
    required = ["run_id", "status", TAG + "kind", TAG + "corpus", TAG + "size", TAG + "role", TAG + "seed"]
    if unit_ids is not None:
        required.append(TAG + "unit_id")
    missing = [c for c in required if c not in runs.columns]
    if missing:
        raise ValueError(f"campaign_frame: columns {missing} missing from the runs frame; were these "
                         "runs logged by proxy-exp (tags proxy_exp.kind/corpus/size/role/seed) and read "
                         "with load_runs?")

    kind = runs[TAG + "kind"]
    unknown = sorted(set(kind.dropna()) - set(KINDS))
    if unknown:
        raise ValueError(f"campaign_frame: unknown proxy_exp.kind values {unknown}; expected one of {KINDS}")
    keep = kind.isin(UNIT_KINDS) & (runs["status"] == "FINISHED")
    if unit_ids is not None:
        keep &= runs[TAG + "unit_id"].isin(set(unit_ids))
    sel = runs[keep]

    ident = {name: (sel[TAG + name] if TAG + name in sel.columns else pd.Series(None, index=sel.index,
                                                                                  dtype=object))
             for name in IDENTITY if name != "run_id"}
    frame = pd.DataFrame(ident)
    frame["run_id"] = sel["run_id"]

    lacking = frame[["corpus", "size", "role", "seed"]].isna().any(axis=1)
    if lacking.any():
        raise ValueError("campaign_frame: runs " + ", ".join(frame.loc[lacking, "run_id"]) + " lack one of "
                         "the tags proxy_exp.corpus/size/role/seed; tag them or leave them out with unit_ids")
    bad_role = sorted(set(frame["role"]) - set(ROLES))
    if bad_role:
        raise ValueError(f"campaign_frame: unknown proxy_exp.role values {bad_role}; expected one of {ROLES}")
    dup = frame.duplicated(subset=KEY, keep=False)
    if dup.any():
        groups = (frame[dup].groupby(KEY, sort=True)["run_id"].apply(list).reset_index())
        lines = "; ".join(f"{r.kind}/{r.corpus}/{r.size}/seed {r.seed}: runs {r.run_id}"
                          for r in groups.itertuples())
        raise ValueError(f"campaign_frame: several finished runs share (kind, corpus, size, seed): {lines}. "
                         "Pass this campaign's unit_ids, or filter on tags.`proxy_exp.campaign`")
    frame["seed"] = _seed_values(frame["seed"])

    metric_cols = [c for c in sel.columns if c.startswith("metrics.")]
    metrics = sel[metric_cols].dropna(axis=1, how="all")
    metrics.columns = [c[len("metrics."):] for c in metrics.columns]
    out = pd.concat([frame, metrics], axis=1)
    return out.sort_values(["kind", "corpus", "size", "role", "seed"]).reset_index(drop=True)
