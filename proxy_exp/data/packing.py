"""Packed token sequences: a corpus's token shards read as fixed-length sequences, and the order a run reads them in.

:func:`pack_corpus` is the one-call path (tests, benchmarks, scripts): it tokenizes the source's missing token
shards in this process (:mod:`proxy_exp.data.shards`; in a campaign, tokenize units do this first, as Slurm array
tasks) and returns the source as a :class:`PackedCorpus` (a :class:`proxy_exp.data.shards.TokenSource`): the shards'
token streams concatenated, eos after each document, cut into ``seq_len``-token sequences (the remainder that does
not fill a sequence is dropped). Nothing depends on the run's budget: every model size reads a prefix of the same
order.

:func:`batch_indices` gives the sequences of one optimizer step from (seed, step) alone: no loader state.
"""
from __future__ import annotations

import functools

import numpy as np

from proxy_exp.config import CorpusConfig, TokenizeConfig
from proxy_exp.data.shards import TokenSource, open_source, token_dtype

PackedCorpus = TokenSource
__all__ = ["PackedCorpus", "batch_indices", "pack_corpus", "token_dtype"]


def pack_corpus(cfg: CorpusConfig, tokenizer, tokenizer_dir: str, seq_len: int, cache_dir: str,
                progress: bool = True, settings: TokenizeConfig | None = None) -> PackedCorpus:
    """Source ``cfg`` as ``seq_len``-token sequences, tokenizing (in this process) the shards that are missing.

    Raises ValueError when the tokenizer has no eos token or the source does not fill one sequence."""
    return open_source(cfg, tokenizer, tokenizer_dir, seq_len, cache_dir, tokenize_missing=True, settings=settings,
                       progress=progress)


@functools.lru_cache(maxsize=4)
def _epoch_permutation(num_sequences: int, seed: int, epoch: int) -> np.ndarray:
    perm = np.random.default_rng(seed + epoch).permutation(num_sequences)
    perm.flags.writeable = False
    return perm


def batch_indices(num_sequences: int, step: int, batch_size: int, seed: int) -> np.ndarray:
    """Sequence indices of the global batch of optimizer step ``step`` (0-based).

    Position ``p = step * batch_size + i`` of the stream reads sequence ``perm_e[p % num_sequences]`` where
    ``e = p // num_sequences`` and ``perm_e = default_rng(seed + e).permutation(num_sequences)``: every
    epoch visits each sequence exactly once, and a batch that crosses an epoch boundary continues in the
    next epoch's permutation. The result depends on the arguments alone, so training resumes exactly.
    """
    if num_sequences < 1:
        raise ValueError(f"num_sequences must be >= 1, got {num_sequences}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    positions = step * batch_size + np.arange(batch_size, dtype=np.int64)
    epochs, offsets = np.divmod(positions, num_sequences)
    out = np.empty(batch_size, dtype=np.int64)
    for epoch in np.unique(epochs):
        mask = epochs == epoch
        out[mask] = _epoch_permutation(num_sequences, seed, int(epoch))[offsets[mask]]
    return out
