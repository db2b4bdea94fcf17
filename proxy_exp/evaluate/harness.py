"""Direct downstream evaluation through lm-evaluation-harness: the ground truth proxies are judged against.

Any task, group or tag (``registry.py`` resolves ``evaluate.tasks``), few-shot, chat templates, generative tasks
with lm-eval's own filters and metrics; every metric lm-eval reports is kept, named as :mod:`metrics` says.
"""
from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from typing import Any

from proxy_exp.compute import forward_flops
from proxy_exp.config import EvaluateConfig
from proxy_exp.environment import set_offline
from proxy_exp.evaluate import metrics as M
from proxy_exp.evaluate.registry import (TaskPlan, check_primary_metric, common_metrics, load_tasks, plan_tasks,
                                         units_of)

# The metrics of the embedded tasks (multiple choice): acc, acc_norm, logprob_per_char. Other tasks report others.
METRICS: tuple[str, ...] = ("acc", "acc_norm", M.LOGPROB_PER_CHAR)


@dataclass
class EvalOutput:
    """Scores of one model on the evaluation tasks.

    ``per_task[task]``: every metric lm-eval reports for the task (named as :mod:`proxy_exp.evaluate.metrics` says:
    ``acc``, ``exact_match_strict-match``, ...), for multiple-choice tasks also ``logprob_per_char`` (mean over
    documents of the gold continuation's log-likelihood divided by its length in characters; higher is better),
    and ``n`` (documents). Groups with an aggregate appear as tasks too (lm-eval's aggregate; ``logprob_per_char``
    the mean over all their documents when every subtask is multiple choice). ``mean``: the macro average over
    ``units`` (each requested task; a group with an aggregate counts once, a tag or a group without one by its
    tasks) of each metric that every unit reports. ``higher_is_better``: lm-eval's direction per metric name (None
    where tasks disagree). ``tokens_forward``: token positions the model ran over (exact for log-likelihood
    requests; prompt + generated tokens for generation, rolling windows' tokens for perplexity), so ``flops = 2 *
    n_params * tokens_forward``. ``results``: lm-eval's results, n-shot, versions and configs (for the record);
    ``samples``: lm-eval's logged samples per task (kept in memory only).
    """

    per_task: dict[str, dict[str, float]] = field(default_factory=dict)
    mean: dict[str, float] = field(default_factory=dict)
    primary_metric: str = M.LOGPROB_PER_CHAR
    tokens_forward: int = 0
    n_params: int = 0
    flops: float = 0.0
    seconds: float = 0.0
    units: list[str] = field(default_factory=list)
    higher_is_better: dict[str, bool | None] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    results: dict[str, Any] = field(default_factory=dict, repr=False)
    samples: dict[str, list[dict[str, Any]]] = field(default_factory=dict, repr=False)


def check_config(cfg: EvaluateConfig) -> None:
    """Raise ValueError naming the bad field of ``cfg`` (the fields alone; :func:`prepare` resolves the tasks)."""
    if not cfg.tasks:
        raise ValueError("evaluate.tasks is empty: name at least one task")
    if len(set(cfg.tasks)) != len(cfg.tasks):
        raise ValueError(f"evaluate.tasks has duplicates: {cfg.tasks}")
    M.check_metric_name(cfg.primary_metric, "evaluate.primary_metric")
    if cfg.limit < 0:
        raise ValueError(f"evaluate.limit must be >= 0 (0 = all documents), got {cfg.limit}")
    batch_size(cfg)
    if cfg.num_fewshot is not None and cfg.num_fewshot < 0:
        raise ValueError(f"evaluate.num_fewshot must be >= 0 (or null: each task's own), got {cfg.num_fewshot}")
    if not isinstance(cfg.gen_kwargs, dict):
        raise ValueError(f"evaluate.gen_kwargs must be a mapping, e.g. {{do_sample: true, temperature: 0.7}}, "
                         f"got {cfg.gen_kwargs!r}")


