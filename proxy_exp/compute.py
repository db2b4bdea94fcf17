"""Compute accounting in FLOPs: the one place the formulas live.

Training follows the OLMo / nanoGPT estimate (nanoGPT ``estimate_mfu``, OLMo-core ``num_flops_per_token``): per
trained token, ``6 * N`` for the forward and backward pass through the non-embedding parameters plus
``12 * L * d * T`` for attention scores and their use over a context of ``T`` tokens (the full ``T``, not halved
for causal masking). Inference (scoring, direct evaluation) counts ``2 * N`` per token, the forward pass only, as
DataDecide does.
"""
from __future__ import annotations


def train_flops_per_token(n_non_embedding: float, n_layers: int, d_model: int, seq_len: int) -> float:
    """6 x non-embedding params, plus attention 12 x layers x d_model x seq_len (PaLM / nanoGPT)."""
    return 6.0 * n_non_embedding + 12.0 * n_layers * d_model * seq_len


def forward_flops(n_params: float, tokens: float) -> float:
    """Forward-only FLOPs: ``2 * N * D``."""
    return 2.0 * float(n_params) * float(tokens)
