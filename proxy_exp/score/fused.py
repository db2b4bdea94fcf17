"""Token statistics straight from hidden states and the LM-head weight, in one fused Triton pass.

:func:`fused_token_stats` returns the same dict as :func:`proxy_exp.score.stats.token_stats_from_logits`
applied to ``head(hidden)``, without ever holding the ``[T, V]`` logits: a program takes ``BLOCK_T``
tokens and streams the weight in ``BLOCK_V x BLOCK_D`` tiles; each logits tile lives in registers only
while it updates, online-softmax style, per token:

- ``m``: running max of the logits (-> ``max_p = exp(m - lse)``);
- ``s = sum exp(l - m)``, rescaled by ``exp(m_old - m_new)`` when the max grows (-> ``lse = m + log s``);
- ``u = sum exp(l - m) (l - m)``, rescaled the same way (-> ``H = log s - u / s``, the entropy in nats,
  computed relative to the max so that large logits do not cancel);
- ``cnt``: tokens ``v != y`` with ``l_v >= l_y`` (the pessimistic rank of stats.py);
- ``l_y``: the expert token's logit, taken from its tile.

Before the pass, each program computes its tokens' target logits ``W[y] . h`` (one extra tile: the
diagonal of ``h @ [W[y_0], ..., W[y_BT-1], 0, ...]^T``, a product of the vocabulary tiles' shape so that
it rounds as they do), so that the rank is counted in the same single pass. The pass gives ``l_y``
again from the expert token's own tile; where the two differ in the last bit (the accumulation order
of a matmul may depend on the operands' layout: numpy's does in the interpreter), the row is recounted
with the torch path (``recount=True``), so the rank is exact whatever the kernel's rounding;
:data:`RECOUNTS` counts such rows. With ``vocab_splits > 1`` several programs share one token tile,
each over a contiguous slice of the vocabulary, and their partial ``(m, s, u, cnt)`` are merged in
torch (for few tokens: fills the GPU). The reductions are ``tl.reduce`` with triton's own combine
functions (what ``tl.sum`` / ``tl.max`` expand to) and the kernel calls no ``@jit`` function of
``triton.language.standard``: the interpreter cannot run those when triton was imported (as
``torch._dynamo`` does) before ``TRITON_INTERPRET=1`` was set.

Numerics match the torch path (``head(hidden)`` then float32 statistics): inputs may be float32,
bfloat16 or float16; products accumulate in float32; with ``round_logits=True`` (the default) each
logit is rounded to the input dtype exactly as ``F.linear`` in that dtype returns it (bfloat16 rounding
to nearest even, done with integer bit operations, identical on GPU and in the interpreter), and the
final-logit soft-capping of Gemma 2/3 (``cap * tanh(l / cap)``) is applied with the same intermediate
roundings as ``lm_head.lm_head_of``. Float32 inputs use IEEE float32 products (not TF32).

Memory: the output and the per-split partials, ``O(T x vocab_splits)`` floats; no ``[T, V]`` buffer.

Runs on CUDA tensors, or on CPU tensors under the Triton interpreter (``TRITON_INTERPRET=1`` set before
this module is imported), which is how the tests check it on machines without a GPU. In the
interpreter, ``tl.dot`` of bfloat16 tiles is wrong (numpy has no bfloat16), so there the tiles are
upcast to float32 before the product; the products of two bfloat16 numbers are exact in float32, so
this changes the accumulation order only. The interpreter's float-to-bfloat16 cast truncates, hence
the explicit round-to-nearest-even.
"""
from __future__ import annotations

import collections
import math

import torch
from torch import Tensor

from proxy_exp.score.stats import STAT_KEYS, stats_from_reductions, token_stats_from_logits

try:  # triton is an optional dependency (the `gpu` extra)
    import triton
    import triton.language as tl

    HAVE_TRITON = True
except ImportError:  # pragma: no cover - depends on the environment
    triton = None
    tl = None
    HAVE_TRITON = False

