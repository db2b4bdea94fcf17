"""proxy-score: the 80 proxies of one model (any local HF causal LM) over expert traces."""
from __future__ import annotations

import json

import hydra
from omegaconf import DictConfig

from launchers.app import CONF_DIR, run_app, to_job
from proxy_exp.config import ScoreJobConfig


def _main(cfg: DictConfig) -> float:
    job = to_job(cfg, ScoreJobConfig)
    if job.dry_run:
        from proxy_exp.data.traces import load_traces

        traces = load_traces(job.traces)
        print(json.dumps({"model": job.model.path, "traces": len(traces),
                          "tasks": sorted({t["task"] for t in traces}), "window": job.score.window,
                          "solution_chars": sum(len(t["solution"]) for t in traces)}, indent=2))
        return 0.0
    from proxy_exp.score.job import score

    r = score(job)
    print(f"score {r.unit_id}: {r.n_traces} traces, {r.tokens_scored:,} tokens scored, {r.flops:.3g} FLOPs")
    for k in ("proxy/ce/uniform", "proxy/top1/uniform", "proxy/top5/freq", "proxy/rank/uniform"):
        print(f"  {k:24s} {r.proxies.get(k, float('nan')):.4f}")
    return r.proxies.get("proxy/ce/uniform", 0.0)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="score")
def main(cfg: DictConfig) -> float:
    return run_app(_main, cfg)


if __name__ == "__main__":
    main()
