"""A model-selection population read back from MLflow (or a CSV of downstream scores), and its report.

Population = every model with a FINISHED ``score`` run (``proxy-score``, or a campaign's scoring unit)
and a downstream score per task: from a FINISHED ``evaluate`` run of the same model (``proxy-eval``,
metric ``eval/<task>/<truth_metric>``: any metric the runs log, e.g. ``acc``, ``logprob_per_char``,
``exact_match_strict-match``; a lower-is-better one, by lm-eval's ``higher_is_better`` that each run logs, is
negated so that higher = better) or from a CSV with columns ``model, task, score``. The latest evaluate runs of
the models must agree on the settings that change what a truth measures (``evaluate.limit``, ``num_fewshot``, chat
template, generation settings).

Models are joined by their reference (the ``model.ref`` param: ``path`` or ``package:<module>``
plus ``::<gguf_file>``; ``model.path`` for runs logged before that param existed). When several
finished runs exist for one model, the latest wins and the older ones are reported in ``notes``.

Trace tasks vs downstream tasks: a downstream task ``t`` is predicted from the proxies of the trace
task ``task_map[t]``; ``overall`` means the macro average over all trace tasks (``proxy/<s>/<w>``).
Without a map, a downstream task uses the trace task of the same name when one exists, else ``overall``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Mapping, Optional

import numpy as np
import pandas as pd

from analysis.runs import TAG
from analysis.selection import (CE_PROXY, PROXY_COLUMNS, TRUTH_COLUMNS, _spearman, ce_baseline, k_sparse,
                                leave_k_tasks_out, ranksvm, single_best, summarise_cv, validate_inputs)
from analysis.uncertainty import percentile_interval
from proxy_exp.config import LOGPROB_PER_CHAR, EvaluateConfig
from proxy_exp.evaluate.metrics import HIGHER_IS_BETTER_PARAM, N_DOCS, default_direction, direction_of
from proxy_exp.tracking import keys

OVERALL = "overall"
REPORT_COLUMNS = ["method", "spearman_mean", "spearman_std", "ci_lo", "ci_hi", "n_splits", "chosen"]


@dataclass
class Population:
    """``proxies``/``truth``: long frames for :mod:`analysis.selection`; ``models``: one row per model
    (model, ref, kind of source, n_params, flops/train, score and evaluate run ids); ``task_map``:
    downstream task -> trace task or ``overall``; ``notes``: what was dropped or chosen and why."""

    proxies: pd.DataFrame
    truth: pd.DataFrame
    models: pd.DataFrame
    task_map: dict
    notes: list = field(default_factory=list)


def _param(runs: pd.DataFrame, name: str) -> pd.Series:
    col = f"params.{name}"
    return runs[col] if col in runs.columns else pd.Series(None, index=runs.index, dtype=object)


def _refs(runs: pd.DataFrame) -> pd.Series:
    ref = _param(runs, "model.ref")
    return ref.where(ref.notna() & (ref != ""), _param(runs, "model.path"))


def _latest(runs: pd.DataFrame, what: str, notes: list) -> pd.DataFrame:
    runs = runs.sort_values("start_time", ascending=False)
    dup = runs.duplicated("ref", keep="first")
    if dup.any():
        notes.append(f"{int(dup.sum())} older finished {what} run(s) of already-seen models ignored (latest wins): "
                     + ", ".join(runs.loc[dup, "run_id"].str[:8].tolist()[:8]))
    return runs[~dup]


TRACE_PARAMS = ("traces.source", "traces.tasks", "traces.per_task", "traces.paths")


def _trace_signature(runs: pd.DataFrame) -> pd.Series:
    """What a score run scored: its trace source, tasks, items per task and files (not the set's name, which an
    override of traces.tasks leaves unchanged); list params compared as lists, whichever way they were logged."""
    cols = [_param(runs, p).map(lambda v: str(keys.parse_param(v))) for p in TRACE_PARAMS]
    return pd.Series([" ".join(f"{p.split('.')[1]}={v}" for p, v in zip(TRACE_PARAMS, vals)) for vals in zip(*cols)],
                     index=runs.index, dtype=object)


def _label(row: pd.Series) -> str:
    corpus, size, seed = (row.get(TAG + k) for k in ("corpus", "size", "seed"))
    if isinstance(corpus, str) and corpus and isinstance(size, str) and size:
        return f"{corpus}/{size}/seed{seed}" if isinstance(seed, str) and seed else f"{corpus}/{size}"
    ref = str(row["ref"])
    if ref.startswith("package:"):
        return ref.split("::")[-1].removesuffix(".gguf")
    base = os.path.basename(ref.rstrip("/"))
    return os.path.basename(os.path.dirname(ref.rstrip("/"))) if base == "model" else base


def _trace_tasks(score_runs: pd.DataFrame) -> list[str]:
    """Trace tasks that every kept score run has proxies for (columns other runs brought in are NaN here)."""
    tasks = set()
    for c in score_runs.columns:
        parsed = keys.parse_proxy_key(c[len("metrics."):]) if c.startswith("metrics.") else None
        if parsed is not None and parsed[0] is not None and score_runs[c].notna().all():
            tasks.add(parsed[0])
    return sorted(tasks)


def resolve_task_map(truth_tasks, trace_tasks, task_map: Optional[Mapping[str, str]] = None) -> dict:
    """Downstream task -> trace task (or ``overall``); unknown names in ``task_map`` raise ValueError."""
    task_map = dict(task_map or {})
    unknown = sorted(set(task_map) - set(truth_tasks))
    if unknown:
        raise ValueError(f"analysis.task_map: downstream task(s) {unknown} have no downstream score; known: "
                         f"{sorted(truth_tasks)}")
    bad = sorted(v for v in task_map.values() if v != OVERALL and v not in trace_tasks)
    if bad:
        raise ValueError(f"analysis.task_map: trace task(s) {bad} were not scored; scored trace tasks: "
                         f"{sorted(trace_tasks)} (or '{OVERALL}' for their macro average)")
    return {t: task_map.get(t, t if t in trace_tasks else OVERALL) for t in sorted(truth_tasks)}


def population_from_runs(runs: pd.DataFrame, truth_metric: str = LOGPROB_PER_CHAR,
                         task_map: Optional[Mapping[str, str]] = None,
                         truth_csv: Optional[str] = None, traces: str = "", evaluate_limit: int = -1,
                         trace_tasks: Optional[list] = None) -> Population:
    """Build the population from an ``mlflow.search_runs`` frame (see :func:`analysis.runs.load_runs`).

    ``traces``: keep only score runs over this trace set (param ``traces.name``), e.g. ``mini``.
    ``trace_tasks``: keep only score runs over exactly these trace tasks (param ``traces.tasks``). The latest
    score runs of the models must share one trace set (source, tasks, items per task, files), else
    ValueError: proxies over different traces are not comparable.
    ``evaluate_limit``: keep only evaluate runs with this ``evaluate.limit`` (-1: any, but the latest run of
    every model must then share one limit: truths over different item sets are not comparable).
    ``truth_csv``: downstream scores from a CSV (``model, task, score``; ``model`` = a model's reference
    or label) instead of evaluate runs. Raises ValueError naming what is missing.
    """
    notes: list[str] = []
    need = ["run_id", "status", "start_time", TAG + "kind"]
    missing = [c for c in need if c not in runs.columns]
    if missing:
        raise ValueError(f"model selection: the runs frame lacks {missing}; are these proxy-exp runs read with "
                         "load_runs?")
    runs = runs.assign(ref=_refs(runs))
    fin = runs[(runs["status"] == "FINISHED") & runs["ref"].notna()]
    score = _score_runs(fin, traces, trace_tasks, notes)
    trace_tasks = _trace_tasks(score)

    if truth_csv:
        truth = _truth_from_csv(truth_csv, score)
        ev = pd.DataFrame(columns=["ref", "run_id"])
    else:
        truth, ev = _truth_from_runs(fin, score, truth_metric, evaluate_limit, notes)
    no_truth = sorted(set(score["model"]) - set(truth["model"]))
    if no_truth:
        notes.append(f"{len(no_truth)} scored model(s) without a downstream score left out: {no_truth[:4]}")
    # a model enters only with every downstream task
    tasks = sorted(truth["task"].unique())
    complete = truth.groupby("model")["task"].nunique()
    partial = sorted(complete[complete < len(tasks)].index)
    if partial:
        notes.append(f"{len(partial)} model(s) lack some downstream task and are left out: {partial[:4]}")
    keep = sorted(set(complete[complete == len(tasks)].index) & set(score["model"]))
    truth = truth[truth["model"].isin(keep)].reset_index(drop=True)
    score = score[score["model"].isin(keep)]

    mapping = resolve_task_map(tasks, trace_tasks, task_map)
    proxies = _proxies_by_task(score, mapping, notes)
    validate_inputs(proxies.reset_index(drop=True), truth)

    ev_ids = ev.set_index("ref")["run_id"] if not ev.empty else pd.Series(dtype=object)
    models = pd.DataFrame({
        "model": score["model"].to_numpy(), "ref": score["ref"].to_numpy(),
        "n_params": pd.to_numeric(_param(score, "n_params"), errors="coerce").to_numpy(),
        "flops_train": score.get("metrics." + keys.FLOPS_TRAIN, pd.Series(np.nan, index=score.index)).to_numpy(),
        "score_run": score["run_id"].to_numpy(), "evaluate_run": score["ref"].map(ev_ids).to_numpy(),
    }).sort_values("model").reset_index(drop=True)
    return Population(proxies.reset_index(drop=True), truth, models, mapping, notes)


def _score_runs(fin: pd.DataFrame, traces: str, trace_tasks: Optional[list], notes: list[str]) -> pd.DataFrame:
    """The latest finished score run of each model, over one trace set (``traces`` / ``trace_tasks`` choose it),
    with a readable ``model`` label."""
    score = fin[fin[TAG + "kind"] == "score"]
    if traces:
        score = score[_param(score, "traces.name") == traces]
    if score.empty:
        raise ValueError("model selection: no finished score run" + (f" over traces {traces!r}" if traces else "")
                         + "; score the population first (proxy-score -m model.path=...,...)")
    if trace_tasks:
        want = [str(x) for x in trace_tasks]
        score = score[_param(score, "traces.tasks").map(keys.parse_param_list).map(lambda t: t == want)]
        if score.empty:
            raise ValueError(f"model selection: no finished score run over traces.tasks={list(trace_tasks)}")
    score = _latest(score, "score", notes)
    sigs = _trace_signature(score)
    if sigs.nunique() > 1:
        counts = "; ".join(f"{sig} ({n} models)" for sig, n in sigs.value_counts().items())
        raise ValueError("model selection: the latest score runs of the models scored different trace sets: "
                         f"{counts}. Proxies over different traces are not comparable: choose one with "
                         "analysis.trace_tasks=[...] (and analysis.traces=<name>)")
    score = score.assign(model=score.apply(_label, axis=1))
    clash = score[score.duplicated("model", keep=False)]
    if not clash.empty:  # two refs with one label: fall back to the refs
        score.loc[clash.index, "model"] = clash["ref"]
    return score


def _truth_from_runs(fin: pd.DataFrame, score: pd.DataFrame, truth_metric: str, evaluate_limit: int,
                     notes: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The downstream truth (TRUTH_COLUMNS, higher = better) from the latest evaluate run of each scored model,
    and those evaluate runs."""
    ev = fin[fin[TAG + "kind"] == "evaluate"]
    if evaluate_limit >= 0:
        ev = ev[pd.to_numeric(_param(ev, "evaluate.limit"), errors="coerce") == evaluate_limit]
    ev = _latest(ev, "evaluate", notes) if not ev.empty else ev
    limits = _param(ev, "evaluate.limit").dropna().unique()
    if len(limits) > 1:
        counts = _param(ev, "evaluate.limit").value_counts().to_dict()
        raise ValueError(f"model selection: the latest evaluate runs of the models use different evaluate.limit "
                         f"values {counts} (limit: models); truths over different items are not comparable. "
                         "Set analysis.evaluate_limit to one of them")
    if ev.empty:
        raise ValueError("model selection: no finished evaluate run; run proxy-eval on the population (or give "
                         "analysis.truth_csv)")
    _check_evaluate_settings(ev)
    logged = {c: parsed for c in ev.columns if c.startswith("metrics.")
              and (parsed := keys.parse_eval_key(c[len("metrics."):])) is not None and parsed[0] != keys.MEAN
              and ev[c].notna().any()}
    task_of = {c: task for c, (task, metric) in logged.items() if metric == truth_metric}
    cols = list(task_of)
    if not cols:
        have = sorted({metric for _, metric in logged.values()} - {N_DOCS})
        raise ValueError(f"model selection: no finished evaluate run with metrics eval/<task>/{truth_metric}; the "
                         f"evaluate runs log {', '.join(have) or 'no eval/<task>/<metric> metric'}: set "
                         "analysis.truth_metric to one of them (or run proxy-eval with tasks that report it, or "
                         "give analysis.truth_csv)")
    long = ev[["ref", *cols]].melt(id_vars="ref", var_name="metric", value_name="score").dropna()
    long["task"] = long["metric"].map(task_of)
    higher, note = truth_direction(ev, truth_metric)
    if note:
        notes.append(note)
    if not higher:
        long["score"] = -long["score"]
    names = score.set_index("ref")["model"]
    unscored = sorted(set(long["ref"]) - set(names.index))
    if unscored:
        notes.append(f"{len(unscored)} evaluated model(s) without a score run left out: {unscored[:4]}")
    long = long[long["ref"].isin(names.index)]
    truth = long.assign(model=long["ref"].map(names))[TRUTH_COLUMNS]
    return truth, ev


