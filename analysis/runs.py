"""A campaign's runs read back from MLflow into pandas (the tag and metric names are
:mod:`proxy_exp.tracking.keys`'s).

:func:`load_runs` gives the runs of an experiment (optionally filtered) as ``mlflow.search_runs`` does (one row per run,
columns ``metrics.*``, ``params.*``, ``tags.*``), :func:`campaign_runs` one campaign's runs only; :func:`campaign_frame`
turns them into a tidy frame of a campaign's unit runs, one row per (kind, corpus, size, role, seed), after checking
its invariants.
"""
from __future__ import annotations

from typing import Iterable

import pandas as pd

from proxy_exp.tracking import keys, query

TAG = keys.tag_column("")  # "tags.proxy_exp.": the column prefix of proxy-exp's own tags
KINDS = keys.RUN_KINDS
UNIT_KINDS = keys.UNIT_KINDS  # the kinds campaign_frame keeps (one per model unit)
ROLES = keys.ROLES
KEY = ["kind", "corpus", "size", "seed"]  # at most one finished run per key in a campaign
IDENTITY = ["kind", "corpus", "size", "role", "seed", "unit_id", "campaign", "train_unit", "run_id"]
DTYPE_PARAM = "params.model.dtype_resolved"  # proxy_exp/devices.py:Placement.params


def load_runs(tracking_uri: str, experiment: str, filter_string: str = "") -> pd.DataFrame:
    """All active runs of ``experiment`` (:func:`proxy_exp.tracking.query.runs_frame`); ``filter_string`` is
    MLflow's search filter, e.g. ``"tags.`proxy_exp.campaign` = 'mini'"``."""
    return query.runs_frame(tracking_uri, experiment, filter_string)


def campaign_runs(tracking_uri: str, experiment: str, campaign: str, unit_ids: Iterable[str] = (),
                  page_size: int = query.PAGE_SIZE) -> pd.DataFrame:
    """The runs of one campaign (as :func:`load_runs` gives them), never the whole experiment: those tagged
    ``proxy_exp.campaign = <campaign>``, plus, for each of ``unit_ids`` without a FINISHED run among them, the runs of
    that unit (a unit that two campaigns share runs once, tagged with the campaign that ran it first)."""
    runs = query.runs_frame(tracking_uri, experiment, keys.tag_filter(keys.CAMPAIGN, campaign), page_size)
    unit = TAG + keys.UNIT_ID
    done = set(runs.loc[runs["status"] == "FINISHED", unit].dropna()) if unit in runs.columns else set()
    elsewhere = sorted(set(unit_ids) - done)
    if not elsewhere:
        return runs
    shared = query.runs_frame(tracking_uri, experiment, [keys.tag_filter(keys.UNIT_ID, u) for u in elsewhere], page_size)
    return pd.concat([runs, shared], ignore_index=True).drop_duplicates("run_id", ignore_index=True)


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
    campaign, train_unit, run_id, dtype (what a score / evaluate run's model ran in), then every metric that some kept run has, named without the
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
    # the dtype a score / evaluate run's model ran in (model.dtype=auto: fp32 on CPU, bf16 on a GPU)
    frame["dtype"] = sel[DTYPE_PARAM] if DTYPE_PARAM in sel.columns else pd.Series(None, index=sel.index, dtype=object)

    metric_cols = [c for c in sel.columns if c.startswith("metrics.")]
    metrics = sel[metric_cols].dropna(axis=1, how="all")
    metrics.columns = [c[len("metrics."):] for c in metrics.columns]
    out = pd.concat([frame, metrics], axis=1)
    return out.sort_values(["kind", "corpus", "size", "role", "seed"]).reset_index(drop=True)
