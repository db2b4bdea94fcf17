"""proxy-eval: direct evaluation of one model through lm-evaluation-harness (`dry_run=true`: the tasks resolved
offline, printed as JSON)."""
from __future__ import annotations

import json

import hydra
from omegaconf import DictConfig

from launchers.app import CONF_DIR, run_app, to_job
from proxy_exp.config import EvaluateJobConfig


def _main(cfg: DictConfig) -> float:
    job = to_job(cfg, EvaluateJobConfig)
    if job.dry_run:
        # The tasks resolved offline (embedded, include_path, lm-eval's registry): each task's config as the run
        # would use it, where its data come from, and the metrics it will report. No data read, no model loaded.
        from proxy_exp.evaluate.registry import describe

        print(json.dumps({"model": job.model.path, "limit": job.evaluate.limit, **describe(job.evaluate)}, indent=1))
        return 0.0
    from proxy_exp.evaluate.job import evaluate

    r = evaluate(job)
    print(f"evaluate {r.unit_id}: " + ", ".join(f"{k}={v:.4f}" for k, v in r.mean.items())
          + f", {r.flops:.3g} FLOPs")
    return r.mean.get(job.evaluate.primary_metric, 0.0)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="evaluate")
def main(cfg: DictConfig) -> float:
    return run_app(_main, cfg)


if __name__ == "__main__":
    main()
