"""What a training run will do, before it does it: sizes, steps, tokens, FLOPs, and the learning-rate schedule.

The token budget is exact: ``steps = ceil(budget / tokens_per_step)`` optimizer steps of ``global_batch x seq_len``
tokens each, where the budget is ``tokens_per_param x params`` (or ``pretrain.max_tokens``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from proxy_exp.compute import param_counts, train_flops_per_token
from proxy_exp.config import BudgetParams, TrainJobConfig


@dataclass
class TrainPlan:
    n_params: int
    n_params_non_embedding: int
    budget_tokens: int
    tokens_per_step: int
    steps: int
    tokens: int
    flops: float
    gradient_accumulation: int

    def pack_tokens(self, seq_len: int) -> int:
        """How many tokens of the corpus to pack for this run: its tokens plus one spare sequence."""
        return self.tokens + seq_len


def _batch_problem(p, world_size: int, ranks: str) -> str | None:
    """The line for a global batch that the ranks cannot split into equal micro-batches, or None."""
    per_pass = p.micro_batch * world_size
    if p.global_batch % per_pass == 0:
        return None
    fit = max(per_pass, round(p.global_batch / per_pass) * per_pass)
    return (f"pretrain.global_batch={p.global_batch} is not a multiple of pretrain.micro_batch={p.micro_batch} x "
            f"world size {world_size}{ranks} = {per_pass}: set pretrain.global_batch to a multiple of {per_pass} "
            f"(e.g. {fit}), or change pretrain.micro_batch or the number of ranks")


def check_train_config(cfg: TrainJobConfig) -> None:
    """Fail fast, before anything is built or read, on a size that cannot work: a zero or negative size of the model,
    tokenizer or batch, a sequence longer than the model's context, or a global batch that the configured ranks
    cannot split (``pretrain.nodes`` x ``pretrain.gpus_per_node``, or x ``pretrain.tasks_per_node`` CPU ranks when
    no GPU count is given). Raises ValueError with one line naming the setting and the fix."""
    m, p = cfg.model, cfg.pretrain
    positive = [("pretrain.global_batch", p.global_batch), ("pretrain.micro_batch", p.micro_batch),
                ("pretrain.seq_len", p.seq_len), ("pretrain.nodes", p.nodes),
                ("pretrain.tasks_per_node", p.tasks_per_node)]
    if str(m.arch) != "pretrained":
        positive = [("model.n_layers", m.n_layers), ("model.d_model", m.d_model), ("model.n_heads", m.n_heads),
                    ("model.n_kv_heads", m.n_kv_heads), ("model.max_seq_len", m.max_seq_len)] + positive
    if str(cfg.tokenizer.kind) != "pretrained":
        positive.append(("tokenizer.vocab_size", cfg.tokenizer.vocab_size))
    if p.max_tokens <= 0:
        positive.append(("pretrain.tokens_per_param", p.tokens_per_param))
    for key, value in positive:
        if value <= 0:
            raise ValueError(f"{key}={value} must be a positive number: set {key} to 1 or more")
    if p.max_tokens < 0:
        raise ValueError(f"pretrain.max_tokens={p.max_tokens} is negative: set it to a positive token budget, or to 0 "
                         "for the budget of pretrain.tokens_per_param")
    if m.d_ff < 0:
        raise ValueError(f"model.d_ff={m.d_ff} is negative: set it to a positive width, or to 0 for the default")
    if str(m.arch) != "pretrained" and p.seq_len > m.max_seq_len:
        raise ValueError(f"pretrain.seq_len={p.seq_len} exceeds model.max_seq_len={m.max_seq_len}: lower "
                         "pretrain.seq_len or raise model.max_seq_len")
    key, per_node = ("gpus_per_node", p.gpus_per_node) if p.gpus_per_node > 0 else ("tasks_per_node", p.tasks_per_node)
    problem = _batch_problem(p, p.nodes * per_node, f" (pretrain.nodes={p.nodes} x pretrain.{key}={per_node})")
    if problem:
        raise ValueError(problem)


def plan_training(cfg: TrainJobConfig, vocab_size: int, world_size: int = 1) -> TrainPlan:
    """What a training run will do: sizes, steps, tokens and FLOPs (used by dry runs too)."""
    p = cfg.pretrain
    for key, value in [("model.n_layers", cfg.model.n_layers), ("model.d_model", cfg.model.d_model),
                       ("pretrain.global_batch", p.global_batch), ("pretrain.micro_batch", p.micro_batch),
                       ("pretrain.seq_len", p.seq_len), ("vocabulary size (tokenizer.vocab_size)", vocab_size)]:
        if value <= 0:
            raise ValueError(f"{key}={value} must be a positive number: set it to 1 or more")
    counts = param_counts(cfg.model, vocab_size)
    if p.seq_len > cfg.model.max_seq_len:
        raise ValueError(f"pretrain.seq_len={p.seq_len} exceeds model.max_seq_len={cfg.model.max_seq_len}: lower "
                         "pretrain.seq_len or raise model.max_seq_len")
    per_pass = p.micro_batch * world_size
    problem = _batch_problem(p, world_size, "")
    if problem:
        raise ValueError(problem)
    n_budget = counts.non_embedding if p.budget_params == BudgetParams.non_embedding else counts.total
    budget = int(p.max_tokens) if p.max_tokens > 0 else int(round(p.tokens_per_param * n_budget))
    tokens_per_step = p.global_batch * p.seq_len
    steps = max(1, math.ceil(budget / tokens_per_step))
    tokens = steps * tokens_per_step
    flops = train_flops_per_token(counts.non_embedding, cfg.model.n_layers, cfg.model.d_model, p.seq_len) * tokens
    return TrainPlan(counts.total, counts.non_embedding, budget, tokens_per_step, steps, tokens, flops,
                     p.global_batch // per_pass)


def lr_lambda(step: int, total: int, warmup_frac: float, min_ratio: float) -> float:
    """Linear warm-up, then cosine decay to ``min_ratio`` of the peak learning rate."""
    warmup = max(1, int(round(warmup_frac * total)))
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
