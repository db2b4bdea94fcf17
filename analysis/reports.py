"""The analyses proxy-analyze (and a campaign's last step) runs: read runs back from MLflow, decide, write tables
and plots under an output folder, and log them as an MLflow analysis run.

- :func:`analyze_campaign`: setting 2, a campaign's decisions (from its parent run's plan and its unit runs).
- :func:`analyze_datadecide`: the same decision analysis on DataDecide's published results.
- :func:`analyze_model_selection`: setting 1 over every scored and evaluated model in an experiment.
- :func:`analyze_forecast`: setting 3 on one training run's in-loop history.

Everything is read from MLflow (never from a campaign's in-memory state); CSVs are written under a temporary name
and renamed, so a CSV under its real name is complete.
"""
from __future__ import annotations

import os

import pandas as pd

from proxy_exp.config import LOGPROB_PER_CHAR, AnalysisConfig, TrackingConfig
from proxy_exp.files import tmp_name
from proxy_exp.tracking import Run, keys, query

RUNS_READ = keys.analysis_key("runs_read")  # an analysis run's metric: how many runs it read back from MLflow


def write_csv(df: pd.DataFrame, path: str) -> str:
    """Write ``df`` to ``path`` under a temporary name, then rename: never a partial CSV under the real name."""
    tmp = tmp_name(path)
    df.to_csv(tmp, index=False)
    os.replace(tmp, path)
    return path


def _log_analysis(tcfg: TrackingConfig, root: str, name: str, unit_id: str, campaign: str, metrics: dict, out: str,
                  parent_run_id: str = "") -> str:
    with Run(tcfg, root, name, keys.unit_tags("analyze", unit_id, campaign), parent_run_id) as run:
        run.log_metrics({k: float(v) for k, v in metrics.items() if v == v})
        run.log_artifacts(out, "analysis")
        return run.run_id


def analyze_campaign(tcfg: TrackingConfig, root: str, parent_run_id: str, out_dir: str, acfg: AnalysisConfig):
    """Decisions of every method against the target ranking; tables, plots and an MLflow analyze run.

    The truth is the metric the campaign was run with, as its parent run records it (tag
    ``proxy_exp.truth_metric``: the driver's ``evaluate.primary_metric``): ``proxy-campaign`` and a later
    ``proxy-analyze campaign_name=...`` judge a campaign by the same truth. A parent run without the tag (a campaign
    from before it) is judged by the default, with a note saying so."""
    from analysis.campaign_report import campaign_decisions, truth_direction_from_runs
    from analysis.history import checkpoint_frame
    from analysis.runs import campaign_frame, campaign_runs

    uri = query.configure_reads(tcfg, root)
    truth_metric = query.run_tags(uri, parent_run_id).get(keys.tag(keys.TRUTH_METRIC))
    truth_note = "" if truth_metric else (
        f"truth: the campaign's parent run records no {keys.tag(keys.TRUTH_METRIC)} (a campaign from before it); "
        f"judged by {LOGPROB_PER_CHAR}, the default")
    truth_metric = truth_metric or LOGPROB_PER_CHAR
    planned = query.json_artifact(uri, parent_run_id, "plan/units.json")
    if planned is None:
        raise ValueError(f"campaign run {parent_run_id} has no plan/units.json artifact: is it a campaign's parent run?")
    ids = {u["id"] for u in planned if u.get("kind", "train") in keys.UNIT_KINDS}  # data units log no runs
    campaign = planned[0].get("campaign", "") if planned else ""
    runs = campaign_runs(uri, tcfg.experiment, campaign, ids)
    frame = campaign_frame(runs, unit_ids=ids)
    missing = ids - set(frame["unit_id"]) if "unit_id" in frame else ids
    if missing:
        raise ValueError(f"{len(missing)} planned unit(s) have no finished MLflow run "
                         f"(e.g. {sorted(missing)[:3]}); rerun proxy-campaign to complete them")
    artifact_uris = dict(zip(runs["run_id"], runs["artifact_uri"]))
    scores = list(frame[(frame["kind"] == "score") & (frame["role"] == "proxy")].itertuples())
    # per-trace proxies for CIs over traces; a run without them gets CIs over seeds only
    tables = query.parquet_artifacts(uri, [(r.run_id, artifact_uris.get(r.run_id, "")) for r in scores],
                                     "scores/per_trace.parquet", progress="per-trace proxies")
    per_trace = {(r.corpus, r.size, r.seed): tables[r.run_id].to_pandas() for r in scores
                 if tables[r.run_id] is not None}
    report = campaign_decisions(frame, primary_proxy=acfg.primary_proxy, ce_proxy=acfg.ce_proxy,
                                truth_metric=truth_metric, per_trace=per_trace, n_boot=acfg.n_boot,
                                truth_higher_is_better=truth_direction_from_runs(runs, truth_metric, ids),
                                boot_seed=acfg.seed, checkpoints=checkpoint_frame(uri, frame, artifact_uris))
    if truth_note:
        report.notes.append(truth_note)
    out = os.path.join(out_dir, "analysis")
    os.makedirs(out, exist_ok=True)
    files = {}
    for name, df in (("ranking", report.table), ("methods", report.methods), ("frontier", report.frontier)):
        files[name] = write_csv(df, os.path.join(out, f"{name}.csv"))
    files["summary"] = os.path.join(out, "summary.txt")
    with open(files["summary"], "w") as f:
        f.write(report.summary_text() + "\n")
    if acfg.plots:
        from analysis.plots import plot_frontier, plot_ranking

        files["frontier_png"] = plot_frontier(report.methods, report.frontier, os.path.join(out, "frontier.png"),
                                              title="compute vs decision accuracy")
        files["ranking_png"] = plot_ranking(report.table, os.path.join(out, "ranking.png"))
    metrics = {keys.analysis_key("decision_accuracy", row["method"]): float(row["decision_accuracy"])
               for _, row in report.methods.iterrows()}
    metrics[RUNS_READ] = len(runs)
    _log_analysis(tcfg, root, "analysis", f"analyze-{parent_run_id[:12]}", campaign, metrics, out, parent_run_id)
    Run(tcfg, root, "campaign", run_id=parent_run_id, reopen=False).log_artifacts(out, "analysis")
    report.files = files  # type: ignore[attr-defined]
    return report


