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
from proxy_exp.config import AnalysisConfig, AnalyzeJobConfig, TrackingConfig, resolve_root


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
    report = campaign_decisions(frame, primary_proxy=acfg.primary_proxy, ce_proxy=acfg.ce_proxy,
                                truth_metric=truth_metric)
    out = os.path.join(out_dir, "analysis")
    os.makedirs(out, exist_ok=True)
    files = {}
    for name, df in (("ranking", report.table), ("methods", report.methods), ("frontier", report.frontier)):
        files[name] = os.path.join(out, f"{name}.csv")
        df.to_csv(files[name], index=False)
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
    path = os.path.join(out_dir, "decision_accuracy.csv")
    tmp = path + ".tmp"
    table.to_csv(tmp, index=False)
    os.replace(tmp, path)
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
    if job.analysis.kind != "campaign":
        raise ValueError(f"analysis.kind={job.analysis.kind!r}: use campaign or datadecide")
    root = resolve_root(job.paths)
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