# Default tile sizes on CUDA (not yet tuned on a GPU: benchmarks/bench_scorer.py --sweep measures others).
DEFAULT_BLOCKS: dict[str, int] = {"block_t": 64, "block_v": 128, "block_d": 64, "num_warps": 8, "num_stages": 3}
# Tile sizes under the interpreter: small, so that the tests cover partial tiles and several vocab tiles.
INTERPRETER_BLOCKS: dict[str, int] = {"block_t": 16, "block_v": 128, "block_d": 16, "num_warps": 4, "num_stages": 1}
_ROUND_CODES: dict[torch.dtype, int] = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
KERNEL_DTYPES = tuple(_ROUND_CODES)  # the dtypes the kernel takes (hidden states and head weight share one)
# Diagnostics, summed over calls: tokens scored, tokens whose pre-pass target logit differed from its
# tile's, and tokens recounted in torch (see the module docstring); benchmarks print the recounted
# fraction, which should stay near 0 on a GPU.
RECOUNTS: collections.Counter = collections.Counter()


def triton_available() -> bool:
    """True when triton imports (it may still lack a GPU: see :func:`interpreting`)."""
    return HAVE_TRITON


def interpreting() -> bool:
    """True when this module's kernel runs in the Triton interpreter (on CPU tensors).

    Triton decides when the kernel is defined, i.e. when this module is imported with
    ``TRITON_INTERPRET=1`` in the environment.
    """
    return HAVE_TRITON and type(_token_stats_kernel).__name__ == "InterpretedFunction"


