"""Token statistics of a next-token distribution at the expert token, computed chunk by chunk.

Every statistic is a function of one logits row ``x`` (over the vocabulary ``V``) and the expert
token ``y``; ``p = softmax(x)``. The definitions (method.md, "Token statistics"):

- ``ce``: ``-log p(y)``.
- ``rank``: number of tokens ``v != y`` with ``x_v >= x_y``; 0 means the expert token is the unique
  argmax. Ties count *against* the expert token (pessimistic). method.md words it as "count tokens
  with strictly larger logit", but that would give rank 0 to every tied token, e.g. to every token
  under the all-equal logits of an untrained head, and so top-1 accuracy 1 to a model that knows
  nothing. Counting ties against the expert token gives that model rank ``V - 1``.
- ``top1, top2, top3, top5``: ``1[rank < k]`` as float.
- ``entropy``: ``H(p) / log V`` (normalized to [0, 1]).
- ``recip_rank``: ``1 / (rank + 1)``.
- ``margin``: ``max_v p_v - p(y)`` (>= 0; 0 when the expert token is a top-1 token).
- ``wrong_conf``: ``max_v p_v`` when ``rank >= 1`` (some other token has a logit at least as high as
  the expert token's, so the model's top choice is, or ties with, a wrong token), else 0: how
  confident the model is when its top-1 guess is wrong. method.md leaves the formula open; this is
  the example form it gives, with the same pessimistic treatment of ties as ``rank``.
- ``p_expert`` (``p(y)``) and ``max_p`` (``max_v p_v``) are returned too: the weightings need them.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from proxy_exp.config import StatsBackend

# The keys of the dict returned by token_stats_from_logits / score_hidden_states.
STAT_KEYS: tuple[str, ...] = (
    "ce", "top1", "top2", "top3", "top5", "entropy", "rank", "recip_rank", "margin", "wrong_conf",
    "p_expert", "max_p",
)
TOP_K: tuple[int, ...] = (1, 2, 3, 5)
# On CPU the statistics of a logits chunk run over row blocks of about this many logits (4 MiB of
# float32), so that their [rows, V] temporaries stay in cache: 3x faster at V = 49k than whole chunks
# (benchmarks/bench_scorer.py), same values (every statistic is row-wise).
CPU_STATS_BLOCK_ELEMENTS = 2**20


# score.stats_backend: how the vocabulary reductions of the torch path run. eager = torch ops (the reference);
# compiled = the same computation through torch.compile (on CPU, Inductor fuses it into one C++ kernel with
# two loops over each row: the statistics cost about 4x less than eager, benchmarks/bench_scorer.py); auto =
# compiled on CPU when the job has at least COMPILE_MIN_LOGITS logits to reduce (compiling costs 3-6 s once per
# process), else eager.
STATS_BACKENDS: tuple[str, ...] = tuple(StatsBackend)
COMPILE_MIN_LOGITS = 2_000_000_000
_COMPILED: dict[str, object] = {}  # "fn": the compiled _token_stats; "broken": why compiling failed here


def is_oom(e: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or the CPU allocator's RuntimeError ("can't allocate memory")."""
    return isinstance(e, torch.OutOfMemoryError) or "can't allocate memory" in str(e) or "out of memory" in str(e)


