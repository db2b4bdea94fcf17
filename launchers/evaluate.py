"""proxy-eval: direct evaluation of one model through lm-evaluation-harness."""
from __future__ import annotations

import json

import hydra
from omegaconf import DictConfig

from launchers.app import CONF_DIR, run_app, to_job
from proxy_exp.config import EvaluateJobConfig


def _main(cfg: DictConfig) -> float:
    job = to_job(cfg, EvaluateJobConfig)
    if job.dry_run:
        print(json.dumps({"model": job.model.path, "tasks": job.evaluate.tasks, "limit": job.evaluate.limit},
                         indent=2))
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