if HAVE_TRITON:

    # Reductions as tl.reduce with triton's own combine functions (what tl.sum / tl.max expand to): the
    # kernel then calls no @jit function of triton.language.standard, which the interpreter cannot run
    # when triton was imported (e.g. by torch._dynamo) before TRITON_INTERPRET=1 was set.
    @triton.jit
    def _row_sum(x):
        return tl.reduce(x, 1, tl.standard._sum_combine)

    @triton.jit
    def _row_max(x):
        return tl.reduce(x, 1, tl.standard._elementwise_max)

    @triton.jit
    def _round_logit(x, ROUND: tl.constexpr):
        """``x`` (float32) rounded to the head's dtype and back: 0 = float32 (as is), 1 = bfloat16, 2 = float16."""
        if ROUND == 1:
            # round to nearest even on the upper 16 bits (logits are finite; inf stays inf)
            bits = x.to(tl.uint32, bitcast=True)
            bits = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
            x = bits.to(tl.float32, bitcast=True)
        elif ROUND == 2:
            x = x.to(tl.float16).to(tl.float32)
        return x

    @triton.jit
    def _head_transform(acc, bias, cap, HAS_BIAS: tl.constexpr, SOFTCAP: tl.constexpr, ROUND: tl.constexpr):
        """The logits ``round(acc + bias)`` then, with SOFTCAP, ``round(round(tanh(round(l / cap))) * cap)``."""
        if HAS_BIAS:
            acc = acc + bias
        x = _round_logit(acc, ROUND)
        if SOFTCAP:
            z = _round_logit(x / cap, ROUND)
            e = tl.exp(-2.0 * tl.abs(z))
            t = (1.0 - e) / (1.0 + e)
            t = tl.where(z < 0, -t, t)
            t = _round_logit(t, ROUND)
            x = _round_logit(t * cap, ROUND)
        return x

    @triton.jit
    def _token_stats_kernel(
        H, W, BIAS, Y,
        OUT_M, OUT_S, OUT_U, OUT_CNT, OUT_LY, OUT_LYPRE,
        T, V, D,
        stride_ht, stride_hd, stride_wv, stride_wd,
        tiles_per_split, cap,
        HAS_BIAS: tl.constexpr, SOFTCAP: tl.constexpr, ROUND: tl.constexpr,
        DOT_FP32: tl.constexpr, INPUT_PRECISION: tl.constexpr,
        BLOCK_T: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        pid_t = tl.program_id(0)
        pid_s = tl.program_id(1)
        local = tl.arange(0, BLOCK_T)
        rows = pid_t * BLOCK_T + local
        row_ok = rows < T
        rows64 = rows.to(tl.int64)
        y = tl.load(Y + rows, mask=row_ok, other=0).to(tl.int64)  # for addresses
        y32 = y.to(tl.int32)  # for comparisons (V < 2**31): half the registers of int64 tiles
        offs_d = tl.arange(0, BLOCK_D)

        # ---- the target logits W[y] . h of this token tile: the diagonal of h @ [W[y_0], ..., W[y_BT-1], 0...]^T,
        # a product of the same shape as the vocabulary tiles below, so that its rounding is theirs
        offs_v = tl.arange(0, BLOCK_V)
        col_tok = tl.minimum(offs_v, BLOCK_T - 1)  # column j < BLOCK_T holds token j's target row
        y_col = tl.load(Y + pid_t * BLOCK_T + col_tok, mask=(offs_v < BLOCK_T) & (pid_t * BLOCK_T + col_tok < T),
                        other=0).to(tl.int64)
        y_col_ok = (offs_v < BLOCK_T) & (pid_t * BLOCK_T + col_tok < T)
        acc_y = tl.full((BLOCK_T, BLOCK_V), 0.0, dtype=tl.float32)
        for d0 in range(0, D, BLOCK_D):
            d = d0 + offs_d
            d_ok = d < D
            h = tl.load(H + rows64[:, None] * stride_ht + d[None, :] * stride_hd,
                        mask=row_ok[:, None] & d_ok[None, :], other=0.0)
            wy = tl.load(W + y_col[None, :] * stride_wv + d[:, None] * stride_wd,
                         mask=y_col_ok[None, :] & d_ok[:, None], other=0.0)
            if DOT_FP32:
                h = h.to(tl.float32)
                wy = wy.to(tl.float32)
            acc_y = tl.dot(h, wy, acc_y, input_precision=INPUT_PRECISION)
        ly_pre = _row_sum(tl.where(local[:, None] == offs_v[None, :], acc_y, 0.0))
        if HAS_BIAS:
            by = tl.load(BIAS + y, mask=row_ok, other=0.0).to(tl.float32)
        else:
            by = 0.0
        ly_pre = _head_transform(ly_pre, by, cap, HAS_BIAS, SOFTCAP, ROUND)

        # ---- one pass over this program's slice of the vocabulary
        m = tl.full((BLOCK_T,), float("-inf"), dtype=tl.float32)
        s = tl.full((BLOCK_T,), 0.0, dtype=tl.float32)
        u = tl.full((BLOCK_T,), 0.0, dtype=tl.float32)
        cnt = tl.full((BLOCK_T,), 0, dtype=tl.int32)
        ly = tl.full((BLOCK_T,), 0.0, dtype=tl.float32)
        v_start = pid_s * tiles_per_split * BLOCK_V
        v_end = tl.minimum(v_start + tiles_per_split * BLOCK_V, V)
        for v0 in range(v_start, v_end, BLOCK_V):
            cols = v0 + tl.arange(0, BLOCK_V)
            col_ok = cols < V
            cols64 = cols.to(tl.int64)
            acc = tl.full((BLOCK_T, BLOCK_V), 0.0, dtype=tl.float32)
            for d0 in range(0, D, BLOCK_D):
                d = d0 + offs_d
                d_ok = d < D
                h = tl.load(H + rows64[:, None] * stride_ht + d[None, :] * stride_hd,
                            mask=row_ok[:, None] & d_ok[None, :], other=0.0)
                w = tl.load(W + cols64[None, :] * stride_wv + d[:, None] * stride_wd,
                            mask=col_ok[None, :] & d_ok[:, None], other=0.0)
                if DOT_FP32:
                    h = h.to(tl.float32)
                    w = w.to(tl.float32)
                acc = tl.dot(h, w, acc, input_precision=INPUT_PRECISION)
            if HAS_BIAS:
                b = tl.load(BIAS + cols64, mask=col_ok, other=0.0).to(tl.float32)[None, :]
            else:
                b = 0.0
            logit = _head_transform(acc, b, cap, HAS_BIAS, SOFTCAP, ROUND)
            logit = tl.where(col_ok[None, :], logit, float("-inf"))

            m_new = tl.maximum(m, _row_max(logit))
            alpha = tl.exp(m - m_new)  # 0 on the first tile (m = -inf)
            shift = tl.where(m == float("-inf"), 0.0, m - m_new)
            z = tl.where(col_ok[None, :], logit - m_new[:, None], 0.0)
            e = tl.where(col_ok[None, :], tl.exp(z), 0.0)
            u = alpha * (u + shift * s) + _row_sum(e * z)
            s = alpha * s + _row_sum(e)
            m = m_new

            is_y = cols[None, :] == y32[:, None]
            ge = (logit >= ly_pre[:, None]) & col_ok[None, :] & (~is_y)
            cnt += _row_sum(ge.to(tl.int32))
            ly += _row_sum(tl.where(is_y, logit, 0.0))

        out = pid_s * T + rows
        tl.store(OUT_M + out, m, mask=row_ok)
        tl.store(OUT_S + out, s, mask=row_ok)
        tl.store(OUT_U + out, u, mask=row_ok)
        tl.store(OUT_CNT + out, cnt, mask=row_ok)
        tl.store(OUT_LY + out, ly, mask=row_ok)
        tl.store(OUT_LYPRE + out, ly_pre, mask=row_ok)


def _reference_head(weight: Tensor, bias: Tensor | None, softcap: float | None, round_logits: bool):
    """The torch head the kernel reproduces (used for rows whose target logit needs a recount)."""

    def head(hidden: Tensor) -> Tensor:
        if round_logits:
            logits = torch.nn.functional.linear(hidden, weight, bias)
        else:
            logits = torch.nn.functional.linear(hidden.float(), weight.float(), None if bias is None else bias.float())
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        return logits

    return head


def _vocab_splits(n_token_tiles: int, n_vocab_tiles: int, device: torch.device) -> int:
    """Enough vocabulary splits to give every SM two programs (1 when the token tiles already do)."""
    if device.type != "cuda":
        return 1
    n_sm = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(n_vocab_tiles, math.ceil(2 * n_sm / max(1, n_token_tiles))))


