"""Teacher-forced scoring of expert traces: one forward pass per trace, statistics on solution tokens."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from proxy_exp.config import LongPrompt, Packing, ScoreConfig, StatsBackend
from proxy_exp.score.lm_head import (
    KERNELS,
    check_lm_head,
    final_hidden_states,
    head_device,
    lm_head_of,
    max_positions,
    resolve_kernel,
    score_hidden_states,
    text_config,
)
from proxy_exp.score.stats import COMPILE_MIN_LOGITS, STAT_KEYS, STATS_BACKENDS, is_oom

TRACE_FIELDS: tuple[str, ...] = ("id", "task", "prompt", "solution")
# Column order of ScoreOutput.tokens.
TOKEN_COLUMNS: tuple[str, ...] = ("trace_id", "task", "position", "token_id") + STAT_KEYS
# Tokens of the first sequence that check_lm_head compares against model(...).logits.
_HEAD_CHECK_TOKENS = 16
# score.batch_size=0 on a GPU: the first batch holds at most this many tokens (and at most AUTO_BATCH_MAX traces);
# a batch that runs out of memory is halved and retried
AUTO_BATCH_TOKENS = 65_536
AUTO_BATCH_MAX = 64
LOG = logging.getLogger("proxy_exp.score")
_SAID: set[str] = set()


def input_device(model) -> torch.device:
    """Where a model's input ids go: its embedding's device (a sharded model's hooks move activations onwards; an
    embedding offloaded by accelerate computes where its hook says, so inputs stay on the CPU)."""
    weight = model.get_input_embeddings().weight
    return torch.device("cpu") if weight.is_meta else weight.device


def resolve_batch_size(cfg: ScoreConfig, device: torch.device, longest: int) -> tuple[int, bool]:
    """``(first batch size, halve on out-of-memory)``: ``score.batch_size`` and ``score.auto_batch`` as given, or for
    ``batch_size=0`` (auto) 1 on CPU and on a GPU the largest batch of the longest traces within
    :data:`AUTO_BATCH_TOKENS` tokens, halved on out-of-memory."""
    if cfg.batch_size > 0:
        return cfg.batch_size, cfg.auto_batch
    if device.type != "cuda":
        return 1, cfg.auto_batch
    return max(1, min(AUTO_BATCH_MAX, AUTO_BATCH_TOKENS // max(1, longest))), True


@dataclass
class ScoreOutput:
    """Per-token statistics of a set of traces.

    ``tokens``: one row per scored token, columns :data:`TOKEN_COLUMNS` (``position`` is the token's
    index within the tokenized solution; ``trace_id`` and ``task`` are strings). ``tokens_forward``: tokens that went through the model,
    padding excluded (so it does not depend on ``batch_size``), for FLOPs = 2 * params * tokens_forward.
    ``n_traces``: traces scored. ``batch_size``: the batch size the last batch ran with (below the first one
    when ``score.auto_batch`` or an automatic batch size halved it after running out of memory). ``kernel``: the
    kernel that ran (``torch`` or ``triton``), ``kernel_note``: why ``auto`` did not take the fused kernel on a GPU.
    """

    tokens: pd.DataFrame
    tokens_forward: int
    n_traces: int
    batch_size: int = 1
    kernel: str = "torch"
    kernel_note: str = ""


@dataclass
class _Sequence:
    """One trace as model input: ``ids`` and the indices (into ``ids``) of its scored tokens."""

    index: int
    ids: list[int]
    targets: np.ndarray  # positions in ids of the scored tokens (each >= 1)
    positions: np.ndarray  # the same tokens' indices within the solution


# score.packing
PACKINGS: tuple[str, ...] = tuple(Packing)
# attention implementations that run packed sequences as variable-length attention (no L_total^2 work)
VARLEN_ATTENTION: tuple[str, ...] = ("flash_attention_2", "flash_attention_3", "flex_attention")


def attention_implementation(model) -> str:
    return str(getattr(text_config(model), "_attn_implementation", None) or getattr(model.config, "_attn_implementation", ""))


def check_packed_forward(model, first: list[int], second: list[int]) -> None:
    """Raise ValueError unless packing ``first`` and ``second`` into one row (position ids restarting at 0, no
    attention mask) gives the hidden states each has alone: the architecture must honour packed position ids."""
    a, b = torch.tensor(first)[None], torch.tensor(second)[None]
    device = input_device(model)
    alone = torch.cat([final_hidden_states(model, a.to(device)).cpu(), final_hidden_states(model, b.to(device)).cpu()],
                      dim=1)
    ids = torch.cat([a, b], dim=1).to(device)
    pos = torch.cat([torch.arange(a.shape[1]), torch.arange(b.shape[1])])[None].to(device)
    packed = final_hidden_states(model, ids, None, position_ids=pos).cpu()
    scale = alone.abs().max().item()
    diff = (packed.float() - alone.float()).abs().max().item()
    if not diff <= 1e-2 * scale + 1e-5:
        raise ValueError(
            f"score.packing=packed: {type(model).__name__} (attention {attention_implementation(model)!r}) does not "
            f"keep packed sequences apart (max abs difference {diff:.3g} at scale {scale:.3g} against scoring each "
            "alone): set score.packing=padded (or auto)"
        )


def _check_traces(traces: list[dict]) -> None:
    for i, trace in enumerate(traces):
        if not isinstance(trace, dict):
            raise ValueError(f"traces[{i}] must be a dict with keys {TRACE_FIELDS}, got {type(trace).__name__}")
        for key in TRACE_FIELDS:
            if key not in trace:
                raise ValueError(f"traces[{i}] (id={trace.get('id')!r}) has no field {key!r}; each trace needs {TRACE_FIELDS}")
        for key in ("prompt", "solution"):
            if not isinstance(trace[key], str):
                raise ValueError(f"trace {trace['id']!r}: field {key!r} must be a string, got {type(trace[key]).__name__}")


def _bos_id(tokenizer) -> int:
    for name in ("bos_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    raise ValueError(
        f"tokenizer {type(tokenizer).__name__} has neither a BOS nor an EOS token; set bos_token (or eos_token) "
        "in its tokenizer_config.json"
    )


def _sequences(tokenizer, traces: list[dict], window: int, max_pos: int, n_vocab: int,
               long_prompt: str = "truncate") -> list[_Sequence]:
    """Tokenize ``BOS + prompt + solution``, left-truncate to ``max_pos`` and choose the scored tokens; a prompt that
    alone fills the context is cut with the start of the solution (``score.long_prompt=truncate``, said once) or an
    error (``error``)."""
    overflowing: list[str] = []
    bos = _bos_id(tokenizer)
    prompts = tokenizer([t["prompt"] for t in traces], add_special_tokens=False)["input_ids"]
    solutions = tokenizer([t["solution"] for t in traces], add_special_tokens=False)["input_ids"]
    sequences = []
    for i, (trace, prompt, solution) in enumerate(zip(traces, prompts, solutions)):
        if not solution:
            what = ("an empty solution" if not trace["solution"].strip() else
                    f"a solution ({len(trace['solution'])} characters) that this tokenizer turns into no tokens")
            raise ValueError(f"trace {trace['id']!r} (task {trace['task']!r}) has {what}: there is nothing to score; "
                             "drop it from the traces")
        if 1 + len(prompt) >= max_pos and long_prompt == LongPrompt.truncate:
            overflowing.append(str(trace["id"]))
        elif 1 + len(prompt) >= max_pos:
            raise ValueError(
                f"trace {trace['id']!r} (task {trace['task']!r}): its prompt is {len(prompt)} tokens, as long as the "
                f"model's context ({max_pos} positions) or longer, so no solution token could be scored after it; "
                "shorten the prompt, score with a model of a longer context, or set score.long_prompt=truncate")
        full = [bos] + list(prompt) + list(solution)
        if max(full) >= n_vocab:
            raise ValueError(
                f"trace {trace['id']!r} tokenizes to id {max(full)} but the model's vocabulary has {n_vocab} "
                "tokens; the tokenizer does not belong to this model"
            )
        cut = max(0, len(full) - max_pos)
        solution_start = 1 + len(prompt) - cut  # index in the truncated ids of solution token 0
        first = 0 if window == 0 else max(0, len(solution) - window)
        first = max(first, 1 - solution_start)  # a scored token needs at least one token before it
        positions = np.arange(first, len(solution))
        sequences.append(_Sequence(i, full[cut:], solution_start + positions, positions))
    if overflowing:
        note = (f"{len(overflowing)} trace(s) have a prompt that alone fills the model's context ({max_pos} positions), "
                f"e.g. {overflowing[0]!r}: their last solution tokens are scored without their prompt "
                "(score.long_prompt=error refuses them)")
        if note not in _SAID:
            _SAID.add(note)
            LOG.warning(note)
    return sequences


def _column_dtype(column: str):
    if column in ("trace_id", "task"):
        return object
    return np.int32 if column in ("position", "token_id", "rank") else np.float32


def _to_frame(traces: list[dict], sequences: list[_Sequence], stats: dict[int, dict[str, np.ndarray]]) -> pd.DataFrame:
    order = sorted(stats)
    counts = [len(sequences[i].positions) for i in order]
    data: dict[str, np.ndarray] = {
        "trace_id": np.repeat(np.array([str(traces[i]["id"]) for i in order], dtype=object), counts),
        "task": np.repeat(np.array([str(traces[i]["task"]) for i in order], dtype=object), counts),
        "position": np.concatenate([sequences[i].positions for i in order]).astype(np.int32),
        "token_id": np.concatenate([stats[i]["token_id"] for i in order]).astype(np.int32),
    }
    for key in STAT_KEYS:
        data[key] = np.concatenate([stats[i][key] for i in order]).astype(_column_dtype(key))
    return pd.DataFrame(data, columns=list(TOKEN_COLUMNS))


@torch.inference_mode()
def score_traces(model, tokenizer, traces: list[dict], cfg: ScoreConfig, progress: bool = True) -> ScoreOutput:
    """Score the solution tokens of ``traces`` (dicts with id, task, prompt, solution) under ``model``.

    Each trace is tokenized as ``BOS + prompt + solution`` (prompt and solution separately, no special
    tokens; the tokenizer's EOS stands in for a missing BOS), left-truncated to the model's context
    length. Only solution tokens are scored, and of those only the last ``cfg.window`` (``0`` = the
    whole solution); a token needs one token of context, so after truncation the first kept token is
    never scored. With ``cfg.batch_size > 1`` traces are batched longest first with right padding; with
    ``cfg.auto_batch`` a batch that runs out of memory is retried at half the size (down to 1).
    The LM head is applied ``cfg.chunk_tokens`` rows at a time, or, per ``cfg.kernel``, fused with the
    statistics in one Triton kernel on CUDA (:func:`~proxy_exp.score.lm_head.score_hidden_states`).
    The model is put in eval mode for the call and restored afterwards.
    """
    if cfg.window < 0:
        raise ValueError(f"score.window must be >= 0 (0 = whole solution), got {cfg.window}")
    if cfg.batch_size < 0:
        raise ValueError(f"score.batch_size must be >= 1, or 0 for auto, got {cfg.batch_size}")
    if cfg.chunk_tokens < 1:
        raise ValueError(f"score.chunk_tokens must be >= 1, got {cfg.chunk_tokens}")
    if cfg.kernel not in KERNELS:
        raise ValueError(f"score.kernel must be one of {KERNELS}, got {cfg.kernel!r}")
    if cfg.stats_backend not in STATS_BACKENDS:
        raise ValueError(f"score.stats_backend must be one of {STATS_BACKENDS}, got {cfg.stats_backend!r}")
    if cfg.packing not in PACKINGS:
        raise ValueError(f"score.packing must be one of {PACKINGS}, got {cfg.packing!r}")
    _check_traces(traces)
    max_pos = max_positions(model)
    if max_pos < 2:
        raise ValueError(f"the model's context length is {max_pos}; scoring needs at least 2 positions")
    head = lm_head_of(model)
    n_vocab = model.get_output_embeddings().weight.shape[0]
    device = input_device(model)
    kernel, note = resolve_kernel(cfg.kernel, head, head_device(head) or device)
    if note and note not in _SAID:  # once per process: the log of a long job says it at its start
        _SAID.add(note)
        LOG.warning("score.kernel=%s: %s", cfg.kernel, note)
    sequences = _sequences(tokenizer, traces, cfg.window, max_pos, n_vocab, cfg.long_prompt) if traces else []
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else _bos_id(tokenizer)
    batch_size, auto_batch = resolve_batch_size(cfg, device, max((len(s.ids) for s in sequences), default=1))
    order = list(range(len(sequences)))
    if batch_size > 1:
        order.sort(key=lambda i: -len(sequences[i].ids))
    n_logits = sum(len(s.targets) for s in sequences) * n_vocab
    packed = cfg.packing == Packing.packed or (
        cfg.packing == Packing.auto and attention_implementation(model) in VARLEN_ATTENTION)
    compiled = cfg.stats_backend == StatsBackend.compiled or (
        cfg.stats_backend == StatsBackend.auto and device.type == "cpu" and n_logits >= COMPILE_MIN_LOGITS)

    was_training = model.training
    model.eval()
    stats: dict[int, dict[str, np.ndarray]] = {}
    try:
        with tqdm(total=len(sequences), desc="score", unit="trace", disable=not progress) as bar:
            start = 0
            while start < len(order):
                batch = [sequences[i] for i in order[start : start + batch_size]]
                try:
                    arrays = _score_batch(model, head, batch, pad_id, device, cfg, check=start == 0, compiled=compiled,
                                          packed=packed, kernel=kernel)
                except (torch.OutOfMemoryError, RuntimeError) as e:
                    if not is_oom(e) or not auto_batch or batch_size == 1:
                        raise
                    # as lm-evaluation-harness's auto batch size: halve and retry the same traces (longest first,
                    # so the first batch that fits bounds every later one)
                    batch_size = max(1, batch_size // 2)
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                    bar.set_postfix(batch_size=batch_size)
                    continue
                offset = 0
                for seq in batch:
                    n = len(seq.targets)
                    stats[seq.index] = {key: value[offset : offset + n] for key, value in arrays.items()}
                    offset += n
                bar.update(len(batch))
                start += len(batch)
    finally:
        model.train(was_training)

    if sequences:
        tokens = _to_frame(traces, sequences, stats)
    else:
        tokens = pd.DataFrame({c: pd.Series(dtype=_column_dtype(c)) for c in TOKEN_COLUMNS})
    return ScoreOutput(tokens=tokens, tokens_forward=sum(len(s.ids) for s in sequences), n_traces=len(sequences),
                       batch_size=batch_size, kernel=kernel, kernel_note=note)


def _score_batch(model, head, batch, pad_id: int, device, cfg: ScoreConfig, check: bool,
                 compiled: bool = False, packed: bool = False, kernel: str = "torch") -> dict[str, np.ndarray]:
    """One batch through the body (right-padded rows, or ``packed`` into one padding-free row), then the LM head +
    statistics on its scored rows only."""
    if check:
        n = min(_HEAD_CHECK_TOKENS, len(batch[0].ids))
        check_lm_head(model, torch.tensor(batch[0].ids[:n], device=device)[None])
        if packed and len(batch) > 1:
            check_packed_forward(model, batch[0].ids[:_HEAD_CHECK_TOKENS], batch[1].ids[:_HEAD_CHECK_TOKENS])
    rows, targets = [], []
    if packed and len(batch) > 1:
        input_ids = torch.tensor([t for seq in batch for t in seq.ids], device=device)
        position_ids = torch.cat([torch.arange(len(seq.ids)) for seq in batch]).to(device)
        hidden = final_hidden_states(model, input_ids[None], None, position_ids=position_ids[None])[0]
        offset = 0
        for seq in batch:
            at = torch.as_tensor(seq.targets, device=device) + offset
            rows.append(hidden[at - 1])
            targets.append(input_ids[at])
            offset += len(seq.ids)
    else:
        length = max(len(s.ids) for s in batch)
        input_ids = torch.full((len(batch), length), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), length), dtype=torch.long)
        for row, seq in enumerate(batch):
            input_ids[row, : len(seq.ids)] = torch.tensor(seq.ids)
            attention_mask[row, : len(seq.ids)] = 1
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        hidden = final_hidden_states(model, input_ids, attention_mask)
        for row, seq in enumerate(batch):
            at = torch.as_tensor(seq.targets, device=device)
            rows.append(hidden[row, at - 1])
            targets.append(input_ids[row, at])
    token_ids = torch.cat(targets)
    batch_stats = score_hidden_states(torch.cat(rows), head, token_ids, cfg.chunk_tokens, kernel, compiled)
    arrays = {key: value.cpu().numpy() for key, value in batch_stats.items()}
    arrays["token_id"] = token_ids.cpu().numpy()
    return arrays


def token_frequencies(token_ids: Iterable[int] | np.ndarray, vocab_size: int, smoothing: float) -> np.ndarray:
    """Relative token frequencies ``(count_v + smoothing) / sum_u (count_u + smoothing)`` over ``vocab_size`` ids."""
    if smoothing < 0:
        raise ValueError(f"score.freq_smoothing must be >= 0, got {smoothing}")
    ids = np.asarray(token_ids if isinstance(token_ids, np.ndarray) else np.fromiter(token_ids, dtype=np.int64))
    ids = ids.astype(np.int64, copy=False).ravel()
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        raise ValueError(f"token ids must lie in [0, {vocab_size}); found {ids.min()}..{ids.max()}: wrong vocab_size?")
    counts = np.bincount(ids, minlength=vocab_size).astype(np.float64) + smoothing
    total = counts.sum()
    if total <= 0:
        raise ValueError("no tokens to count and score.freq_smoothing is 0: token frequencies are undefined")
    return counts / total