def analyze_datadecide(out_dir: str, plots: bool = True, ties: str = "half") -> str:
    """DataDecide's recipes ranked at each size below 1B by the seed mean of its likelihood metric, against the
    1B ranking by three-seed mean accuracy: decision_accuracy.csv and the frontier over sizes (``ties``: the tie
    rule, :func:`analysis.decisions.pairwise_decision_accuracy`)."""
    from analysis.datadecide import datadecide_decision_accuracy
    from analysis.pareto import pareto_frontier

    table = datadecide_decision_accuracy(str(ties))
    os.makedirs(out_dir, exist_ok=True)
    path = write_csv(table, os.path.join(out_dir, "decision_accuracy.csv"))
    with pd.option_context("display.width", 160):
        print("DataDecide (Magnusson et al. 2025, ODC-BY 1.0): 25 recipes ranked at each size by the seed mean of "
              "-ln(correct_prob_per_char), vs the 1B ranking by 3-seed mean OLMES accuracy")
        print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    if plots:
        from analysis.plots import plot_frontier

        points = table.assign(method=table["size"], family="likelihood @ size")
        plot_frontier(points, pareto_frontier(points), os.path.join(out_dir, "frontier.png"),
                      title="DataDecide: compute vs decision accuracy (vs 1B)")
    print(f"\nwritten: {path}")
    return path


