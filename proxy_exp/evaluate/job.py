"""The evaluate job: direct evaluation of one model through lm-evaluation-harness (``proxy-eval``, a campaign's
evaluate unit), a plain picklable function of its config; one MLflow run, the completion marker last."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from proxy_exp import units
from proxy_exp.config import EvaluateJobConfig, resolve_root
from proxy_exp.models import load_model, model_ref, resolve_model, train_flops_of
from proxy_exp.tracking import Run, keys


@dataclass
class EvaluateResult:
    unit_id: str
    mean: dict[str, float]
    per_task: dict[str, dict[str, float]] = field(default_factory=dict)
    tokens_forward: int = 0
    flops: float = 0.0
    n_params: int = 0
    run_id: str = ""
    seconds: float = 0.0


def evaluate(cfg: EvaluateJobConfig, progress: bool = True) -> EvaluateResult:
    """Direct evaluation of a model through lm-evaluation-harness (the ground truth for proxies)."""
    from proxy_exp.evaluate.harness import evaluate_in_memory, evaluate_model

    t0 = time.time()
    root = resolve_root(cfg.paths)
    ref = model_ref(cfg.model)
    uid = cfg.unit_id or units.eval_unit_id(ref, cfg.evaluate)
    done = units.read_done(root, uid)
    if done is not None:
        return EvaluateResult(**done)
    cfg.model = resolve_model(cfg.model, os.path.join(root, "cache"))
    if not cfg.model.path or not os.path.isdir(cfg.model.path):
        raise FileNotFoundError(f"model.path={cfg.model.path!r} is not a model folder; give a local HF model folder")
    tags = keys.unit_tags("evaluate", uid, cfg.campaign, **cfg.tags)
    with Run(cfg.tracking, root, cfg.tags.get("name", f"evaluate {os.path.basename(cfg.model.path)}"), tags,
             cfg.parent_run_id) as run:
        run.log_params(keys.flat_params(cfg.evaluate, "evaluate") | {"model.path": cfg.model.path, "model.ref": ref})
        if cfg.model.gguf_file:  # a GGUF checkpoint: lm-eval gets the de-quantised model in memory
            lm_model, lm_tok = load_model(cfg.model)
            out = evaluate_in_memory(lm_model, lm_tok, cfg.evaluate, os.path.join(root, "cache"))
        else:
            out = evaluate_model(cfg.model.path, cfg.evaluate, os.path.join(root, "cache"))
        metrics = {keys.eval_key(keys.MEAN, k): v for k, v in out.mean.items()}
        for task, ms in out.per_task.items():
            metrics.update({keys.eval_key(task, k): v for k, v in ms.items()})
        metrics.update({keys.FLOPS_EVAL: out.flops, keys.FLOPS_TRAIN: train_flops_of(cfg.model.path, cfg.train_flops),
                        keys.EVAL_SECONDS: time.time() - t0, keys.EVAL_TOKENS_FORWARD: out.tokens_forward})
        run.log_metrics({k: float(v) for k, v in metrics.items() if v == v})
        result = EvaluateResult(uid, dict(out.mean), {t: dict(m) for t, m in out.per_task.items()},
                                out.tokens_forward, out.flops, out.n_params, run.run_id, time.time() - t0)
    units.write_done(root, uid, result)
    return result