def _proxies_by_task(score: pd.DataFrame, mapping: Mapping[str, str], notes: list[str]) -> pd.DataFrame:
    """PROXY_COLUMNS: for each downstream task, the proxies of the trace task ``mapping`` gives it (or the overall
    ones); a proxy undefined for some model is dropped, with a note."""
    rows = []
    parsed = {c: keys.parse_proxy_key(c[len("metrics."):]) for c in score.columns if c.startswith("metrics.")}
    for down, trace in mapping.items():
        want = None if trace == OVERALL else trace
        names = {c: p[1] for c, p in parsed.items() if p is not None and p[0] == want}
        part = score[["model", *names]].melt(id_vars="model", var_name="proxy", value_name="value")
        part["proxy"] = part["proxy"].map(names)
        rows.append(part.assign(task=down))
    proxies = pd.concat(rows, ignore_index=True)[PROXY_COLUMNS].dropna(subset=["value"])
    # a proxy that is NaN for some model (e.g. a weighting with zero mass) cannot rank the population
    counts = proxies.groupby("proxy")["model"].count()
    full = counts[counts == counts.max()].index
    if len(full) < proxies["proxy"].nunique():
        dropped = sorted(set(proxies["proxy"]) - set(full))
        notes.append(f"{len(dropped)} proxy(ies) undefined for some model dropped: {dropped[:5]}")
        proxies = proxies[proxies["proxy"].isin(full)]
    return proxies