def batch_size(cfg: EvaluateConfig) -> int | str:
    """``evaluate.batch_size`` as lm-eval takes it: a positive int, or ``auto`` / ``auto:N``."""
    value = str(cfg.batch_size).strip()
    if value == "auto" or re.fullmatch(r"auto:\d+", value):
        return value
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"evaluate.batch_size={cfg.batch_size!r}: give a positive number of documents per forward "
                         "pass, or auto (the largest batch that fits, as lm-eval finds it)")
    return int(value)


def _placement_args(placement) -> dict[str, Any]:
    """HFLM's own device, dtype and sharding arguments for a model loaded from a folder (proxy_exp.devices.Placement):
    ``parallelize`` with lm-eval's device_map options when the model is sharded."""
    if placement is None:
        return {"device": "cpu", "dtype": "float32"}
    args: dict[str, Any] = {"device": placement.device, "dtype": str(placement.dtype).removeprefix("torch.")}
    if placement.device_map:
        gpus = {v for k, v in placement.max_memory.items() if isinstance(k, int)}
        if len(gpus) > 1:
            raise ValueError(f"model.max_memory gives the GPUs different budgets {sorted(gpus)}: lm-eval's parallelize "
                             "takes one budget per GPU (max_memory_per_gpu); give every GPU the same value")
        args.update(parallelize=True, device_map=placement.device_map,
                    offload_folder=placement.offload_folder or "./offload")
        if gpus:
            args["max_memory_per_gpu"] = gpus.pop()
        if "cpu" in placement.max_memory:
            args["max_cpu_memory"] = placement.max_memory["cpu"]
    return args


@dataclass
class Prepared:
    """``evaluate.tasks`` resolved (``plan``) and built by lm-eval with their data (``tasks``), before any model."""

    plan: TaskPlan
    tasks: list[Any]


def prepare(cfg: EvaluateConfig, cache_dir: str) -> Prepared:
    """Check ``cfg``, resolve its tasks, check ``evaluate.primary_metric`` against what they report, and build them
    with their data; every problem is a ValueError naming the setting (or the task) and what to do."""
    check_config(cfg)
    set_offline()
    plan = plan_tasks(cfg)
    check_primary_metric(plan, cfg.primary_metric)
    return Prepared(plan, load_tasks(plan, cache_dir, cfg.limit))


def evaluate_model(model_dir: str, cfg: EvaluateConfig, cache_dir: str, placement=None,
                   prepared: Prepared | None = None, trust_remote_code: bool = False) -> EvalOutput:
    """Evaluate the HF model (and its tokenizer) saved in ``model_dir`` on ``cfg.tasks``, placed as ``placement``
    says (:func:`proxy_exp.devices.resolve_placement`: device, dtype, and lm-eval's ``parallelize`` for a sharded
    model; None: CPU, float32)."""
    check_config(cfg)
    plan = prepared.plan if prepared is not None else plan_tasks(cfg)  # task errors before model errors
    check_primary_metric(plan, cfg.primary_metric)
    if not os.path.isfile(os.path.join(model_dir, "config.json")):
        raise FileNotFoundError(
            f"model folder {model_dir!r} not found or has no config.json: pass a folder written by "
            "save_pretrained (model and tokenizer)"
        )
    prepared = prepared or Prepared(plan, load_tasks(plan, cache_dir, cfg.limit))
    set_offline()
    import torch
    from lm_eval.models.huggingface import HFLM

    torch.set_num_threads(cfg.num_threads)
    lm = HFLM(pretrained=os.path.abspath(model_dir), batch_size=batch_size(cfg), trust_remote_code=trust_remote_code,
              **_placement_args(placement))
    return evaluate_lm(lm, cfg, cache_dir, prepared)


def evaluate_in_memory(model: Any, tokenizer: Any, cfg: EvaluateConfig, cache_dir: str,
                       device: str | None = None, prepared: Prepared | None = None) -> EvalOutput:
    """Evaluate an in-memory ``PreTrainedModel`` with its tokenizer (no save needed), where it is (its device, or
    ``device``)."""
    if device is None:
        device = str(next(model.parameters()).device)
    prepared = prepared or prepare(cfg, cache_dir)
    import torch
    from lm_eval.models.huggingface import HFLM

    torch.set_num_threads(cfg.num_threads)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size(cfg), device=device)
    return evaluate_lm(lm, cfg, cache_dir, prepared)


