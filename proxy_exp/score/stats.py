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
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

# The keys of the dict returned by token_stats_from_logits / score_hidden_states.
STAT_KEYS: tuple[str, ...] = (
    "ce", "top1", "top2", "top3", "top5", "entropy", "rank", "recip_rank", "margin", "wrong_conf",
    "p_expert", "max_p",
)
TOP_K: tuple[int, ...] = (1, 2, 3, 5)
# score.kernel: how score_hidden_states applies the LM head and reduces the vocabulary.
KERNELS: tuple[str, ...] = ("auto", "torch", "triton")
# On CPU the statistics of a logits chunk run over row blocks of about this many logits (4 MiB of
# float32), so that their [rows, V] temporaries stay in cache: 3x faster at V = 49k than whole chunks
# (benchmarks/bench_scorer.py), same values (every statistic is row-wise).
CPU_STATS_BLOCK_ELEMENTS = 2**20


# score.stats_backend: how the vocabulary reductions of the torch path run. eager = torch ops (the reference);
# compiled = the same computation through torch.compile (on CPU, Inductor fuses it into one C++ kernel with
# two loops over each row: the statistics cost about 4x less than eager, benchmarks/bench_scorer.py); auto =
# compiled on CPU when the job has at least COMPILE_MIN_LOGITS logits to reduce (compiling costs 3-6 s once per
# process), else eager.
STATS_BACKENDS: tuple[str, ...] = ("auto", "eager", "compiled")
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


@dataclass(frozen=True)
class LMHead:
    """An HF model's LM head as a callable ``hidden[..., D] -> logits[..., V]`` (see :func:`lm_head_of`).

    ``module`` is ``model.get_output_embeddings()``; ``softcap`` the config's
    ``final_logit_softcapping`` (None: no capping). The fused kernel reads the module's weight and bias.
    """

    module: torch.nn.Module
    softcap: float | None = None

    def __call__(self, hidden: Tensor) -> Tensor:
        logits = self.module(hidden)
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits


def linear_head_parts(head: Callable[[Tensor], Tensor]) -> tuple[Tensor, Tensor | None, float | None] | None:
    """``(weight, bias, softcap)`` when ``head`` is a plain linear map (an :class:`LMHead` or ``nn.Linear``), else None.

    A module with hooks (e.g. accelerate's offloading) or weights off-device is not plain: the fused
    kernel would bypass what its forward does, so such heads stay on the torch path.
    """
    softcap = None
    if isinstance(head, LMHead):
        head, softcap = head.module, head.softcap
    if type(head) is not torch.nn.Linear:
        return None
    if head._forward_hooks or head._forward_pre_hooks or hasattr(head, "_hf_hook") or head.weight.is_meta:
        return None
    return head.weight, head.bias, softcap


@torch.no_grad()
def score_hidden_states(
    hidden: Tensor, head: Callable[[Tensor], Tensor], targets: Tensor, chunk_tokens: int, kernel: str = "auto",
    compiled: bool = False,
) -> dict[str, Tensor]:
    """Token statistics of ``head(hidden)`` at ``targets``, applying the head to ``chunk_tokens`` rows at a time.

    ``hidden`` is ``[T, D]`` (final hidden states, after the final norm), ``targets`` ``[T]``. The full
    ``[T, V]`` logits never exist at once (and no autograd graph keeps them): peak memory is
    ``chunk_tokens x V`` floats. Returns the
    same dict as :func:`token_stats_from_logits`, concatenated over chunks.

    ``kernel`` (score.kernel): ``torch`` is the chunked path above; ``triton`` the fused kernel of
    :mod:`proxy_exp.score.fused` (LM head and statistics in one pass over the vocabulary, no logits
    buffer, ``chunk_tokens`` unused; ``head`` must be a plain linear head, see :func:`linear_head_parts`);
    ``auto`` takes ``triton`` when ``hidden`` is on CUDA, triton imports and the head is plain linear,
    else ``torch``. ``compiled``: the torch path's reductions run through torch.compile (:data:`STATS_BACKENDS`).
    """
    if kernel not in KERNELS:
        raise ValueError(f"score.kernel must be one of {KERNELS}, got {kernel!r}")
    if chunk_tokens < 1:
        raise ValueError(f"score.chunk_tokens must be >= 1, got {chunk_tokens}")
    if hidden.dim() != 2:
        raise ValueError(f"hidden must be [T, D], got shape {tuple(hidden.shape)}")
    if targets.shape != hidden.shape[:1]:
        raise ValueError(f"targets must be [T] with T={hidden.shape[0]}, got shape {tuple(targets.shape)}")
    if kernel != "torch":
        from proxy_exp.score import fused

        parts = linear_head_parts(head)
        if kernel == "triton" and parts is None:
            raise ValueError(
                f"score.kernel='triton' needs a plain linear LM head (nn.Linear, no hooks); got "
                f"{type(getattr(head, 'module', head)).__name__}: use score.kernel=torch or auto"
            )
        if kernel == "triton" or (parts is not None and hidden.is_cuda and fused.triton_available()):
            weight, bias, softcap = parts
            return fused.fused_token_stats(hidden, weight, targets.to(hidden.device), softcap=softcap, bias=bias)
    n = hidden.shape[0]
    if n == 0:
        return token_stats_from_logits(head(hidden), targets)
    parts = [
        _stats_in_row_blocks(head(hidden[i : i + chunk_tokens]), targets[i : i + chunk_tokens], compiled)
        for i in range(0, n, chunk_tokens)
    ]
    return _concat(parts)