# evaluate settings that change what a truth measures (besides evaluate.limit, which analysis.evaluate_limit picks;
# evaluate.seed only changes which samples a sampled generation draws)
EVAL_SETTINGS = ("num_fewshot", "apply_chat_template", "fewshot_as_multiturn", "system_instruction", "gen_kwargs",
                 "include_path")


def _check_evaluate_settings(ev: pd.DataFrame) -> None:
    """ValueError when the latest evaluate runs of the models differ in a setting that changes the truth (few-shot,
    chat template, generation settings, ...): truths measured differently are not comparable. A run logged before a
    setting existed has that setting's default."""
    default = EvaluateConfig()
    for name in EVAL_SETTINGS:
        prefix = f"params.evaluate.{name}"
        cols = [c for c in ev.columns if c == prefix or c.startswith(prefix + ".")]
        if name == "gen_kwargs":  # a mapping, logged as evaluate.gen_kwargs.<key> params
            logged = ev[sorted(cols)].astype(object)
            values = logged.apply(lambda row: ",".join(f"{c[len(prefix) + 1:]}={v}" for c, v in row.items()
                                                       if isinstance(v, str)), axis=1) if cols else \
                pd.Series("", index=ev.index)
        else:
            values = (ev[prefix] if prefix in ev.columns else pd.Series(None, index=ev.index, dtype=object))
            values = values.fillna(keys.param_value(getattr(default, name)))
        if values.nunique() > 1:
            counts = values.value_counts().to_dict()
            raise ValueError(f"model selection: the latest evaluate runs of the models differ in evaluate.{name} "
                             f"{counts} (value: models); truths measured differently are not comparable: keep one "
                             f"with analysis.filter, e.g. \"params.`evaluate.{name}` = '{next(iter(counts))}'\"")


