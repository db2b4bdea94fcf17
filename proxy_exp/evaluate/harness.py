"""Direct downstream evaluation through lm-evaluation-harness: the ground truth proxies are judged against."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

from proxy_exp.compute import forward_flops
from proxy_exp.config import EvalMetric, EvaluateConfig
from proxy_exp.environment import set_offline
from proxy_exp.evaluate.task_data import check_task, prepare_task_data, task_config

METRICS: tuple[str, ...] = tuple(m.value for m in EvalMetric)  # acc, acc_norm, logprob_per_char


@dataclass
class EvalOutput:
    """Scores of one model on the evaluation tasks.

    ``per_task[task]`` holds ``acc``, ``acc_norm``, ``logprob_per_char`` (mean over documents of the gold
    continuation's log-likelihood divided by its length in characters; higher is better) and ``n``
    (documents). ``mean`` is the macro average of each metric over tasks. ``tokens_forward`` counts the
    token positions the model ran over (all loglikelihood requests), so ``flops = 2 * n_params *
    tokens_forward``.
    """

    per_task: dict[str, dict[str, float]] = field(default_factory=dict)
    mean: dict[str, float] = field(default_factory=dict)
    primary_metric: str = "logprob_per_char"
    tokens_forward: int = 0
    n_params: int = 0
    flops: float = 0.0
    seconds: float = 0.0


def check_config(cfg: EvaluateConfig) -> None:
    """Raise ValueError naming the bad field of ``cfg``."""
    if not cfg.tasks:
        raise ValueError("evaluate.tasks is empty: name at least one task")
    for task in cfg.tasks:
        check_task(task)
    if len(set(cfg.tasks)) != len(cfg.tasks):
        raise ValueError(f"evaluate.tasks has duplicates: {cfg.tasks}")
    if cfg.primary_metric not in METRICS:
        raise ValueError(f"evaluate.primary_metric={cfg.primary_metric!r}: use one of {', '.join(METRICS)}")
    if cfg.limit < 0:
        raise ValueError(f"evaluate.limit must be >= 0 (0 = all documents), got {cfg.limit}")
    if cfg.batch_size < 1:
        raise ValueError(f"evaluate.batch_size must be >= 1, got {cfg.batch_size}")


def evaluate_model(model_dir: str, cfg: EvaluateConfig, cache_dir: str, device: str = "cpu") -> EvalOutput:
    """Evaluate the HF model (and its tokenizer) saved in ``model_dir`` on ``cfg.tasks``."""
    check_config(cfg)
    if not os.path.isfile(os.path.join(model_dir, "config.json")):
        raise FileNotFoundError(
            f"model folder {model_dir!r} not found or has no config.json: pass a folder written by "
            "save_pretrained (model and tokenizer)"
        )
    set_offline()
    import torch
    from lm_eval.models.huggingface import HFLM

    torch.set_num_threads(cfg.num_threads)
    lm = HFLM(pretrained=os.path.abspath(model_dir), dtype="float32", batch_size=cfg.batch_size, device=device)
    return evaluate_lm(lm, cfg, cache_dir)


def evaluate_in_memory(model: Any, tokenizer: Any, cfg: EvaluateConfig, cache_dir: str,
                       device: str = "cpu") -> EvalOutput:
    """Evaluate an in-memory ``PreTrainedModel`` with its tokenizer (no save needed)."""
    check_config(cfg)
    set_offline()
    import torch
    from lm_eval.models.huggingface import HFLM

    torch.set_num_threads(cfg.num_threads)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=cfg.batch_size, device=device)
    return evaluate_lm(lm, cfg, cache_dir)


def _tokens_forward(lm: Any, samples: list[dict[str, Any]]) -> int:
    """Token positions the model runs over for these loglikelihood requests.

    Encodes each ``(context, continuation)`` exactly as lm-eval does (``_encode_pair``); the model
    reads ``context + continuation[:-1]``, left-truncated to its ``max_length``.
    """
    total = 0
    for sample in samples:
        for context, continuation in sample["arguments"]:
            if context:
                ctx, cont = lm._encode_pair(context, continuation)
                n = len(ctx) + len(cont)
            else:
                n = 1 + len(lm.tok_encode(continuation, add_special_tokens=False))
            total += min(n - 1, lm.max_length)
    return total


def _logprob_per_char(samples: list[dict[str, Any]]) -> float:
    """Mean over documents of loglik(gold continuation) / len(gold continuation in characters)."""
    values = []
    for sample in samples:
        doc = sample["doc"]
        gold = int(doc["label"])
        loglik = float(sample["resps"][gold][0][0])
        values.append(loglik / max(len(doc["choices"][gold]), 1))
    return sum(values) / len(values)


def evaluate_lm(lm: Any, cfg: EvaluateConfig, cache_dir: str) -> EvalOutput:
    """Evaluate an lm-eval ``HFLM`` on ``cfg.tasks`` (data prepared under ``cache_dir``)."""
    check_config(cfg)
    set_offline()
    import lm_eval
    import torch
    from lm_eval.tasks import TaskManager

    torch.set_num_threads(cfg.num_threads)
    tasks = []
    for task in cfg.tasks:
        spec = task_config(task, prepare_task_data(task, cache_dir, cfg.limit))
        # Keep the json loader's Arrow cache with the run's cache, not in ~/.cache.
        spec["dataset_kwargs"]["cache_dir"] = os.path.join(os.path.abspath(cache_dir), "hf_datasets")
        tasks.append(spec)

    start = time.perf_counter()
    res = lm_eval.simple_evaluate(
        model=lm, tasks=tasks, task_manager=TaskManager(include_defaults=False),
        log_samples=True, bootstrap_iters=0, random_seed=0, numpy_random_seed=0, torch_random_seed=0,
    )
    seconds = time.perf_counter() - start

    per_task: dict[str, dict[str, float]] = {}
    tokens = 0
    for task in cfg.tasks:
        results, samples = res["results"][task], res["samples"][task]
        if not samples:
            raise ValueError(f"task {task!r} produced no samples (empty data file?)")
        per_task[task] = {
            "acc": float(results["acc,none"]),
            "acc_norm": float(results["acc_norm,none"]),
            "logprob_per_char": _logprob_per_char(samples),
            "n": len(samples),
        }
        tokens += _tokens_forward(lm, samples)
    mean = {m: sum(per_task[t][m] for t in cfg.tasks) / len(cfg.tasks) for m in METRICS}
    n_params = sum(p.numel() for p in lm.model.parameters())
    return EvalOutput(
        per_task=per_task, mean=mean, primary_metric=cfg.primary_metric,
        tokens_forward=tokens, n_params=n_params, flops=forward_flops(n_params, tokens), seconds=seconds,
    )
