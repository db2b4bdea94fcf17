"""The evaluate job: direct evaluation of one model through lm-evaluation-harness (``proxy-eval``, a campaign's
evaluate unit), a plain picklable function of its config; one MLflow run, the completion marker last."""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field

from proxy_exp import units
from proxy_exp.config import EvaluateJobConfig, resolve_root
from proxy_exp.files import write_json
from proxy_exp.models import check_model_folder, load_model, model_ref, resolve_model, train_flops_of
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
    higher_is_better: dict[str, bool | None] = field(default_factory=dict)


def evaluate(cfg: EvaluateJobConfig, progress: bool = True) -> EvaluateResult:
    """Direct evaluation of a model through lm-evaluation-harness (the ground truth for proxies).

    The tasks are resolved and built with their data before the model is loaded and before any MLflow run exists, so
    a bad task name, a data set missing offline or an unreported ``evaluate.primary_metric`` fails with one line and
    leaves no run behind; the run is opened before the model loads (a tracking store that does not answer fails in
    seconds). The model is placed as ``model.device`` / ``model.dtype`` / ``model.device_map`` say (lm-eval's own
    ``parallelize`` for a sharded model). The run logs every metric (``eval/<task>/<metric>``,
    ``eval/mean/<metric>``), the direction of each (param ``eval.higher_is_better``, lm-eval's) and lm-eval's
    results, n-shot and task configs (artifact ``lm_eval/results.json``). A unit another process runs is waited
    for (its lock); ``step`` / ``tracking.run_id`` evaluate one checkpoint of another run, as for proxy-score."""
    root = resolve_root(cfg.paths)
    ref = model_ref(cfg.model)
    cfg.model = resolve_model(cfg.model, os.path.join(root, "cache"))
    uid = cfg.unit_id or units.eval_unit_id(ref, cfg.evaluate, units.standalone_extra_of(cfg))
    done = units.read_done(root, uid)
    if done is not None:
        return EvaluateResult(**done)
    with units.unit_lock(root, uid):
        done = units.read_done(root, uid)
        if done is not None:
            return EvaluateResult(**done)
        return _evaluate(cfg, root, ref, uid)



def _evaluate(cfg: EvaluateJobConfig, root: str, ref: str, uid: str) -> EvaluateResult:
    from proxy_exp.devices import resolve_placement
    from proxy_exp.evaluate.harness import evaluate_in_memory, evaluate_model, prepare
    from proxy_exp.evaluate.metrics import HIGHER_IS_BETTER_PARAM, dumps_directions

    t0 = time.time()
    check_model_folder(cfg.model)  # a folder with weights (or the GGUF file), before the run is opened
    cache = os.path.join(root, "cache")
    prepared = prepare(cfg.evaluate, cache)
    placement = resolve_placement(cfg.model, cache_dir=cache)
    step = max(cfg.step, 0)
    tags = keys.unit_tags("evaluate", uid, cfg.campaign, **cfg.tags, **keys.checkpoint_tags(cfg.step, cfg.tokens_seen))
    with Run(cfg.tracking, root, cfg.tags.get("name", f"evaluate {os.path.basename(cfg.model.path)}"), tags,
             cfg.parent_run_id, run_id=cfg.tracking.run_id, attach=bool(cfg.tracking.run_id)) as run:
        if not run.attached:
            run.log_params(keys.flat_params(cfg.evaluate, "evaluate") | {"model.path": cfg.model.path, "model.ref": ref}
                           | placement.params())
        if cfg.model.gguf_file:
            # a GGUF checkpoint: lm-eval gets the de-quantised model in memory, placed as configured
            lm_model, lm_tok = load_model(cfg.model, placement=placement)
            out = evaluate_in_memory(lm_model, lm_tok, cfg.evaluate, cache, prepared=prepared)
        else:
            out = evaluate_model(cfg.model.path, cfg.evaluate, cache, placement=placement, prepared=prepared,
                                 trust_remote_code=cfg.model.trust_remote_code)
        for note in out.notes:
            print(f"evaluate {uid}: note: {note}", file=sys.stderr)
        if not run.attached:
            run.log_params({HIGHER_IS_BETTER_PARAM: dumps_directions(out.higher_is_better)})
        record = os.path.join(units.unit_dir(root, uid), "lm_eval_results.json")
        os.makedirs(os.path.dirname(record), exist_ok=True)
        write_json(record, out.results | {"notes": out.notes}, indent=1)
        run.log_artifact(record, "lm_eval" if not run.attached else f"lm_eval/step-{step}")
        metrics = {keys.eval_key(keys.MEAN, k): v for k, v in out.mean.items()}
        for task, ms in out.per_task.items():
            metrics.update({keys.eval_key(task, k): v for k, v in ms.items()})
        metrics.update({keys.FLOPS_EVAL: out.flops, keys.FLOPS_TRAIN: train_flops_of(cfg.model.path, cfg.train_flops),
                        keys.EVAL_SECONDS: time.time() - t0, keys.EVAL_TOKENS_FORWARD: out.tokens_forward})
        if cfg.tokens_seen >= 0:
            metrics[keys.TRAIN_TOKENS] = cfg.tokens_seen
        run.log_metrics({k: float(v) for k, v in metrics.items() if v == v}, step=step)
        result = EvaluateResult(uid, dict(out.mean), {t: dict(m) for t, m in out.per_task.items()},
                                out.tokens_forward, out.flops, out.n_params, run.run_id, time.time() - t0,
                                dict(out.higher_is_better))
    units.write_done(root, uid, result)
    return result