def truth_direction(ev: pd.DataFrame, metric: str) -> tuple[bool, str]:
    """Is a higher ``metric`` better, by the evaluate runs ``ev`` (their ``eval.higher_is_better`` param: lm-eval's
    higher_is_better), and a note when that was not logged (runs before the param existed: proxy-exp's own metrics,
    else lm-eval's metric registry). ValueError when nothing says, or runs disagree."""
    col = "params." + HIGHER_IS_BETTER_PARAM
    higher, missing = direction_of(ev[col] if col in ev.columns else [None] * len(ev), metric)
    note = ""
    if higher is None:
        higher = default_direction(metric)
        if higher is None:
            raise ValueError(f"analysis.truth_metric={metric!r}: whether a higher {metric} is better is unknown (the "
                             f"evaluate runs logged no {HIGHER_IS_BETTER_PARAM} for it and lm-eval's metric registry "
                             "does not know it): rerun proxy-eval on the population, or give analysis.truth_csv "
                             "(scores higher = better)")
        note = (f"{metric}: direction not logged by the evaluate runs; {'higher' if higher else 'lower'} is better "
                "by lm-eval's metric registry / proxy-exp's own metrics")
    elif missing:
        note = f"{missing} evaluate run(s) logged no {HIGHER_IS_BETTER_PARAM}; the others' direction was used"
    if not higher:
        note = "; ".join(filter(None, [note, f"truth eval/<task>/{metric} is lower-is-better (lm-eval's "
                                             "higher_is_better): scores negated, so that higher = better"]))
    return bool(higher), note