def _check_inputs(hidden: Tensor, weight: Tensor, targets: Tensor, bias: Tensor | None, softcap: float | None) -> None:
    if not HAVE_TRITON:
        raise ImportError("score.kernel='triton' needs the triton package: pip install 'proxy-exp[gpu]' (or triton)")
    if hidden.dim() != 2 or weight.dim() != 2:
        raise ValueError(f"hidden must be [T, D] and weight [V, D], got {tuple(hidden.shape)} and {tuple(weight.shape)}")
    if hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"hidden has D={hidden.shape[1]} but the LM-head weight has D={weight.shape[1]}")
    if targets.shape != hidden.shape[:1]:
        raise ValueError(f"targets must be [T] with T={hidden.shape[0]}, got shape {tuple(targets.shape)}")
    if weight.shape[0] < 2:
        raise ValueError(f"the vocabulary must hold at least 2 tokens to normalise entropy, got V={weight.shape[0]}")
    if hidden.dtype != weight.dtype or hidden.dtype not in _ROUND_CODES:
        raise ValueError(f"hidden ({hidden.dtype}) and weight ({weight.dtype}) must share one dtype of "
                         f"{sorted(str(d) for d in _ROUND_CODES)}")
    if bias is not None and bias.shape != weight.shape[:1]:
        raise ValueError(f"bias must be [V] with V={weight.shape[0]}, got shape {tuple(bias.shape)}")
    if softcap is not None and not softcap > 0:
        raise ValueError(f"softcap must be > 0 (or None), got {softcap}")
    devices = {t.device for t in (hidden, weight, targets) + ((bias,) if bias is not None else ())}
    if len(devices) != 1:
        raise ValueError(f"hidden, weight, targets (and bias) must be on one device, got {sorted(map(str, devices))}")
    device = hidden.device
    if device.type != "cuda" and not interpreting():
        raise ValueError(f"the Triton kernel runs on CUDA tensors (got {device}); use score.kernel=torch on CPU, "
                         "or set TRITON_INTERPRET=1 before importing proxy_exp.score.fused to run it in the interpreter")


