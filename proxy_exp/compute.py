"""Compute accounting in FLOPs: the one place the formulas live.

Training follows the OLMo / nanoGPT estimate (nanoGPT ``estimate_mfu``, OLMo-core ``num_flops_per_token``): per
trained token, ``6 * N`` for the forward and backward pass through the non-embedding parameters plus
``12 * L * d * T`` for attention scores and their use over a context of ``T`` tokens (the full ``T``, not halved
for causal masking). Inference (scoring, direct evaluation) counts ``2 * N`` per token, the forward pass only, as
DataDecide does.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

from proxy_exp.config import Arch, ModelConfig


def train_flops_per_token(n_non_embedding: float, n_layers: int, d_model: int, seq_len: int) -> float:
    """6 x non-embedding params, plus attention 12 x layers x d_model x seq_len (PaLM / nanoGPT)."""
    return 6.0 * n_non_embedding + 12.0 * n_layers * d_model * seq_len


def forward_flops(n_params: float, tokens: float) -> float:
    """Forward-only FLOPs: ``2 * N * D``."""
    return 2.0 * float(n_params) * float(tokens)


@dataclass(frozen=True)
class ParamCounts:
    total: int
    non_embedding: int


def d_ff(cfg: ModelConfig) -> int:
    """The MLP width: ``model.d_ff``, else 4 x d_model (gpt2) or 8/3 x d_model rounded to 32 (llama)."""
    if cfg.d_ff:
        return cfg.d_ff
    if cfg.arch == Arch.gpt2:
        return 4 * cfg.d_model
    return max(32, int(round(8 * cfg.d_model / 3 / 32)) * 32)


def check_arch(cfg: ModelConfig) -> None:
    """The shape checks of a buildable architecture (ValueError naming the setting and the fix)."""
    if cfg.arch not in (Arch.llama, Arch.gpt2):
        raise ValueError(f"model.arch={cfg.arch!r} is not buildable; use 'llama' or 'gpt2' (or set model.path to load "
                         "one)")
    if cfg.d_model % cfg.n_heads:
        raise ValueError(f"model.d_model={cfg.d_model} must be divisible by model.n_heads={cfg.n_heads}")
    if cfg.arch == Arch.llama and cfg.n_heads % cfg.n_kv_heads:
        raise ValueError(f"model.n_heads={cfg.n_heads} must be divisible by model.n_kv_heads={cfg.n_kv_heads}")


def param_counts(cfg: ModelConfig, vocab_size: int) -> ParamCounts:
    """Parameter counts of the model :func:`proxy_exp.models.build_model` builds, in closed form (no torch: plans
    count hundreds of units; tests check it against the built model): total (tied LM head once) and non-embedding
    (no token or position embeddings)."""
    check_arch(cfg)
    return _param_counts(cfg.arch, cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.n_kv_heads, d_ff(cfg),
                         cfg.max_seq_len, vocab_size)


@functools.lru_cache(maxsize=256)
def _param_counts(arch: Arch, n_layers: int, d: int, n_heads: int, n_kv: int, ff: int, positions: int,
                  vocab: int) -> ParamCounts:
    if arch == Arch.llama:  # transformers' Llama: no biases, RMSNorm weights, tied embeddings
        kv = d // n_heads * n_kv
        layer = 2 * d * d + 2 * d * kv + 3 * d * ff + 2 * d
        embedding, rest = vocab * d, n_layers * layer + d
    else:  # GPT-2: biases everywhere, LayerNorm weight and bias, learned positions, tied embeddings
        layer = 2 * 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * ff + ff) + (ff * d + d)
        embedding, rest = vocab * d + positions * d, n_layers * layer + 2 * d
    return ParamCounts(total=embedding + rest, non_embedding=rest)
