"""The score and evaluate jobs: plain, picklable functions of their config.

Each reads a model from a local folder, computes, writes its outputs under ``units/<unit_id>/``
(temporary name, then rename), logs one MLflow run, and writes the completion marker last.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field

import torch

from proxy_exp import tracking, units
from proxy_exp.config import EvalJobConfig, ScoreJobConfig, flat_params, proxy_key, resolve_root
from proxy_exp.models import count_params, load_model, model_ref, resolve_model


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


@dataclass
class EvalResult:
    unit_id: str
    mean: dict[str, float]
    per_task: dict[str, dict[str, float]] = field(default_factory=dict)
    tokens_forward: int = 0
    flops: float = 0.0
    n_params: int = 0
    run_id: str = ""
    seconds: float = 0.0


def _train_flops(cfg) -> float:
    """The compute that produced the model: from the job config, or the record proxy-train left beside it."""
    if cfg.train_flops:
        return float(cfg.train_flops)
    meta = os.path.join(str(cfg.model.path), "proxy_exp.json")
    if os.path.exists(meta):
        with open(meta) as f:
            return float(json.load(f).get("train_flops", 0.0))
    return 0.0


def _write_parquet(df, path: str) -> None:
    tmp = path + ".tmp"
    df.to_parquet(tmp, index=False)
    os.replace(tmp, path)


def score(cfg: ScoreJobConfig, progress: bool = True) -> ScoreResult:
    """Score a model's next-token distribution over the solution tokens of expert traces (80 proxies)."""
    from proxy_exp.data.traces import load_traces
    from proxy_exp.score.aggregate import aggregate
    from proxy_exp.score.scorer import score_traces, token_frequencies

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
    tags = tracking.unit_tags("score", uid, cfg.campaign, **cfg.tags)
    with tracking.Run(cfg.tracking, root, cfg.tags.get("name", f"score {os.path.basename(str(cfg.model.path))}"),
                      tags, cfg.parent_run_id) as run:
        run.log_params(flat_params(cfg.score, "score") | flat_params(cfg.traces, "traces")
                       | {"model.path": cfg.model.path, "model.ref": ref, "n_params": n_params, "n_traces": len(traces)})
        out = score_traces(model, tok, traces, cfg.score, progress=progress)
        if cfg.score.freq_source != "traces":
            raise ValueError(f"score.freq_source={cfg.score.freq_source!r} is not supported yet; use 'traces' "
                             "(token frequencies counted over the scored solution tokens)")
        freq = token_frequencies(out.tokens["token_id"].to_numpy(), len(tok), cfg.score.freq_smoothing)
        agg = aggregate(out.tokens, cfg.score, freq)
        paths = {}
        for name, df in (("tokens", out.tokens), ("per_trace", agg.per_trace), ("per_task", agg.per_task.reset_index())):
            paths[name] = os.path.join(udir, f"{name}.parquet")
            _write_parquet(df, paths[name])
        flops = 2.0 * n_params * out.tokens_forward
        metrics = dict(agg.overall)
        for task, row in agg.per_task.iterrows():
            metrics.update({f"proxy_task/{task}/{k}": float(v) for k, v in row.items() if k not in ("task",)})
        metrics.update({"flops/score": flops, "flops/train": _train_flops(cfg), "score/tokens_scored": len(out.tokens),
                        "score/tokens_forward": out.tokens_forward, "score/seconds": time.time() - t0})
        run.log_metrics({k: v for k, v in metrics.items() if v == v})  # NaN-free
        for p in paths.values():
            run.log_artifact(p, "scores")
        result = ScoreResult(uid, {k: float(v) for k, v in agg.overall.items()}, len(out.tokens), out.tokens_forward,
                             out.n_traces, flops, n_params, run.run_id, time.time() - t0, paths["tokens"])
    units.write_done(root, uid, result)
    return result


def evaluate(cfg: EvalJobConfig, progress: bool = True) -> EvalResult:
    """Direct evaluation of a model through lm-evaluation-harness (the ground truth for proxies)."""
    from proxy_exp.evaluate.harness import evaluate_model

    t0 = time.time()
    root = resolve_root(cfg.paths)
    ref = model_ref(cfg.model)
    uid = cfg.unit_id or units.eval_unit_id(ref, cfg.evaluate)
    done = units.read_done(root, uid)
    if done is not None:
        return EvalResult(**done)
    cfg.model = resolve_model(cfg.model, os.path.join(root, "cache"))
    if not cfg.model.path or not os.path.isdir(cfg.model.path):
        raise FileNotFoundError(f"model.path={cfg.model.path!r} is not a model folder; give a local HF model folder")
    tags = tracking.unit_tags("evaluate", uid, cfg.campaign, **cfg.tags)
    with tracking.Run(cfg.tracking, root, cfg.tags.get("name", f"evaluate {os.path.basename(cfg.model.path)}"),
                      tags, cfg.parent_run_id) as run:
        run.log_params(flat_params(cfg.evaluate, "evaluate") | {"model.path": cfg.model.path, "model.ref": ref})
        if cfg.model.gguf_file:  # a GGUF checkpoint: lm-eval gets the de-quantised model in memory
            from proxy_exp.evaluate.harness import evaluate_in_memory

            lm_model, lm_tok = load_model(cfg.model)
            out = evaluate_in_memory(lm_model, lm_tok, cfg.evaluate, os.path.join(root, "cache"))
        else:
            out = evaluate_model(cfg.model.path, cfg.evaluate, os.path.join(root, "cache"))
        metrics = {f"eval/mean/{k}": v for k, v in out.mean.items()}
        for task, ms in out.per_task.items():
            metrics.update({f"eval/{task}/{k}": v for k, v in ms.items()})
        metrics.update({"flops/eval": out.flops, "flops/train": _train_flops(cfg), "eval/seconds": time.time() - t0,
                        "eval/tokens_forward": out.tokens_forward})
        run.log_metrics({k: float(v) for k, v in metrics.items() if v == v})
        result = EvalResult(uid, dict(out.mean), {t: dict(m) for t, m in out.per_task.items()}, out.tokens_forward,
                            out.flops, out.n_params, run.run_id, time.time() - t0)
    units.write_done(root, uid, result)
    return result


def result_dict(r) -> dict:
    return asdict(r)