def _blocks(device: torch.device, overrides: dict[str, int | None]) -> dict[str, int]:
    """Tile sizes and launch options: :data:`DEFAULT_BLOCKS` (CUDA) or :data:`INTERPRETER_BLOCKS`, with the given
    ``overrides`` (None: the default), checked against what ``tl.dot`` and the target-logit pre-pass need."""
    blocks = dict(INTERPRETER_BLOCKS if device.type != "cuda" else DEFAULT_BLOCKS)
    blocks.update({name: value for name, value in overrides.items() if value is not None})
    for name in ("block_t", "block_v", "block_d"):
        if blocks[name] < 16 or blocks[name] & (blocks[name] - 1):
            raise ValueError(f"{name} must be a power of two >= 16 (tl.dot), got {blocks[name]}")
    if blocks["block_v"] < blocks["block_t"]:
        raise ValueError(f"block_v ({blocks['block_v']}) must be >= block_t ({blocks['block_t']}): the target-logit "
                         "pre-pass puts one token's target row in each column of a vocabulary-shaped tile")
    return blocks


def _split_vocabulary(n_token_tiles: int, n_vocab_tiles: int, vocab_splits: int | None,
                      device: torch.device) -> tuple[int, int]:
    """``(splits, tiles_per_split)``: programs per token tile over the vocabulary (``vocab_splits``, or None: enough
    to fill the GPU), each given at least one vocabulary tile."""
    splits = vocab_splits if vocab_splits is not None else _vocab_splits(n_token_tiles, n_vocab_tiles, device)
    if splits < 1:
        raise ValueError(f"vocab_splits must be >= 1, got {splits}")
    tiles_per_split = triton.cdiv(n_vocab_tiles, min(splits, n_vocab_tiles))
    return triton.cdiv(n_vocab_tiles, tiles_per_split), tiles_per_split


def _merge_splits(part_m: Tensor, part_s: Tensor, part_u: Tensor, part_cnt: Tensor, part_ly: Tensor,
                  n_vocab: int) -> tuple[dict[str, Tensor], Tensor]:
    """The statistics from the splits' partial reductions ``[splits, T]`` (the same rescaling as inside the kernel),
    and the target logits."""
    m = part_m.max(dim=0).values
    alpha = torch.exp(part_m - m)
    s = (alpha * part_s).sum(dim=0)
    u = (alpha * (part_u + (part_m - m) * part_s)).sum(dim=0)
    rank = part_cnt.sum(dim=0, dtype=torch.int64)
    logit_y = part_ly.sum(dim=0)  # the target's column lies in exactly one split; the others add 0
    log_s = torch.log(s)
    lse = m + log_s
    entropy = ((log_s - u / s) / math.log(n_vocab)).clamp_min(0.0)
    stats = stats_from_reductions(lse - logit_y, rank, torch.exp(m - lse), entropy)
    return {key: stats[key] for key in STAT_KEYS}, logit_y


def _recount_rows(stats: dict[str, Tensor], rows: Tensor, hidden: Tensor, weight: Tensor, bias: Tensor | None,
                  targets: Tensor, softcap: float | None, round_logits: bool) -> None:
    """Overwrite the statistics of ``rows`` with torch's (the head as the torch path applies it)."""
    RECOUNTS["recounted"] += rows.numel()
    head = _reference_head(weight, bias, softcap, round_logits)
    exact = token_stats_from_logits(head(hidden[rows]), targets[rows])
    for key in STAT_KEYS:
        stats[key][rows] = exact[key].to(stats[key].dtype)