def _truth_from_csv(path: str, score: pd.DataFrame) -> pd.DataFrame:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"analysis.truth_csv={path!r} does not exist; give a CSV with columns "
                                f"{TRUTH_COLUMNS}")
    df = pd.read_csv(path)
    missing = [c for c in TRUTH_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"analysis.truth_csv={path!r}: missing columns {missing}; expected {TRUTH_COLUMNS} "
                         "(one row per model and task, score higher = better)")
    by_ref = score.set_index("ref")["model"]
    df["model"] = df["model"].astype(str).map(lambda m: by_ref.get(m, m))
    bad = pd.to_numeric(df["score"], errors="coerce").isna()
    if bad.any():
        raise ValueError(f"analysis.truth_csv={path!r}: column score is not numeric in {int(bad.sum())} row(s), "
                         f"first at line {int(np.flatnonzero(bad.to_numpy())[0]) + 2}")
    return df[TRUTH_COLUMNS].astype({"score": float})


# --------------------------------------------------------------------------- the report
def model_selection_report(proxies: pd.DataFrame, truth: pd.DataFrame, k: int = 3, n_held_out: int = 2,
                           n_boot: int = 500, seed: int = 0, alpha: float = 0.05,
                           progress: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Leave-``n_held_out``-tasks-out Spearman rho of the ce baseline, single best, ``k``-sparse and
    RankSVM linear / RBF: (table with columns REPORT_COLUMNS, one row per CV split and method).

    The CI is a percentile bootstrap over **models**: each split's fitted predictions are kept and the
    models of the population are resampled with replacement (the same resample for every method);
    the statistic is the mean over splits of the held-out rho. It is conditional on the fits, so it
    shows how much the figure depends on which models happen to be in the population.
    """
    methods = [ce_baseline(CE_PROXY), single_best(), k_sparse(k), ranksvm("linear"), ranksvm("rbf")]
    models = sorted(truth["model"].unique())
    rng = np.random.default_rng(seed)
    boot_idx = rng.integers(0, len(models), size=(int(n_boot), len(models)))
    truth_wide = truth.pivot(index="model", columns="task", values="score").loc[models]
    rows, splits = [], []
    iterator = methods
    if progress:
        from tqdm import tqdm

        iterator = tqdm(methods, desc="model selection", unit="method")
    for m in iterator:
        cv = leave_k_tasks_out(proxies, truth, m, k=n_held_out, keep_predictions=True)
        summary = summarise_cv(cv)
        # predictions[s][t]: Series over models; bootstrap the mean over splits of the mean held-out rho
        preds = [{t: p.loc[models].to_numpy(float) for t, p in row.items()} for row in cv["predictions"]]
        boot = np.empty(len(boot_idx))
        for b, idx in enumerate(boot_idx):
            per_split = []
            for pr in preds:
                vals = [_spearman(pd.Series(p[idx]), pd.Series(truth_wide[t].to_numpy(float)[idx]))
                        for t, p in pr.items()]
                vals = [v for v in vals if np.isfinite(v)]
                if vals:
                    per_split.append(np.mean(vals))
            boot[b] = np.mean(per_split) if per_split else np.nan
        lo, hi = percentile_interval(boot, alpha)
        chosen = cv["chosen"].value_counts()
        rows.append({"method": m.name, **summary, "ci_lo": float(lo), "ci_hi": float(hi),
                     "chosen": "; ".join(f"{c} x{n}" for c, n in chosen.items())[:200]})
        splits.append(cv.drop(columns=["predictions"]).assign(
            held_out=lambda d: d["held_out"].map(lambda h: "+".join(map(str, h))),
            spearman_by_task=lambda d: d["spearman_by_task"].map(
                lambda x: "; ".join(f"{t}={v:.3f}" for t, v in x.items()))))
    return pd.DataFrame(rows, columns=REPORT_COLUMNS), pd.concat(splits, ignore_index=True)


def per_model_table(pop: Population, proxies: tuple[str, ...] = (CE_PROXY,)) -> pd.DataFrame:
    """One row per model: its parameters, training compute, downstream score per task and their mean, and the
    named proxies on the first downstream task's trace source."""
    wide = pop.truth.pivot(index="model", columns="task", values="score")
    wide.columns = [f"truth/{c}" for c in wide.columns]
    wide["truth/mean"] = wide.mean(axis=1)
    first = sorted(pop.truth["task"].unique())[0]
    px = pop.proxies[(pop.proxies["task"] == first) & pop.proxies["proxy"].isin(proxies)]
    px = px.pivot(index="model", columns="proxy", values="value")
    out = pop.models.set_index("model")[["n_params", "flops_train"]].join(wide).join(px)
    return out.sort_values("truth/mean", ascending=False).reset_index()