def analyze_model_selection(tcfg: TrackingConfig, root: str, out_dir: str, acfg: AnalysisConfig,
                            progress: bool = True) -> dict:
    """Setting 1 over every scored and evaluated model in the experiment: tables, plot, an MLflow analyze run."""
    from analysis.population import model_selection_report, per_model_table, population_from_runs
    from analysis.runs import load_runs

    uri = query.configure_reads(tcfg, root)
    runs = load_runs(uri, tcfg.experiment, acfg.filter)
    pop = population_from_runs(runs, acfg.truth_metric, acfg.task_map, acfg.truth_csv or None, acfg.traces,
                               acfg.evaluate_limit, list(acfg.trace_tasks))
    n_models, n_tasks = pop.truth["model"].nunique(), pop.truth["task"].nunique()
    table, splits = model_selection_report(pop.proxies, pop.truth, k=acfg.k, n_held_out=acfg.n_held_out,
                                           n_boot=acfg.n_boot, seed=acfg.seed, progress=progress)
    models = per_model_table(pop, (acfg.ce_proxy, acfg.primary_proxy))
    os.makedirs(out_dir, exist_ok=True)
    files = {"model_selection": write_csv(table, os.path.join(out_dir, "model_selection.csv")),
             "cv_splits": write_csv(splits, os.path.join(out_dir, "cv_splits.csv")),
             "population": write_csv(models, os.path.join(out_dir, "population.csv"))}
    lines = [f"Model selection (setting 1): {n_models} models x {n_tasks} downstream tasks "
             f"(truth eval/<task>/{acfg.truth_metric}{' from ' + acfg.truth_csv if acfg.truth_csv else ''})",
             "proxies used per downstream task: " + ", ".join(f"{t} <- {v}" for t, v in pop.task_map.items()),
             "", "population (best downstream mean first):"]
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.max_colwidth", 70):
        lines.append(models.drop(columns=["flops_train"]).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
        lines += ["", f"leave-{acfg.n_held_out}-tasks-out Spearman rho (mean, std over splits, "
                      f"{int(100 * 0.95)}% bootstrap CI over models):",
                  table.to_string(index=False, float_format=lambda v: f"{v:.3f}")]
    lines += [f"note: {n}" for n in pop.notes]
    summary = "\n".join(lines)
    with open(os.path.join(out_dir, "summary.txt"), "w") as f:
        f.write(summary + "\n")
    if acfg.plots:
        from analysis.plots import plot_model_selection

        files["plot"] = plot_model_selection(table, os.path.join(out_dir, "model_selection.png"),
                                             title=f"Model selection: {n_models} models, {n_tasks} tasks")
    metrics = {keys.analysis_key("model_selection", r.method, "spearman_mean"): r.spearman_mean
               for r in table.itertuples()}
    _log_analysis(tcfg, root, "model selection", f"model_selection-{os.path.basename(out_dir)}", "", metrics, out_dir)
    print(summary)
    print(f"\nwritten: {out_dir}")
    return files


def warmup_note(uri: str, run_id: str, last_step: float, fit_until: float) -> str:
    """Whether the fitted early window lies past the run's learning-rate warm-up (pretrain.warmup_frac of its steps,
    as the train run logged it): a fit that ends inside the warm-up extrapolates the warm-up, not the run."""
    frac = query.run_params(uri, run_id).get("pretrain.warmup_frac")
    if frac is None:
        return "learning-rate warm-up: not logged by this run (a run of another loop); check it ends before the fit window"
    warm = float(frac) * last_step
    where = ("past it: the forecast is judged on its merits" if warm < fit_until else
             "INSIDE it: the fit sees the warm-up, not the run; lower pretrain.warmup_frac or train longer")
    return (f"learning-rate warm-up: {warm:.0f} steps (pretrain.warmup_frac={float(frac):g}); the fit window ends at "
            f"step {fit_until:.0f}, {where}")


def analyze_forecast(tcfg: TrackingConfig, root: str, out_dir: str, acfg: AnalysisConfig) -> dict:
    """Setting 3 on one run's in-loop checkpoints: RMSE of proxy, ce and compute-only forecasts."""
    from analysis.forecast import accuracy_bounds, forecast_report
    from analysis.history import latest_run_with, train_history

    if acfg.primary_proxy == acfg.ce_proxy:
        raise ValueError(f"analysis.primary_proxy and analysis.ce_proxy are both {acfg.primary_proxy!r}: the forecast "
                         "compares a proxy with cross-entropy; set analysis.primary_proxy to another proxy")
    uri = query.configure_reads(tcfg, root)
    columns = {str(acfg.primary_proxy): keys.PROXY + "/" + acfg.primary_proxy,
               str(acfg.ce_proxy): keys.PROXY + "/" + acfg.ce_proxy, "accuracy": acfg.accuracy_metric}
    run_id = acfg.train_run_id or latest_run_with(uri, tcfg.experiment, list(columns.values()))
    hist = train_history(uri, run_id, columns)
    until = acfg.fit_fraction * float(hist["step"].max()) if acfg.fit_fraction > 0 else None
    bounds = accuracy_bounds(hist["accuracy"], list(acfg.accuracy_bounds))
    table, preds = forecast_report(hist, str(acfg.primary_proxy), str(acfg.ce_proxy), "accuracy",
                                   acfg.horizon_multiple, until, bounds)
    if table["rmse"].isna().all():
        raise ValueError(f"forecast: every fit failed on run {run_id}: {table['note'].iloc[0]}")
    os.makedirs(out_dir, exist_ok=True)
    files = {"forecast": write_csv(table, os.path.join(out_dir, "forecast.csv")),
             "predictions": write_csv(preds, os.path.join(out_dir, "forecast_predictions.csv")),
             "history": write_csv(hist, os.path.join(out_dir, "history.csv"))}
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.max_colwidth", 60):
        summary = (f"Training-time forecast (setting 3) of {acfg.accuracy_metric} for train run {run_id}: "
                   f"{len(hist)} checkpoints, fitted on steps <= {table['fit_until_step'].iloc[0]:.0f}, "
                   f"forecast to {acfg.horizon_multiple:g}x that compute\n"
                   + table.drop(columns=["fit_until_step"]).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
        summary += "\n" + warmup_note(uri, run_id, float(hist["step"].max()), float(table["fit_until_step"].iloc[0]))
    with open(os.path.join(out_dir, "summary.txt"), "w") as f:
        f.write(summary + "\n")
    if acfg.plots:
        from analysis.plots import plot_forecast

        files["plot"] = plot_forecast(hist, preds, "accuracy", float(table["fit_until_step"].iloc[0]),
                                      os.path.join(out_dir, "forecast.png"),
                                      title=f"Forecast of {acfg.accuracy_metric} (run {run_id[:8]})",
                                      ylabel=acfg.accuracy_metric)
    metrics = {keys.analysis_key("forecast", "rmse", r.method.split(" (")[0]): r.rmse for r in table.itertuples()}
    _log_analysis(tcfg, root, "forecast", f"forecast-{os.path.basename(out_dir)}", "", metrics, out_dir)
    print(summary)
    print(f"\nwritten: {out_dir}")
    return files
