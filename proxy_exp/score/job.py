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
from proxy_exp.devices import resolve_placement
from proxy_exp.files import tmp_name
from proxy_exp.models import check_model_folder, count_params, load_model, model_ref, resolve_model, train_flops_of
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
    tmp = tmp_name(path)
    df.to_parquet(tmp, index=False)
    os.replace(tmp, path)


def score(cfg: ScoreJobConfig, progress: bool = True) -> ScoreResult:
    """Score a model's next-token distribution over the solution tokens of expert traces (80 proxies); a unit that is
    done is read back, one that another process runs is waited for (its lock)."""
    root = resolve_root(cfg.paths)
    ref = model_ref(cfg.model)
    cfg.model = resolve_model(cfg.model, os.path.join(root, "cache"))
    uid = cfg.unit_id or units.score_unit_id(ref, cfg.traces, cfg.score, units.standalone_extra_of(cfg))
    done = units.read_done(root, uid)
    if done is not None:
        return ScoreResult(**done)
    with units.unit_lock(root, uid):
        done = units.read_done(root, uid)  # another process may have finished it while this one waited
        if done is not None:
            return ScoreResult(**done)
        return _score(cfg, root, ref, uid, progress)


def _score(cfg: ScoreJobConfig, root: str, ref: str, uid: str, progress: bool) -> ScoreResult:
    from proxy_exp.data.traces import load_traces
    from proxy_exp.score.pipeline import score_model

    t0 = time.time()
    cache = os.path.join(root, "cache")
    torch.set_num_threads(max(1, cfg.score.num_threads))
    udir = units.unit_dir(root, uid)
    traces = load_traces(cfg.traces)  # bad traces fail before anything is opened
    check_model_folder(cfg.model)  # so does a model folder without weights (before the run is opened)
    placement = resolve_placement(cfg.model, cache_dir=cache)
    step = max(cfg.step, 0)
    tags = keys.unit_tags("score", uid, cfg.campaign, **cfg.tags, **keys.checkpoint_tags(cfg.step, cfg.tokens_seen))
    # the run first: a tracking store that does not answer fails in seconds, before a large model is loaded
    with Run(cfg.tracking, root, cfg.tags.get("name", f"score {os.path.basename(str(cfg.model.path))}"), tags,
             cfg.parent_run_id, run_id=cfg.tracking.run_id, attach=bool(cfg.tracking.run_id)) as run:
        model, tok = load_model(cfg.model, placement=placement)
        n_params = count_params(model).total
        if not run.attached:  # a team's own run keeps its params; proxy-exp's settings stay in its unit's record
            run.log_params(keys.flat_params(cfg.score, "score") | keys.flat_params(cfg.traces, "traces")
                           | {"model.path": cfg.model.path, "model.ref": ref, keys.N_PARAMS: n_params,
                              "n_traces": len(traces)} | placement.params())
        scores = score_model(model, tok, traces, cfg.score, progress=progress)
        os.makedirs(udir, exist_ok=True)  # only now: a store or model that fails first leaves no unit folder behind
        if not run.attached:
            run.log_params({"score.kernel_resolved": scores.kernel, "score.batch_size_resolved": scores.batch_size})
        agg = scores.aggregate
        paths = {}
        for name, df in (("tokens", scores.tokens), ("per_trace", agg.per_trace),
                         ("per_task", agg.per_task.reset_index())):
            paths[name] = os.path.join(udir, f"{name}.parquet")
            _write_parquet(df, paths[name])
        flops = compute.forward_flops(n_params, scores.tokens_forward)
        metrics = dict(agg.overall) | agg.per_task_metrics()
        metrics.update({keys.FLOPS_SCORE: flops, keys.FLOPS_TRAIN: train_flops_of(cfg.model.path, cfg.train_flops),
                        keys.SCORE_TOKENS_SCORED: len(scores.tokens), keys.SCORE_TOKENS_FORWARD: scores.tokens_forward,
                        keys.SCORE_SECONDS: time.time() - t0})
        if cfg.tokens_seen >= 0:
            metrics[keys.TRAIN_TOKENS] = cfg.tokens_seen
        run.log_metrics({k: v for k, v in metrics.items() if v == v}, step=step)  # NaN-free
        for p in paths.values():
            run.log_artifact(p, "scores" if not run.attached else f"scores/step-{step}")
        result = ScoreResult(uid, scores.proxies, len(scores.tokens), scores.tokens_forward, scores.n_traces, flops,
                             n_params, run.run_id, time.time() - t0, paths["tokens"])
    units.write_done(root, uid, result)
    return result
