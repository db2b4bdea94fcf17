"""proxy-analyze: read a campaign back from MLflow, turn proxies into decisions, plot, log the analysis.

Everything comes from MLflow (the parent run's plan artifact and the unit runs), never from a
campaign's in-memory state.
"""
from __future__ import annotations

import json
import os

import hydra
from omegaconf import DictConfig

from launchers.app import CONF_DIR, run_app, to_job
from proxy_exp import tracking
from proxy_exp.config import ANALYSIS_KINDS, AnalysisConfig, AnalyzeJobConfig, TrackingConfig, resolve_root


def _checkpoint_frame(uri: str, frame):
    """In-loop proxies of the campaign's proxy training runs (campaign.checkpoint_every), one row per run and
    step: corpus, size, seed, step, fraction (of the run's last step) and the 80 proxy/<s>/<w> values."""
    import pandas as pd
    from mlflow.tracking import MlflowClient

    from proxy_exp.config import STATISTICS, WEIGHTINGS, proxy_key

    keys = [proxy_key(s, w) for s in STATISTICS for w in WEIGHTINGS]
    trains = frame[(frame["kind"] == "train") & (frame["role"] == "proxy")]
    if trains.empty or keys[0] not in trains.columns:
        return None
    client = MlflowClient(uri)
    out = []
    for r in trains[trains[keys[0]].notna()].itertuples():
        last = max((m.step for m in client.get_metric_history(r.run_id, "train/loss")), default=0)
        if not last:
            continue
        per_step: dict[int, dict] = {}
        for key in keys:
            for m in client.get_metric_history(r.run_id, key):
                per_step.setdefault(int(m.step), {})[key] = m.value
        for step, vals in per_step.items():
            out.append({"corpus": r.corpus, "size": r.size, "seed": r.seed, "step": step, "fraction": step / last,
                        **vals})
    return pd.DataFrame(out) if out else None


def _write_csv(df, path: str) -> str:
    """Write ``df`` to ``path`` under a temporary name, then rename: never a partial CSV under the real name."""
    tmp = path + ".tmp"
    df.to_csv(tmp, index=False)
    os.replace(tmp, path)
    return path


def find_campaign_run(tcfg: TrackingConfig, root: str, name: str) -> str:
    """The latest parent run of the campaign called ``name``."""
    from mlflow.tracking import MlflowClient

    uri = tracking.configure(tcfg, root)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(tcfg.experiment)
    if exp is None:
        raise ValueError(f"no MLflow experiment {tcfg.experiment!r} at {uri}: run proxy-campaign first "
                         "(or set tracking.uri / paths.root to where it logged)")
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"], max_results=1,
                              filter_string=f"tags.`{tracking.TAG}kind` = 'campaign' and "
                                            f"tags.`{tracking.TAG}campaign` = '{name}'")
    if not runs:
        raise ValueError(f"no campaign named {name!r} in experiment {tcfg.experiment!r} at {uri}")
    return runs[0].info.run_id


