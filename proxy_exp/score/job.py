"""The score job: a plain, picklable function of its config (``proxy-score``, a campaign's scoring unit).

It reads a model from a local folder, scores the trace set (:func:`proxy_exp.score.pipeline.score_model`), writes
the per-token, per-trace and per-task tables under ``units/<unit_id>/`` (temporary name, then rename), logs one
MLflow run, and writes the completion marker last.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

import torch

from proxy_exp import compute, units
from proxy_exp.config import ScoreJobConfig, resolve_root
from proxy_exp.models import count_params, load_model, model_ref, resolve_model, train_flops_of
from proxy_exp.tracking import Run, keys


@dataclass
class ScoreResult:
    unit_id: str
    proxies: dict[str, float]
    tokens_scored: int
    tokens_forward: int
    n_traces: int
    flops: float
    n_params: int
    run_id: str
    seconds: float
    tokens_path: str = ""


def _write_parquet(df, path: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    df.to_parquet(tmp, index=False)
    os.replace(tmp, path)


def score(cfg: ScoreJobConfig, progress: bool = True) -> ScoreResult:
    """Score a model's next-token distribution over the solution tokens of expert traces (80 proxies)."""
    from proxy_exp.data.traces import load_traces
    from proxy_exp.score.pipeline import score_model

    t0 = time.time()
    root = resolve_root(cfg.paths)
    ref = model_ref(cfg.model)
    uid = cfg.unit_id or units.score_unit_id(ref, cfg.traces, cfg.score)
    done = units.read_done(root, uid)
    if done is not None:
        return ScoreResult(**done)
    torch.set_num_threads(max(1, cfg.score.num_threads))
    udir = units.unit_dir(root, uid)
    os.makedirs(udir, exist_ok=True)
    traces = load_traces(cfg.traces)
    cfg.model = resolve_model(cfg.model, os.path.join(root, "cache"))
    model, tok = load_model(cfg.model)
    n_params = count_params(model).total
    tags = keys.unit_tags("score", uid, cfg.campaign, **cfg.tags)
    with Run(cfg.tracking, root, cfg.tags.get("name", f"score {os.path.basename(str(cfg.model.path))}"), tags,
             cfg.parent_run_id) as run:
        run.log_params(keys.flat_params(cfg.score, "score") | keys.flat_params(cfg.traces, "traces")
                       | {"model.path": cfg.model.path, "model.ref": ref, keys.N_PARAMS: n_params,
                          "n_traces": len(traces)})
        scores = score_model(model, tok, traces, cfg.score, progress=progress)
        agg = scores.aggregate
        paths = {}
        for name, df in (("tokens", scores.tokens), ("per_trace", agg.per_trace),
                         ("per_task", agg.per_task.reset_index())):
            paths[name] = os.path.join(udir, f"{name}.parquet")
            _write_parquet(df, paths[name])
        flops = compute.forward_flops(n_params, scores.tokens_forward)
        metrics = dict(agg.overall)
        for task, row in agg.per_task.iterrows():
            metrics.update({keys.proxy_task_key(task, *name.split("/")): float(v) for name, v in row.items()})
        metrics.update({keys.FLOPS_SCORE: flops, keys.FLOPS_TRAIN: train_flops_of(cfg.model.path, cfg.train_flops),
                        keys.SCORE_TOKENS_SCORED: len(scores.tokens), keys.SCORE_TOKENS_FORWARD: scores.tokens_forward,
                        keys.SCORE_SECONDS: time.time() - t0})
        run.log_metrics({k: v for k, v in metrics.items() if v == v})  # NaN-free
        for p in paths.values():
            run.log_artifact(p, "scores")
        result = ScoreResult(uid, scores.proxies, len(scores.tokens), scores.tokens_forward, scores.n_traces, flops,
                             n_params, run.run_id, time.time() - t0, paths["tokens"])
    units.write_done(root, uid, result)
    return result