def _concat(parts: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    if len(parts) == 1:
        return parts[0]
    return {key: torch.cat([part[key] for part in parts]) for key in parts[0]}


def _stats_in_row_blocks(logits: Tensor, targets: Tensor, compiled: bool = False) -> dict[str, Tensor]:
    """:func:`token_stats_from_logits`, on CPU over row blocks of :data:`CPU_STATS_BLOCK_ELEMENTS` logits (eager
    only: the compiled reductions keep no [rows, V] temporaries)."""
    rows = max(1, CPU_STATS_BLOCK_ELEMENTS // max(1, logits.shape[-1]))
    if compiled or logits.device.type != "cpu" or logits.dim() != 2 or logits.shape[0] <= rows:
        return token_stats_from_logits(logits, targets, compiled)
    return _concat([token_stats_from_logits(logits[i : i + rows], targets[i : i + rows], compiled)
                    for i in range(0, logits.shape[0], rows)])


def _text_config(model):
    config = model.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def lm_head_of(model) -> LMHead:
    """A callable ``hidden[..., D] -> logits[..., V]`` for an HF causal LM (an :class:`LMHead`).

    It applies ``model.get_output_embeddings()`` and, when the config sets
    ``final_logit_softcapping`` (Gemma 2/3), ``cap * tanh(logits / cap)``. Architectures that scale
    logits in other ways are caught by :func:`check_lm_head`.
    """
    out = model.get_output_embeddings()
    if out is None:
        raise ValueError(
            f"{type(model).__name__} has no output embeddings (get_output_embeddings() is None); "
            "load the model with AutoModelForCausalLM so that it has an LM head"
        )
    cap = getattr(_text_config(model), "final_logit_softcapping", None)
    return LMHead(out, float(cap) if cap else None)


def max_positions(model) -> int:
    """The model's context length: ``max_position_embeddings`` (or GPT-2's ``n_positions``)."""
    config = _text_config(model)
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    raise ValueError(
        f"{type(model).__name__}'s config has neither max_position_embeddings nor n_positions; "
        "set one of them in the model's config.json"
    )


def final_hidden_states(model, input_ids: Tensor, attention_mask: Tensor | None = None,
                        position_ids: Tensor | None = None) -> Tensor:
    """Last hidden states ``[B, L, D]`` after the final norm, without computing logits.

    Runs ``model.base_model`` (the decoder stack: ``GPT2Model``, ``LlamaModel``, ...), whose
    ``last_hidden_state`` is what the LM head consumes. ``position_ids`` restarting at 0 inside a row (and no
    ``attention_mask``) is transformers' padding-free layout: each packed sequence attends only to itself.
    """
    kwargs = {} if position_ids is None else {"position_ids": position_ids}
    out = model.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **kwargs)
    return out.last_hidden_state


PACKINGS: tuple[str, ...] = ("auto", "padded", "packed")
# attention implementations that run packed sequences as variable-length attention (no L_total^2 work)
VARLEN_ATTENTION: tuple[str, ...] = ("flash_attention_2", "flash_attention_3", "flex_attention")


def attention_implementation(model) -> str:
    return str(getattr(_text_config(model), "_attn_implementation", None) or getattr(model.config, "_attn_implementation", ""))


def check_packed_forward(model, first: list[int], second: list[int]) -> None:
    """Raise ValueError unless packing ``first`` and ``second`` into one row (position ids restarting at 0, no
    attention mask) gives the hidden states each has alone: the architecture must honour packed position ids."""
    a, b = torch.tensor(first)[None], torch.tensor(second)[None]
    device = next(model.parameters()).device
    alone = torch.cat([final_hidden_states(model, a.to(device)), final_hidden_states(model, b.to(device))], dim=1)
    ids = torch.cat([a, b], dim=1).to(device)
    pos = torch.cat([torch.arange(a.shape[1]), torch.arange(b.shape[1])])[None].to(device)
    packed = final_hidden_states(model, ids, None, position_ids=pos)
    scale = alone.abs().max().item()
    diff = (packed.float() - alone.float()).abs().max().item()
    if not diff <= 1e-2 * scale + 1e-5:
        raise ValueError(
            f"score.packing=packed: {type(model).__name__} (attention {attention_implementation(model)!r}) does not "
            f"keep packed sequences apart (max abs difference {diff:.3g} at scale {scale:.3g} against scoring each "
            "alone): set score.packing=padded (or auto)"
        )


def check_lm_head(model, input_ids: Tensor, attention_mask: Tensor | None = None) -> None:
    """Raise ValueError unless ``lm_head_of(model)(final_hidden_states(...))`` equals ``model(...).logits``.

    A cheap guard (run it on a few tokens) against architectures that transform logits in a way
    :func:`lm_head_of` does not know (e.g. a logit scale), which would silently change every statistic.
    """
    reference = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits.float()
    ours = lm_head_of(model)(final_hidden_states(model, input_ids, attention_mask)).float()
    if attention_mask is not None:
        keep = attention_mask.bool()
        reference, ours = reference[keep], ours[keep]
    if reference.numel() == 0:
        return
    scale = reference.abs().max().item()
    diff = (reference - ours).abs().max().item()
    # Relative to the logits' scale: 1% leaves room for reduced-precision rounding, and any real
    # rescaling of the logits (>= 1%) fails whatever the magnitude of an untrained model's logits.
    if not diff <= 1e-2 * scale + 1e-6:
        raise ValueError(
            f"lm_head_of({type(model).__name__}) does not reproduce model(...).logits (max abs difference "
            f"{diff:.3g} at logit scale {scale:.3g}): this architecture transforms its logits in a way "
            "proxy_exp/score/stats.py:lm_head_of does not apply; add that transform there"
        )
