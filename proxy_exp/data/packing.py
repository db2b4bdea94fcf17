"""Packed token shards: a corpus tokenized once into fixed-length sequences on disk.

:func:`pack_corpus` tokenizes the documents of a corpus (fast tokenizer, batches of documents), appends
eos after each document, concatenates them, cuts the stream into sequences of ``seq_len`` tokens (the
remainder that does not fill a sequence is dropped), and writes ``tokens.bin`` (uint16 when the ids fit,
else uint32) and ``meta.json`` to ``<cache_dir>/packed/<hash>``. The hash covers the corpus text
fingerprint, the tokenizer fingerprint, the eos id, ``seq_len`` and ``max_tokens``; the folder is
written under a tmp name and renamed when complete, so a folder that exists is complete.

:func:`batch_indices` gives the sequences of one optimizer step from (seed, step) alone: no loader state.
"""
from __future__ import annotations

import functools
import hashlib
import itertools
import json
import os
import shutil
import time
import uuid

import numpy as np
from tqdm.auto import tqdm

from proxy_exp.config import CorpusConfig
from proxy_exp.data.corpora import corpus_fingerprint, read_documents
from proxy_exp.data.tokenizer import tokenizer_fingerprint

PACK_FORMAT_VERSION = 1
TOKENS_FILE = "tokens.bin"
META_FILE = "meta.json"
DOCS_PER_BATCH = 1000


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype holding every id of a vocabulary of ``vocab_size`` (ids < vocab_size)."""
    return np.dtype(np.uint16) if vocab_size < 2**16 else np.dtype(np.uint32)


def _id_bound(tokenizer) -> int:
    """One more than the largest token id the tokenizer can emit."""
    vocab = tokenizer.get_vocab()
    return max(len(tokenizer), (max(vocab.values()) + 1) if vocab else 0)


class PackedCorpus:
    """Read-only view of a packed shard: ``num_sequences`` rows of ``seq_len`` token ids (memory-mapped)."""

    def __init__(self, path: str):
        self.path = os.path.abspath(path)
        meta_path = os.path.join(self.path, META_FILE)
        if not os.path.isfile(meta_path):
            raise FileNotFoundError(f"{meta_path} not found: {path!r} is not a packed corpus (see pack_corpus)")
        with open(meta_path) as f:
            self.meta: dict = json.load(f)
        self._open()

    def _open(self) -> None:
        self._data = np.memmap(os.path.join(self.path, TOKENS_FILE), dtype=np.dtype(self.meta["dtype"]), mode="r",
                               shape=(self.meta["num_sequences"], self.meta["seq_len"]))

    @property
    def num_sequences(self) -> int:
        return int(self.meta["num_sequences"])

    @property
    def seq_len(self) -> int:
        return int(self.meta["seq_len"])

    @property
    def num_tokens(self) -> int:
        """Tokens held in the shard (``num_sequences * seq_len``)."""
        return int(self.meta["num_tokens"])

    @property
    def dtype(self) -> np.dtype:
        return self._data.dtype

    def __len__(self) -> int:
        return self.num_sequences

    def get_batch(self, indices: np.ndarray) -> np.ndarray:
        """The sequences at ``indices`` as an int64 array of shape ``(len(indices), seq_len)``."""
        idx = np.asarray(indices, dtype=np.int64)
        if idx.ndim != 1:
            raise ValueError(f"indices must be 1-D, got shape {idx.shape}")
        if idx.size and (idx.min() < 0 or idx.max() >= self.num_sequences):
            raise IndexError(f"sequence index out of range [0, {self.num_sequences}): "
                             f"min {idx.min()}, max {idx.max()} ({self.path})")
        return self._data[idx].astype(np.int64)

    def __getstate__(self) -> dict:  # pickle the path, not the mapped data
        return {"path": self.path, "meta": self.meta}

    def __setstate__(self, state: dict) -> None:
        self.path, self.meta = state["path"], state["meta"]
        self._open()

    def __repr__(self) -> str:
        return (f"PackedCorpus({self.path!r}, num_sequences={self.num_sequences}, seq_len={self.seq_len}, "
                f"dtype={self.dtype})")


def _encode(tokenizer, docs: list[str]) -> list[list[int]]:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return [e.ids for e in backend.encode_batch_fast(docs, add_special_tokens=False)]
    return tokenizer(docs, add_special_tokens=False)["input_ids"]


def _join_documents(ids: list[list[int]], eos: int, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate documents' ids with eos after each; also return each document's end offset."""
    ends = np.cumsum(np.fromiter((len(d) + 1 for d in ids), dtype=np.int64, count=len(ids)))
    n = int(ends[-1]) if len(ids) else 0
    flat = np.empty(n, dtype=dtype)
    is_eos = np.zeros(n, dtype=bool)
    is_eos[ends - 1] = True
    flat[is_eos] = eos
    flat[~is_eos] = np.fromiter(itertools.chain.from_iterable(ids), dtype=dtype, count=n - len(ids))
    return flat, ends