# --------------------------------------------------------------------------- compute
def _tokens_forward(lm: Any, samples: list[dict[str, Any]], output_type: str) -> int:
    """Token positions the model runs over for one task's requests (one logged sample per document).

    Log-likelihood requests are encoded exactly as lm-eval does (``_encode_pair``): the model reads ``context +
    continuation[:-1]``, left-truncated to its ``max_length``. Generation: the prompt (left-truncated as lm-eval
    does) plus the generated tokens of each response. Rolling log-likelihood: the text's tokens.
    """
    total = 0
    for sample in M.first_filter_samples(samples):
        if output_type == "generate_until":
            for (context, gen_kwargs), resps in zip(sample["arguments"], sample["resps"]):
                max_gen = int((gen_kwargs or {}).get("max_gen_toks", getattr(lm, "max_gen_toks", 256)))
                n_ctx = min(len(lm.tok_encode(context)), max(lm.max_length - max_gen, 1))
                for text in resps:
                    total += n_ctx + len(lm.tok_encode(text, add_special_tokens=False))
        elif output_type == "loglikelihood_rolling":
            for (text, *_rest) in sample["arguments"]:
                total += len(lm.tok_encode(text, add_special_tokens=False)) + 1
        else:
            for context, continuation in sample["arguments"]:
                if context:
                    ctx, cont = lm._encode_pair(context, continuation)
                    n = len(ctx) + len(cont)
                else:
                    n = 1 + len(lm.tok_encode(continuation, add_special_tokens=False))
                total += min(n - 1, lm.max_length)
    return total


# --------------------------------------------------------------------------- the run
def _check_chat_template(lm: Any, cfg: EvaluateConfig) -> None:
    if cfg.apply_chat_template and not getattr(getattr(lm, "tokenizer", None), "chat_template", None):
        raise ValueError("evaluate.apply_chat_template=true, but the model's tokenizer has no chat template "
                         "(tokenizer_config.json has no chat_template): evaluate a chat / instruct model, or set "
                         "evaluate.apply_chat_template=false")


def evaluate_lm(lm: Any, cfg: EvaluateConfig, cache_dir: str, prepared: Prepared | None = None) -> EvalOutput:
    """Evaluate an lm-eval ``HFLM`` on ``cfg.tasks`` (embedded tasks' data prepared under ``cache_dir``)."""
    prepared = prepared or prepare(cfg, cache_dir)
    _check_chat_template(lm, cfg)
    set_offline()
    import lm_eval
    import torch

    torch.set_num_threads(cfg.num_threads)
    start = time.perf_counter()
    res = lm_eval.simple_evaluate(
        model=lm, tasks=prepared.tasks, task_manager=prepared.plan.manager(), num_fewshot=cfg.num_fewshot,
        limit=cfg.limit or None, log_samples=True, bootstrap_iters=0, gen_kwargs=dict(cfg.gen_kwargs) or None,
        apply_chat_template=cfg.apply_chat_template, fewshot_as_multiturn=cfg.fewshot_as_multiturn,
        system_instruction=cfg.system_instruction or None, confirm_run_unsafe_code=cfg.confirm_run_unsafe_code,
        random_seed=cfg.seed, numpy_random_seed=cfg.seed, torch_random_seed=cfg.seed,
    )
    seconds = time.perf_counter() - start
    out = collect(res, prepared, lm, cfg)
    out.seconds = seconds
    return out