def analyze_campaign(tcfg: TrackingConfig, root: str, parent_run_id: str, out_dir: str, acfg: AnalysisConfig,
                     truth_metric: str = "logprob_per_char"):
    """Decisions of every method against the target ranking; tables, plots and an MLflow analyze run."""
    import mlflow

    from analysis.campaign_report import campaign_decisions
    from analysis.runs import campaign_frame, load_runs

    uri = tracking.configure(tcfg, root)
    plan_path = mlflow.artifacts.download_artifacts(run_id=parent_run_id, artifact_path="plan/units.json",
                                                    tracking_uri=uri)
    with open(plan_path) as f:
        planned = json.load(f)
    ids = {u["id"] for u in planned}
    runs = load_runs(uri, tcfg.experiment)
    frame = campaign_frame(runs, unit_ids=ids)
    missing = ids - set(frame["unit_id"]) if "unit_id" in frame else ids
    if missing:
        raise ValueError(f"{len(missing)} planned unit(s) have no finished MLflow run "
                         f"(e.g. {sorted(missing)[:3]}); rerun proxy-campaign to complete them")
    import pandas as pd

    per_trace = {}
    scored = frame[(frame["kind"] == "score") & (frame["role"] == "proxy")]
    for r in scored.itertuples():
        try:  # per-trace proxies for CIs over traces; a run without them gets CIs over seeds only
            path = mlflow.artifacts.download_artifacts(run_id=r.run_id, artifact_path="scores/per_trace.parquet",
                                                       tracking_uri=uri)
        except Exception:  # noqa: BLE001 (MLflow raises several types for a missing artifact)
            continue
        per_trace[(r.corpus, r.size, r.seed)] = pd.read_parquet(path)
    report = campaign_decisions(frame, primary_proxy=acfg.primary_proxy, ce_proxy=acfg.ce_proxy,
                                truth_metric=truth_metric, per_trace=per_trace, n_boot=acfg.n_boot,
                                boot_seed=acfg.seed, checkpoints=_checkpoint_frame(uri, frame))
    out = os.path.join(out_dir, "analysis")
    os.makedirs(out, exist_ok=True)
    files = {}
    for name, df in (("ranking", report.table), ("methods", report.methods), ("frontier", report.frontier)):
        files[name] = _write_csv(df, os.path.join(out, f"{name}.csv"))
    summary = report.summary_text()
    files["summary"] = os.path.join(out, "summary.txt")
    with open(files["summary"], "w") as f:
        f.write(summary + "\n")
    if acfg.plots:
        from analysis.plots import plot_frontier, plot_ranking

        files["frontier_png"] = plot_frontier(report.methods, report.frontier, os.path.join(out, "frontier.png"),
                                              title="compute vs decision accuracy")
        files["ranking_png"] = plot_ranking(report.table, os.path.join(out, "ranking.png"))
    campaign = planned[0].get("campaign", "") if planned else ""
    with tracking.Run(tcfg, root, "analysis", tracking.unit_tags("analyze", f"analyze-{parent_run_id[:12]}", campaign),
                      parent_run_id) as run:
        prim = report.methods
        metrics = {}
        for _, row in prim.iterrows():
            key = f"decision_accuracy/{row['method']}".replace(" ", "_").replace("@", "at")
            metrics[key] = float(row["decision_accuracy"])
        run.log_metrics(metrics)
        run.log_artifacts(out, "analysis")
    parent = tracking.Run(tcfg, root, "campaign", run_id=parent_run_id, reopen=False)
    parent.log_artifacts(out, "analysis")
    report.files = files  # type: ignore[attr-defined]
    return report


def analyze_datadecide(out_dir: str, plots: bool = True) -> str:
    """DataDecide's recipes ranked at each size below 1B by the seed mean of its likelihood metric, against the
    1B ranking by three-seed mean accuracy: decision_accuracy.csv and the frontier over sizes."""
    import pandas as pd

    from analysis.datadecide import datadecide_decision_accuracy
    from analysis.pareto import pareto_frontier

    table = datadecide_decision_accuracy()
    os.makedirs(out_dir, exist_ok=True)
    path = _write_csv(table, os.path.join(out_dir, "decision_accuracy.csv"))
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


def _log_analysis(tcfg: TrackingConfig, root: str, name: str, kind: str, metrics: dict, out: str) -> str:
    with tracking.Run(tcfg, root, name, tracking.unit_tags("analyze", f"{kind}-{os.path.basename(out)}", "")) as run:
        run.log_metrics({k: float(v) for k, v in metrics.items() if v == v})
        run.log_artifacts(out, "analysis")
        return run.run_id