@torch.no_grad()
def fused_token_stats(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    softcap: float | None = None,
    bias: Tensor | None = None,
    round_logits: bool = True,
    recount: bool = True,
    vocab_splits: int | None = None,
    block_t: int | None = None,
    block_v: int | None = None,
    block_d: int | None = None,
    num_warps: int | None = None,
    num_stages: int | None = None,
) -> dict[str, Tensor]:
    """Token statistics of ``logits = hidden @ weight.T (+ bias)`` at ``targets``, fused (module docstring).

    ``hidden[T, D]``, ``weight[V, D]`` (one dtype: float32, bfloat16 or float16), ``targets[T]`` ids in
    ``[0, V)``. ``softcap``: Gemma's ``final_logit_softcapping`` (``cap * tanh(l / cap)``), None for none.
    ``round_logits``: round each logit to the input dtype as the torch head does (False keeps the
    float32 accumulations). ``recount``: recount in torch the rows whose target logit from the
    pre-pass differs from its tile's (False: keep the kernel's counts, for tests).
    ``vocab_splits``: programs per token tile (None: enough to fill the GPU).
    Tile sizes default to :data:`DEFAULT_BLOCKS` (CUDA) or :data:`INTERPRETER_BLOCKS`.
    Returns ``{name: Tensor[T]}`` with keys :data:`~proxy_exp.score.stats.STAT_KEYS`, ``rank`` int64, the
    rest float32, as :func:`~proxy_exp.score.stats.token_stats_from_logits`.
    """
    _check_inputs(hidden, weight, targets, bias, softcap)
    n_tokens, n_dim = hidden.shape
    n_vocab = weight.shape[0]
    device = hidden.device
    targets = targets.long().contiguous()  # the kernel indexes targets and bias with unit stride
    bias = bias.contiguous() if bias is not None else None
    if n_tokens == 0:
        return token_stats_from_logits(hidden.new_zeros((0, n_vocab)), targets)
    lo, hi = int(targets.min()), int(targets.max())
    if lo < 0 or hi >= n_vocab:
        raise ValueError(f"targets must lie in [0, {n_vocab}) (the LM head's vocabulary), found {lo}..{hi}")

    overrides = {"block_t": block_t, "block_v": block_v, "block_d": block_d, "num_warps": num_warps,
                 "num_stages": num_stages}
    blocks = _blocks(device, overrides)
    n_token_tiles = triton.cdiv(n_tokens, blocks["block_t"])
    splits, tiles_per_split = _split_vocabulary(n_token_tiles, triton.cdiv(n_vocab, blocks["block_v"]), vocab_splits,
                                                device)

    f32 = dict(device=device, dtype=torch.float32)
    part_m = torch.empty((splits, n_tokens), **f32)
    part_s = torch.empty((splits, n_tokens), **f32)
    part_u = torch.empty((splits, n_tokens), **f32)
    part_ly = torch.empty((splits, n_tokens), **f32)
    part_ly_pre = torch.empty((splits, n_tokens), **f32)
    part_cnt = torch.empty((splits, n_tokens), device=device, dtype=torch.int32)
    round_code = _ROUND_CODES[hidden.dtype] if round_logits else 0
    _token_stats_kernel[(n_token_tiles, splits)](
        hidden, weight, bias if bias is not None else weight, targets,
        part_m, part_s, part_u, part_cnt, part_ly, part_ly_pre,
        n_tokens, n_vocab, n_dim,
        hidden.stride(0), hidden.stride(1), weight.stride(0), weight.stride(1),
        tiles_per_split, float(softcap) if softcap else 1.0,
        HAS_BIAS=bias is not None, SOFTCAP=bool(softcap), ROUND=round_code,
        DOT_FP32=interpreting() and hidden.dtype != torch.float32,
        INPUT_PRECISION="ieee",
        BLOCK_T=blocks["block_t"], BLOCK_V=blocks["block_v"], BLOCK_D=blocks["block_d"],
        num_warps=blocks["num_warps"], num_stages=blocks["num_stages"],
    )

    stats, logit_y = _merge_splits(part_m, part_s, part_u, part_cnt, part_ly, n_vocab)
    # rows whose pre-computed target logit is not bit-identical to its tile's: count again in torch
    differ = (part_ly_pre[0] != logit_y).nonzero().squeeze(1)
    RECOUNTS["tokens"] += n_tokens
    RECOUNTS["differ"] += differ.numel()
    if differ.numel() and recount:
        _recount_rows(stats, differ, hidden, weight, bias, targets, softcap, round_logits)
    return stats