def collect(res: dict[str, Any], prepared: Prepared, lm: Any, cfg: EvaluateConfig) -> EvalOutput:
    """lm-eval's ``simple_evaluate`` output as an :class:`EvalOutput` (see there)."""
    from lm_eval.api.group import Group

    results, samples, configs = res["results"], res["samples"], res["configs"]
    leaves: dict[str, Any] = {}
    groups: dict[str, Any] = {}
    for obj in prepared.tasks:
        if isinstance(obj, Group):
            groups[obj.name] = obj
            groups.update({g.name: g for g in obj.get_all_groups()})
            leaves.update({t.task_name: t for t in obj.get_all_tasks()})
        else:
            leaves[obj.task_name] = obj
    per_task: dict[str, dict[str, float]] = {}
    lpc_n: dict[str, tuple[float, int]] = {}
    tokens = 0
    notes: list[str] = []
    filters: dict[str, list[str]] = {}
    for task in leaves:
        task_samples = samples.get(task) or []
        if not task_samples:
            raise ValueError(f"task {task!r} produced no samples (empty data file, or evaluate.limit too small?)")
        output_type = configs[task].get("output_type")
        values = M.result_metrics(results[task])
        n = int(res["n-samples"][task]["effective"])
        if output_type == M.MULTIPLE_CHOICE:
            lpc = M.logprob_per_char(task_samples, configs[task].get("target_delimiter", " "))
            if lpc is None:
                notes.append(f"{task}: logprob_per_char not computed (a document's gold is not one of its choices)")
            else:
                values[M.LOGPROB_PER_CHAR] = lpc
                lpc_n[task] = (lpc, n)
        values[M.N_DOCS] = n
        per_task[task] = values
        filters[task] = sorted({s["filter"] for s in task_samples})
        tokens += _tokens_forward(lm, task_samples, output_type)
        shots = res.get("n-shot", {}).get(task)
        if cfg.num_fewshot is not None and shots is not None and int(shots) != cfg.num_fewshot:
            notes.append(f"{task}: {shots}-shot (its YAML pins num_fewshot, which lm-eval keeps over "
                         f"evaluate.num_fewshot={cfg.num_fewshot})")
    for name, group in groups.items():
        if not group.has_aggregation:
            continue
        values = M.result_metrics(results.get(name, {}))
        sub = [t.task_name for t in group.get_all_tasks()]
        if all(t in lpc_n for t in sub):
            total = sum(lpc_n[t][1] for t in sub)
            values[M.LOGPROB_PER_CHAR] = sum(v * k for v, k in (lpc_n[t] for t in sub)) / total
        values[M.N_DOCS] = sum(per_task[t][M.N_DOCS] for t in sub)
        per_task[name] = values
    clean = {}
    for name, values in per_task.items():
        key = M.task_name(name)
        if key == "mean" or key in clean:
            raise ValueError(f"task {name!r} would be logged as eval/{key}/...: rename it (its YAML's task:)")
        clean[key] = values
    units = [u for obj in prepared.tasks for u in units_of(obj)]
    unit_keys = [M.task_name(u) for u in units]
    common = [m for m in common_metrics([clean[u] for u in unit_keys]) if m != M.N_DOCS]
    mean = {m: sum(clean[u][m] for u in unit_keys) / len(unit_keys) for m in common}
    if cfg.primary_metric not in mean:
        check_primary_metric(prepared.plan, cfg.primary_metric,
                             known={u: [m for m in clean[u] if m != M.N_DOCS] for u in unit_keys})
    hib = M.directions(res.get("higher_is_better", {}), list(leaves) + list(groups),
                       {**filters, **{g: sorted({f for t in groups[g].get_all_tasks() for f in filters[t.task_name]})
                                      for g in groups}})
    n_params = sum(p.numel() for p in lm.model.parameters())
    record = {k: res.get(k) for k in ("results", "groups", "group_subtasks", "n-shot", "higher_is_better",
                                      "n-samples", "versions", "configs")}
    return EvalOutput(
        per_task=clean, mean=mean, primary_metric=cfg.primary_metric, tokens_forward=tokens, n_params=n_params,
        flops=forward_flops(n_params, tokens), units=unit_keys,
        higher_is_better={m: v for m, v in hib.items() if any(m in ms for ms in clean.values())}, notes=notes,
        results=record, samples=dict(samples),
    )