def analyze_model_selection(tcfg: TrackingConfig, root: str, out_dir: str, acfg: AnalysisConfig,
                            progress: bool = True) -> dict:
    """Setting 1 over every scored and evaluated model in the experiment: tables, plot, an MLflow analyze run."""
    import pandas as pd

    from analysis.population import model_selection_report, per_model_table, population_from_runs
    from analysis.runs import load_runs

    uri = tracking.configure(tcfg, root)
    runs = load_runs(uri, tcfg.experiment, acfg.filter)
    pop = population_from_runs(runs, acfg.truth_metric, acfg.task_map, acfg.truth_csv or None, acfg.traces,
                               acfg.evaluate_limit, list(acfg.trace_tasks))
    n_models, n_tasks = pop.truth["model"].nunique(), pop.truth["task"].nunique()
    table, splits = model_selection_report(pop.proxies, pop.truth, k=acfg.k, n_held_out=acfg.n_held_out,
                                           n_boot=acfg.n_boot, seed=acfg.seed, progress=progress)
    models = per_model_table(pop, (acfg.ce_proxy, acfg.primary_proxy))
    os.makedirs(out_dir, exist_ok=True)
    files = {"model_selection": _write_csv(table, os.path.join(out_dir, "model_selection.csv")),
             "cv_splits": _write_csv(splits, os.path.join(out_dir, "cv_splits.csv")),
             "population": _write_csv(models, os.path.join(out_dir, "population.csv"))}
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
    metrics = {f"model_selection/{r.method.replace(' ', '_')}/spearman_mean": r.spearman_mean
               for r in table.itertuples()}
    _log_analysis(tcfg, root, "model selection", "model_selection", metrics, out_dir)
    print(summary)
    print(f"\nwritten: {out_dir}")
    return files


def _train_history(tcfg: TrackingConfig, root: str, acfg: AnalysisConfig):
    """The in-loop history of one train run: step, the proxy, ce and accuracy columns."""
    import pandas as pd
    from mlflow.tracking import MlflowClient

    uri = tracking.configure(tcfg, root)
    client = MlflowClient(uri)
    keys = {"proxy": f"proxy/{acfg.primary_proxy}", "ce": f"proxy/{acfg.ce_proxy}", "accuracy": acfg.accuracy_metric}
    run_id = acfg.train_run_id
    if not run_id:
        exp = client.get_experiment_by_name(tcfg.experiment)
        if exp is None:
            raise ValueError(f"no MLflow experiment {tcfg.experiment!r} at {uri}; set tracking.experiment")
        for run in client.search_runs([exp.experiment_id], filter_string=f"tags.`{tracking.TAG}kind` = 'train'",
                                      order_by=["attributes.start_time DESC"], max_results=200):
            if all(k in run.data.metrics for k in keys.values()):
                run_id = run.info.run_id
                break
        if not run_id:
            raise ValueError(f"no train run in experiment {tcfg.experiment!r} logs {sorted(keys.values())}: train "
                             "with in_loop.score_every=N in_loop.eval_every=N (same N), or set analysis.train_run_id")
    frames = []
    for col, key in keys.items():
        hist = client.get_metric_history(run_id, key)
        if not hist:
            raise ValueError(f"train run {run_id} has no metric {key!r}; check analysis.primary_proxy / "
                             "analysis.accuracy_metric and the run's in_loop settings")
        frames.append(pd.DataFrame({"step": [m.step for m in hist], col: [m.value for m in hist]})
                      .drop_duplicates("step", keep="last").set_index("step"))
    hist = pd.concat(frames, axis=1, join="inner").reset_index()
    if "train/loss" in client.get_run(run_id).data.metrics:
        loss = client.get_metric_history(run_id, "train/loss")
        hist = hist.merge(pd.DataFrame({"step": [m.step for m in loss], "train_loss": [m.value for m in loss]})
                          .drop_duplicates("step", keep="last"), on="step", how="left")
    return run_id, hist.sort_values("step").reset_index(drop=True)