def _row_reductions(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Four reductions of float32 rows ``x[T, V]`` at ``y[T, 1]``, from which every statistic follows.

    With ``t = x - max(x)``, ``e = exp(t)`` and ``s = sum(e)`` (so ``p = e / s``): ``log s``, the mean
    ``sum(e t) / s`` (``= E_p[t]``), the pessimistic rank ``#{v: x_v >= x_y} - 1`` (compared on ``x``, not
    ``t``, so that rounding in the subtraction never creates a tie), and ``t_y``. Then ``ce = log s - t_y``,
    ``p_max = 1 / s`` and ``H(p) = log s - E_p[t]``. One exp per logit, no log, and no pass that torch.compile
    cannot fuse into one loop.
    """
    m = x.amax(dim=1, keepdim=True)
    t = x - m
    e = torch.exp(t)
    s = e.sum(dim=1)
    # 0 * -inf (a logit of -inf, e.g. a masked vocabulary entry) would be nan: such a token adds 0 to the sum
    mean_t = (e * t.clamp_min(torch.finfo(t.dtype).min)).sum(dim=1) / s
    rank = (x >= x.gather(1, y)).sum(dim=1) - 1
    return torch.log(s), mean_t, rank, t.gather(1, y).squeeze(1)


def _token_stats(logits: Tensor, targets: Tensor) -> dict[str, Tensor]:
    """The statistics of ``logits[T, V]`` (any float dtype) at ``targets[T]`` (int64): upcast, reduce, derive."""
    x = logits.float()
    log_s, mean_t, rank, t_y = _row_reductions(x, targets.unsqueeze(1))
    entropy = (log_s - mean_t).clamp_min(0.0) / math.log(x.shape[1])
    return stats_from_reductions(log_s - t_y, rank, torch.exp(-log_s), entropy)


def _run_stats(logits: Tensor, targets: Tensor, compiled: bool) -> dict[str, Tensor]:
    if not compiled or "broken" in _COMPILED:
        return _token_stats(logits, targets)
    fn = _COMPILED.get("fn")
    if fn is None:
        fn = torch.compile(_token_stats, dynamic=True)
        try:  # the first call compiles; a machine without a working C++ toolchain falls back to eager, once
            out = fn(logits, targets)
        except Exception as e:  # noqa: BLE001
            if is_oom(e):
                raise
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            _COMPILED["broken"] = f"{type(e).__name__}: {first}"
            import warnings

            warnings.warn(f"score.stats_backend=compiled: torch.compile failed ({_COMPILED['broken']}); the "
                          "statistics run eagerly (same values, slower). Install a C++ compiler (g++) to compile.",
                          stacklevel=3)
            return _token_stats(logits, targets)
        _COMPILED["fn"] = fn
        return out
    return fn(logits, targets)


@torch.no_grad()
def token_stats_from_logits(logits: Tensor, targets: Tensor, compiled: bool = False) -> dict[str, Tensor]:
    """All token statistics (module docstring) of ``logits[T, V]`` at ``targets[T]``.

    The logits are upcast to float32 and reduced by :func:`_row_reductions` (``compiled``: the whole
    computation through torch.compile, see :data:`STATS_BACKENDS`). Returns ``{name: Tensor[T]}`` with keys
    :data:`STAT_KEYS`; ``rank`` is int64, the rest float32.
    """
    if logits.dim() != 2:
        raise ValueError(f"logits must be [T, V], got shape {tuple(logits.shape)}")
    if targets.shape != logits.shape[:1]:
        raise ValueError(f"targets must be [T] with T={logits.shape[0]}, got shape {tuple(targets.shape)}")
    n_vocab = logits.shape[1]
    if n_vocab < 2:
        raise ValueError(f"the vocabulary must hold at least 2 tokens to normalise entropy, got V={n_vocab}")
    return _run_stats(logits, targets.long().to(logits.device), compiled and logits.shape[0] > 0)


def stats_from_reductions(ce: Tensor, rank: Tensor, max_p: Tensor, entropy: Tensor) -> dict[str, Tensor]:
    """Every statistic from four per-token reductions of the vocabulary row: cross-entropy, the pessimistic
    rank, p(top-1) and normalised entropy. Shared by the chunked torch path and the fused kernel."""
    p_expert = torch.exp(-ce)
    stats: dict[str, Tensor] = {"ce": ce}
    for k in TOP_K:
        stats[f"top{k}"] = (rank < k).float()
    stats["entropy"] = entropy
    stats["rank"] = rank
    stats["recip_rank"] = 1.0 / (rank.float() + 1.0)
    stats["margin"] = (max_p - p_expert).clamp_min(0.0)
    stats["wrong_conf"] = torch.where(rank >= 1, max_p, torch.zeros_like(max_p))
    stats["p_expert"] = p_expert
    stats["max_p"] = max_p
    return stats


def concat_stats(parts: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    if len(parts) == 1:
        return parts[0]
    return {key: torch.cat([part[key] for part in parts]) for key in parts[0]}


def stats_in_row_blocks(logits: Tensor, targets: Tensor, compiled: bool = False) -> dict[str, Tensor]:
    """:func:`token_stats_from_logits`, on CPU over row blocks of :data:`CPU_STATS_BLOCK_ELEMENTS` logits (eager
    only: the compiled reductions keep no [rows, V] temporaries)."""
    rows = max(1, CPU_STATS_BLOCK_ELEMENTS // max(1, logits.shape[-1]))
    if compiled or logits.device.type != "cpu" or logits.dim() != 2 or logits.shape[0] <= rows:
        return token_stats_from_logits(logits, targets, compiled)
    return concat_stats([token_stats_from_logits(logits[i : i + rows], targets[i : i + rows], compiled)
                    for i in range(0, logits.shape[0], rows)])