def _batches(docs, size: int):
    batch: list[str] = []
    for doc in docs:
        batch.append(doc)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def pack_corpus(cfg: CorpusConfig, tokenizer, tokenizer_dir: str, seq_len: int, cache_dir: str,
                max_tokens: int = 0, progress: bool = True) -> PackedCorpus:
    """Tokenize and pack corpus ``cfg`` into ``seq_len``-token sequences; reuse the cache when it exists.

    ``max_tokens > 0`` stops reading once that many tokens (eos included) are packed. Raises ValueError
    when the tokenizer has no eos token or the corpus does not fill one sequence.
    """
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    if max_tokens < 0:
        raise ValueError(f"max_tokens must be >= 0 (0 = the whole corpus), got {max_tokens}")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError(f"the tokenizer in {tokenizer_dir!r} has no eos token; packing needs one between documents")
    corpus_fp = corpus_fingerprint(cfg)
    tok_fp = tokenizer_fingerprint(tokenizer_dir)
    key = json.dumps({"corpus": corpus_fp, "tokenizer": tok_fp, "eos": int(eos), "seq_len": seq_len,
                      "max_tokens": max_tokens, "format": PACK_FORMAT_VERSION}, sort_keys=True)
    final = os.path.join(cache_dir, "packed", hashlib.sha256(key.encode()).hexdigest()[:16])
    if os.path.isfile(os.path.join(final, META_FILE)):
        return PackedCorpus(final)

    dtype = token_dtype(_id_bound(tokenizer))
    os.makedirs(os.path.dirname(final), exist_ok=True)
    tmp = os.path.join(os.path.dirname(final), f".tmp-{os.path.basename(final)}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    os.makedirs(tmp)
    t0 = time.time()
    total = n_bytes = n_docs = 0
    try:
        with open(os.path.join(tmp, TOKENS_FILE), "wb") as out, \
                tqdm(total=cfg.max_bytes or None, unit="B", unit_scale=True, disable=not progress,
                     desc=f"pack {cfg.name}") as bar:
            for batch in _batches(read_documents(cfg), DOCS_PER_BATCH):
                ids = _encode(tokenizer, batch)
                chunk, ends = _join_documents(ids, eos, dtype)
                if max_tokens > 0 and total + chunk.size >= max_tokens:
                    # keep whole documents up to the one that crosses max_tokens
                    last = int(np.searchsorted(ends, max_tokens - total))
                    chunk = chunk[: ends[last]]
                    batch = batch[: last + 1]
                out.write(chunk.tobytes())
                total += chunk.size
                batch_bytes = sum(len(d.encode("utf-8")) for d in batch)
                n_bytes += batch_bytes
                n_docs += len(batch)
                bar.update(batch_bytes)
                if max_tokens > 0 and total >= max_tokens:
                    break
            keep = min(total, max_tokens) if max_tokens > 0 else total
            num_sequences = keep // seq_len
            if num_sequences == 0:
                raise ValueError(f"corpus {cfg.name!r} gave {total} tokens, fewer than one sequence of "
                                 f"seq_len={seq_len}; raise corpus.max_bytes or lower seq_len")
            out.truncate(num_sequences * seq_len * dtype.itemsize)
        seconds = max(time.time() - t0, 1e-9)
        meta = {
            "format": PACK_FORMAT_VERSION, "corpus": cfg.name, "source": cfg.source, "dtype": dtype.name,
            "seq_len": seq_len, "num_sequences": num_sequences, "num_tokens": num_sequences * seq_len,
            "tokens_read": total, "tokens_dropped": total - num_sequences * seq_len, "documents": n_docs,
            "bytes_read": n_bytes, "max_tokens": max_tokens, "eos_token_id": int(eos), "vocab_size": len(tokenizer),
            "corpus_fingerprint": corpus_fp, "tokenizer_fingerprint": tok_fp, "tokenizer_dir": tokenizer_dir,
            "seconds": round(seconds, 3), "mb_per_s": round(n_bytes / 1e6 / seconds, 3),
        }
        with open(os.path.join(tmp, META_FILE), "w") as f:
            json.dump(meta, f, indent=2)
        try:
            os.rename(tmp, final)
        except OSError:
            if not os.path.isfile(os.path.join(final, META_FILE)):
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another process finished the same shard first
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return PackedCorpus(final)


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
