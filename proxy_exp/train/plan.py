"""What a training run will do, before it does it: sizes, steps, tokens, FLOPs, and the learning-rate schedule.

The token budget is exact: ``steps = ceil(budget / tokens_per_step)`` optimizer steps of ``global_batch x seq_len``
tokens each, where the budget is ``tokens_per_param x params`` (or ``pretrain.max_tokens``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from proxy_exp.compute import train_flops_per_token
from proxy_exp.config import BudgetParams, TrainJobConfig
from proxy_exp.models import estimate_param_counts


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


def plan_training(cfg: TrainJobConfig, vocab_size: int, world_size: int = 1) -> TrainPlan:
    """What a training run will do: sizes, steps, tokens and FLOPs (used by dry runs too)."""
    p = cfg.pretrain
    counts = estimate_param_counts(cfg.model, vocab_size)
    if p.seq_len > cfg.model.max_seq_len:
        raise ValueError(f"pretrain.seq_len={p.seq_len} exceeds model.max_seq_len={cfg.model.max_seq_len}")
    per_pass = p.micro_batch * world_size
    if p.global_batch % per_pass:
        raise ValueError(f"pretrain.global_batch={p.global_batch} must be a multiple of pretrain.micro_batch x "
                         f"world size = {per_pass}")
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