def analyze_forecast(tcfg: TrackingConfig, root: str, out_dir: str, acfg: AnalysisConfig) -> dict:
    """Setting 3 on one run's in-loop checkpoints: RMSE of proxy, ce and compute-only forecasts."""
    import pandas as pd

    from analysis.forecast import forecast_report

    run_id, hist = _train_history(tcfg, root, acfg)
    until = acfg.fit_fraction * float(hist["step"].max()) if acfg.fit_fraction > 0 else None
    if acfg.accuracy_bounds:
        if len(acfg.accuracy_bounds) != 2 or not acfg.accuracy_bounds[0] < acfg.accuracy_bounds[1]:
            raise ValueError(f"analysis.accuracy_bounds={list(acfg.accuracy_bounds)}: give [lo, hi] with lo < hi, "
                             "or [] for automatic")
        bounds = (float(acfg.accuracy_bounds[0]), float(acfg.accuracy_bounds[1]))
    else:
        bounds = (0.0, 1.0) if hist["accuracy"].between(0, 1).all() else (float("-inf"), float("inf"))
    table, preds = forecast_report(hist, "proxy", "ce", "accuracy", acfg.horizon_multiple, until, bounds)
    if table["rmse"].isna().all():
        raise ValueError(f"forecast: every fit failed on run {run_id}: {table['note'].iloc[0]}")
    for df in (table, preds):  # method names: the proxies behind forecast_report's proxy / ce columns
        df["method"] = df["method"].str.replace("proxy", acfg.primary_proxy, regex=False).str.replace(
            "from ce ", f"from {acfg.ce_proxy} ", regex=False)
    os.makedirs(out_dir, exist_ok=True)
    files = {"forecast": _write_csv(table, os.path.join(out_dir, "forecast.csv")),
             "predictions": _write_csv(preds, os.path.join(out_dir, "forecast_predictions.csv")),
             "history": _write_csv(hist, os.path.join(out_dir, "history.csv"))}
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.max_colwidth", 60):
        summary = (f"Training-time forecast (setting 3) of {acfg.accuracy_metric} for train run {run_id}: "
                   f"{len(hist)} checkpoints, fitted on steps <= {table['fit_until_step'].iloc[0]:.0f}, "
                   f"forecast to {acfg.horizon_multiple:g}x that compute\n"
                   + table.drop(columns=["fit_until_step"]).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    with open(os.path.join(out_dir, "summary.txt"), "w") as f:
        f.write(summary + "\n")
    if acfg.plots:
        from analysis.plots import plot_forecast

        files["plot"] = plot_forecast(hist, preds, "accuracy", float(table["fit_until_step"].iloc[0]),
                                      os.path.join(out_dir, "forecast.png"),
                                      title=f"Forecast of {acfg.accuracy_metric} (run {run_id[:8]})",
                                      ylabel=acfg.accuracy_metric)
    metrics = {f"forecast/rmse/{r.method.split(' (')[0].replace(' ', '_')}": r.rmse for r in table.itertuples()}
    _log_analysis(tcfg, root, "forecast", "forecast", metrics, out_dir)
    print(summary)
    print(f"\nwritten: {out_dir}")
    return files


def _output_dir(job: AnalyzeJobConfig) -> str:
    if job.output_dir:
        return job.output_dir
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get().runtime.output_dir


def _main(cfg: DictConfig) -> int:
    job = to_job(cfg, AnalyzeJobConfig)
    if job.analysis.kind == "datadecide":
        analyze_datadecide(_output_dir(job), job.analysis.plots)
        return 0
    if job.analysis.kind not in ANALYSIS_KINDS:
        raise ValueError(f"analysis.kind={job.analysis.kind!r}: use one of {list(ANALYSIS_KINDS)}")
    root = resolve_root(job.paths)
    if job.analysis.kind in ("model_selection", "forecast"):
        out_dir = _output_dir(job)
        if job.dry_run:
            print(json.dumps({"kind": job.analysis.kind, "experiment": job.tracking.experiment,
                              "output_dir": out_dir}, indent=2))
            return 0
        if job.analysis.kind == "model_selection":
            analyze_model_selection(job.tracking, root, out_dir, job.analysis)
        else:
            analyze_forecast(job.tracking, root, out_dir, job.analysis)
        return 0
    run_id = job.campaign_run_id or find_campaign_run(job.tracking, root, job.campaign_name or "mini")
    out_dir = job.output_dir or os.path.join(root, "analysis", run_id[:12])
    if job.dry_run:
        print(json.dumps({"campaign_run_id": run_id, "output_dir": out_dir}, indent=2))
        return 0
    report = analyze_campaign(job.tracking, root, run_id, out_dir, job.analysis)
    print(report.summary_text())
    print(f"\nanalysis written to {os.path.join(out_dir, 'analysis')}")
    return 0


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="analyze")
def main(cfg: DictConfig) -> int:
    return run_app(_main, cfg)


if __name__ == "__main__":
    main()
