"""Compute accounting in FLOPs.

Training follows the OLMo / nanoGPT estimate (nanoGPT ``estimate_mfu``, OLMo-core
``num_flops_per_token``): per trained token, ``6 * N`` for the forward and backward pass through
the non-embedding parameters plus ``12 * L * d * T`` for attention scores and their use over a
context of ``T`` tokens (the full ``T``, not halved for causal masking). Inference (scoring,
direct evaluation) counts ``2 * N`` per token, the forward pass only, as DataDecide does.
"""
from __future__ import annotations


def _non_negative(**values: float) -> None:
    for name, v in values.items():
        if v < 0:
            raise ValueError(f"{name} must be >= 0, got {v}")


def train_flops(n_params_non_embedding: float, tokens: float, n_layers: int, d_model: int,
                seq_len: int) -> float:
    """Training FLOPs: ``6 * N * D + 12 * L * d * seq_len * D`` for ``D`` = ``tokens``."""
    _non_negative(n_params_non_embedding=n_params_non_embedding, tokens=tokens, n_layers=n_layers,
                  d_model=d_model, seq_len=seq_len)
    per_token = 6.0 * n_params_non_embedding + 12.0 * n_layers * d_model * seq_len
    return float(per_token * tokens)


def forward_flops(n_params: float, tokens: float) -> float:
    """Forward-only FLOPs: ``2 * N * D``."""
    _non_negative(n_params=n_params, tokens=tokens)
    return 2.0 * float(n_params) * float(tokens)


def relative_compute(flops: float, target_flops: float) -> float:
    """``flops`` as a fraction of ``target_flops`` (one target training run in DataDecide's plots)."""
    if not target_flops > 0:
        raise ValueError(f"target_flops must be > 0, got {target_flops}; is the target run's "
                         "flops/train metric logged?")
    _non_negative(flops=flops)
    return float(flops) / float(target_flops)
