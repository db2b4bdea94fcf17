"""proxy-analyze: one of the analyses of analysis/reports.py, chosen by ``analysis.kind``.

campaign (default): a campaign's decisions (``campaign_name`` or ``campaign_run_id``); datadecide: DataDecide's
published results; model_selection: setting 1 over the experiment's scored and evaluated models; forecast:
setting 3 on one training run's in-loop history. ``dry_run=true`` prints what would be read and written.
"""
from __future__ import annotations

import json
import os

import hydra
from omegaconf import DictConfig

from launchers.app import CONF_DIR, check_tie_rule, run_app, to_job
from proxy_exp.config import AnalysisKind, AnalyzeJobConfig, resolve_root


def _output_dir(job: AnalyzeJobConfig) -> str:
    if job.output_dir:
        return job.output_dir
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get().runtime.output_dir


def _main(cfg: DictConfig) -> int:
    from analysis import reports

    job = to_job(cfg, AnalyzeJobConfig)
    check_tie_rule(job.analysis)
    kind = job.analysis.kind
    if kind == AnalysisKind.datadecide:
        reports.analyze_datadecide(_output_dir(job), job.analysis.plots, job.analysis.ties)
        return 0
    root = resolve_root(job.paths)
    if kind in (AnalysisKind.model_selection, AnalysisKind.forecast):
        out_dir = _output_dir(job)
        if job.dry_run:
            print(json.dumps({"kind": kind, "experiment": job.tracking.experiment, "output_dir": out_dir}, indent=2))
        elif kind == AnalysisKind.model_selection:
            reports.analyze_model_selection(job.tracking, root, out_dir, job.analysis)
        else:
            reports.analyze_forecast(job.tracking, root, out_dir, job.analysis)
        return 0
    from proxy_exp.tracking import query

    run_id = job.campaign_run_id or query.find_campaign_run(query.configure_reads(job.tracking, root),
                                                            job.tracking.experiment, job.campaign_name or "mini")
    out_dir = job.output_dir or os.path.join(root, "analysis", run_id[:12])
    if job.dry_run:
        print(json.dumps({"campaign_run_id": run_id, "output_dir": out_dir}, indent=2))
        return 0
    report = reports.analyze_campaign(job.tracking, root, run_id, out_dir, job.analysis)
    print(report.summary_text())
    print(f"\nanalysis written to {os.path.join(out_dir, 'analysis')}")
    return 0


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="analyze")
def main(cfg: DictConfig) -> int:
    return run_app(_main, cfg)


if __name__ == "__main__":
    main()
