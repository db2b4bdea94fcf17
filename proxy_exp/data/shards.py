"""Token shards: every input file of a source tokenized once, and a source read as fixed-length sequences.

Writing (:func:`write_shard`, the work of a tokenize unit): the documents of one input file (a packaged source is
one input) are read one at a time on a reader thread, batched (``tokenize.batch_docs`` documents or
``tokenize.batch_bytes`` bytes), encoded with the fast tokenizer's ``encode_batch_fast`` (parallel over
``RAYON_NUM_THREADS`` threads when ``TOKENIZERS_PARALLELISM`` is on, see :func:`tokenizer_threads`), eos appended
after each document, and streamed to disk, so memory stays flat whatever the file's size. A shard is a folder
``<cache>/tokens/<key>/`` in datatrove's token-file layout:

- ``tokens.ds``: the token ids, little-endian uint16 (vocabularies below 65,536) or uint32;
- ``tokens.ds.index``: uint64 end offset (in tokens, eos included) of each document;
- ``docs.parquet``: per document its id and metadata fields (``corpus.id_field``, ``corpus.metadata_fields``) where
  the file has them, its line or row, UTF-8 bytes and tokens;
- ``meta.json`` (the shard's manifest): the input (path, size, mtime), reader settings, tokenizer fingerprint,
  dtype, eos, counts, throughput.

The key hashes the input's manifest entry (path, size, mtime_ns: the file is not read to find its shard), the
reader settings, the tokenizer's fingerprint and the eos id. The folder is written under a temporary name and
renamed when complete, so a shard folder that exists is complete; a failed file leaves nothing that looks done.

Reading (:class:`TokenSource`): a source's shards in input order, concatenated into one token stream (file sources:
whole documents up to the one that crosses ``max_bytes``), cut into ``seq_len``-token sequences (the remainder that
does not fill one is dropped). The stream does not depend on ``seq_len`` or on the budget, so one tokenization
serves every sequence length and model size.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import json
import os
import queue
import shutil
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from proxy_exp.config import TokenizeConfig
from proxy_exp.data.corpora import packaged_documents, packaged_files, shard_reader_key
from proxy_exp.data.readers import (Document, checksum_index, identities, input_files, is_file_source, iter_file,
                                    manifest, manifest_digest, record_checksums)
from proxy_exp.data.tokenizer import tokenizer_fingerprint
from proxy_exp.files import file_sha256, tmp_dir

SHARD_FORMAT = 1
TOKENS_FILE, INDEX_FILE, DOCS_FILE, META_FILE = "tokens.ds", "tokens.ds.index", "docs.parquet", "meta.json"
MAX_OPEN_SHARDS = 64


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype holding every id of a vocabulary of ``vocab_size`` (ids < vocab_size)."""
    return np.dtype("<u2") if vocab_size < 2**16 else np.dtype("<u4")


def id_bound(tokenizer) -> int:
    """One more than the largest token id the tokenizer can emit."""
    vocab = tokenizer.get_vocab()
    return max(len(tokenizer), (max(vocab.values()) + 1) if vocab else 0)


# ------------------------------------------------------------------------------------------------ what to write
@dataclass(frozen=True)
class ShardInput:
    """One input of a source: a file (``path``), or the whole of a packaged source (``path`` None)."""

    entry: dict  # its identity (readers.identities): {path, size, mtime_ns}, or {packaged, files: digest of the
    # package files' stats}; a file touched, copied or moved since it was tokenized keeps the entry it had then
    path: str | None = None
    stat: dict | None = None  # the file's manifest entry now (path, size, mtime_ns)

    @property
    def label(self) -> str:
        return self.path or f"packaged:{self.entry['packaged']}"


def packaged_entry(src) -> dict:
    files = manifest(packaged_files(str(src.source)))
    return {"packaged": str(src.source), "files": manifest_digest(files), "n_files": len(files)}


def source_inputs(src, files: list[str] | None = None, cache_dir: str | None = None) -> list[ShardInput]:
    """The inputs of source ``src`` in reading order (``files``: a subset of its input files, as a unit has), each
    named by its identity in the checksum index of ``cache_dir``."""
    if not is_file_source(src):
        return [ShardInput(packaged_entry(src))]
    stats = manifest(input_files(src) if files is None else list(files))
    return [ShardInput(e, s["path"], s) for e, s in zip(identities(stats, cache_dir), stats)]


def _record_checksums(cache_dir: str, inputs: list[ShardInput]) -> None:
    """Tell the checksum index what this tokenization read: each file's bytes' sha256 under its stat now, and the
    identity its shard is keyed by (files whose stat the index knows already are left out)."""
    index = checksum_index(cache_dir)
    new = [i for i in inputs if i.stat is not None and (i.stat["path"], i.stat["size"], i.stat["mtime_ns"])
           not in index.by_stat]
    record_checksums(cache_dir, [i.stat | {"sha256": file_sha256(i.path), "identity": i.entry} for i in new])


def shard_key(src, inp: ShardInput, tok_fp: str, eos: int) -> str:
    blob = json.dumps({"input": inp.entry, "reader": shard_reader_key(src), "tokenizer": tok_fp, "eos": int(eos),
                       "format": SHARD_FORMAT}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def shard_path(cache_dir: str, key: str) -> str:
    return os.path.join(cache_dir, "tokens", key)


def shard_done(path: str) -> bool:
    return os.path.isfile(os.path.join(path, META_FILE))


# ------------------------------------------------------------------------------------------------------ writing
@contextlib.contextmanager
def tokenizer_threads(threads: int):
    """Parallel ``encode_batch`` inside: TOKENIZERS_PARALLELISM on and RAYON_NUM_THREADS=threads (entry points turn
    parallelism off; a process's Rayon pool takes its size from the first parallel call)."""
    old = {k: os.environ.get(k) for k in ("TOKENIZERS_PARALLELISM", "RAYON_NUM_THREADS")}
    os.environ["TOKENIZERS_PARALLELISM"] = "true" if threads > 1 else "false"
    os.environ["RAYON_NUM_THREADS"] = str(max(1, threads))
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _batches(docs: Iterator[Document], max_docs: int, max_bytes: int) -> Iterator[list[Document]]:
    batch: list[Document] = []
    size = 0
    for doc in docs:
        batch.append(doc)
        size += len(doc.text)
        if len(batch) >= max_docs or size >= max_bytes:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _prefetch(it: Iterator, depth: int = 2) -> Iterator:
    """``it`` produced on a background thread, ``depth`` items ahead; its exceptions re-raised here."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    end = object()

    def work():
        try:
            for item in it:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(end)
        except BaseException as e:  # noqa: BLE001 (handed to the consumer)
            q.put(e)

    t = threading.Thread(target=work, daemon=True, name="proxy-exp-reader")
    t.start()
    try:
        while True:
            item = q.get()
            if item is end:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        t.join(timeout=5)


def _encodings(tokenizer, texts: list[str]) -> list:
    """Encodings of ``texts`` (no special tokens): one call of the Rust tokenizer's ``encode_batch_fast``, which
    releases the GIL while its threads work; a slow tokenizer's id lists."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return backend.encode_batch_fast(texts, add_special_tokens=False)
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def _ids(encodings: list) -> list[list[int]]:
    return [e if isinstance(e, list) else e.ids for e in encodings]


def join_documents(ids: list[list[int]], eos: int, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate documents' ids with eos after each; also return each document's end offset."""
    lens = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids)) + 1
    ends = np.cumsum(lens)
    n = int(ends[-1]) if len(ids) else 0
    flat = np.empty(n, dtype=dtype)
    is_eos = np.zeros(n, dtype=bool)
    is_eos[ends - 1] = True
    flat[is_eos] = eos
    flat[~is_eos] = np.fromiter(itertools.chain.from_iterable(ids), dtype=dtype, count=n - len(ids))
    return flat, ends


class _DocsWriter:
    """docs.parquet written in row groups of about ``rows`` documents (few, large groups: cheap to write)."""

    def __init__(self, path: str, meta_fields: list[str], rows: int = 65536):
        self.path, self.meta_fields, self.rows = path, meta_fields, rows
        self.cols: dict[str, list] = {k: [] for k in ("id", "line", "n_bytes", "n_tokens", *meta_fields)}
        self.writer = None

    def add(self, batch: list[Document], n_bytes: list[int], n_tokens: np.ndarray) -> None:
        c = self.cols
        c["id"] += [d.id for d in batch]
        c["line"] += [d.line for d in batch]
        c["n_bytes"] += n_bytes
        c["n_tokens"] += n_tokens.tolist()
        for k in self.meta_fields:
            c[k] += [d.meta.get(k) for d in batch]
        if len(c["id"]) >= self.rows:
            self.flush()

    def flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self.cols["id"]:
            return
        types = {"id": pa.string(), "line": pa.int64(), "n_bytes": pa.int64(), "n_tokens": pa.int64()}
        table = pa.table({k: pa.array(v, types.get(k, pa.string())) for k, v in self.cols.items()})
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.path, table.schema)
        self.writer.write_table(table)
        self.cols = {k: [] for k in self.cols}

    def close(self) -> None:
        self.flush()
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def write_shard(src, inp: ShardInput, tokenizer, tok_dir: str, cache_dir: str, settings: TokenizeConfig,
                bar=None) -> dict:
    """Tokenize one input of ``src`` into its shard (reused when it exists); returns the shard's meta.json."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError(f"the tokenizer in {tok_dir!r} has no eos token; token shards need one between documents")
    tok_fp = tokenizer_fingerprint(tok_dir)
    final = shard_path(cache_dir, shard_key(src, inp, tok_fp, eos))
    if shard_done(final):
        return read_meta(final)
    dtype = token_dtype(id_bound(tokenizer))
    meta_fields = [k for k in dict.fromkeys(src.metadata_fields) if k not in ("id", "line", "n_bytes", "n_tokens")]
    os.makedirs(os.path.dirname(final), exist_ok=True)
    tmp = tmp_dir(final)
    os.makedirs(tmp)
    t0 = time.time()
    total = n_docs = n_bytes = 0
    writer = _DocsWriter(os.path.join(tmp, DOCS_FILE), meta_fields)
    docs = packaged_documents(src) if inp.path is None else iter_file(src, inp.path)
    try:
        with open(os.path.join(tmp, TOKENS_FILE), "wb") as out, open(os.path.join(tmp, INDEX_FILE), "wb") as index, \
                ThreadPoolExecutor(1, thread_name_prefix="proxy-exp-encode") as pool:

            def store(batch: list[Document], encodings: list) -> None:
                nonlocal total, n_docs, n_bytes
                flat, ends = join_documents(_ids(encodings), eos, dtype)
                out.write(flat.tobytes())
                (ends + total).astype("<u8").tofile(index)
                sizes = [len(d.text.encode("utf-8")) for d in batch]
                writer.add(batch, sizes, np.diff(ends, prepend=0) - 1)
                total += flat.size
                n_docs += len(batch)
                n_bytes += sum(sizes)
                if bar is not None:
                    bar.update(sum(sizes))

            # three stages at once: the reader thread parses batch k+2, the encoder (Rust, GIL released) encodes
            # batch k+1, and this thread joins and writes batch k
            pending = None
            for batch in _prefetch(_batches(docs, max(1, settings.batch_docs), max(1, settings.batch_bytes))):
                job = pool.submit(_encodings, tokenizer, [d.text for d in batch])
                if pending is not None:
                    store(pending[0], pending[1].result())
                pending = (batch, job)
            if pending is not None:
                store(pending[0], pending[1].result())
        writer.close()
        if n_docs == 0:
            raise ValueError(f"{inp.label}: no document with text (every {src.text_field!r} is empty); remove the "
                             f"file from corpus.paths")
        seconds = max(time.time() - t0, 1e-9)
        meta = {"format": SHARD_FORMAT, "input": inp.entry, "reader": shard_reader_key(src), "dtype": dtype.name,
                "eos_token_id": int(eos), "vocab_size": len(tokenizer), "tokenizer_fingerprint": tok_fp,
                "tokenizer_dir": tok_dir, "documents": n_docs, "tokens": total, "bytes": n_bytes,
                "seconds": round(seconds, 3), "mb_per_s": round(n_bytes / 1e6 / seconds, 3),
                "threads": int(os.environ.get("RAYON_NUM_THREADS", "0") or 0)}
        with open(os.path.join(tmp, META_FILE), "w") as f:
            json.dump(meta, f, indent=2)
        try:
            os.rename(tmp, final)
        except OSError:
            if not shard_done(final):
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another process finished the same shard first
    except BaseException:
        with contextlib.suppress(Exception):
            writer.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


def tokenize_inputs(src, inputs: list[ShardInput], tokenizer, tok_dir: str, cache_dir: str,
                    settings: TokenizeConfig, progress: bool = True, desc: str = "") -> list[dict]:
    """Every input's shard (the missing ones written, with a progress bar over their bytes)."""
    from tqdm.auto import tqdm

    eos = tokenizer.eos_token_id
    tok_fp = tokenizer_fingerprint(tok_dir)
    todo = [i for i in inputs if not shard_done(shard_path(cache_dir, shard_key(src, i, tok_fp, eos)))]
    out = []
    with tqdm(unit="B", unit_scale=True, disable=not (progress and todo), dynamic_ncols=True,
              desc=desc or f"tokenize {src.name}") as bar, tokenizer_threads(settings.threads):
        for inp in inputs:
            out.append(write_shard(src, inp, tokenizer, tok_dir, cache_dir, settings, bar=bar))
    _record_checksums(cache_dir, inputs)
    return out


def read_meta(path: str) -> dict:
    with open(os.path.join(path, META_FILE)) as f:
        return json.load(f)


# ------------------------------------------------------------------------------------------------------ reading
@functools.lru_cache(maxsize=4096)
def _doc_bytes(path: str) -> np.ndarray:
    import pyarrow.parquet as pq

    return pq.read_table(os.path.join(path, DOCS_FILE), columns=["n_bytes"]).column(0).to_numpy()


def _doc_ends(path: str) -> np.ndarray:
    return np.fromfile(os.path.join(path, INDEX_FILE), dtype="<u8")


class TokenSource:
    """One source read as ``num_sequences`` rows of ``seq_len`` token ids: its shards in order, concatenated
    (``usable`` tokens of each), cut into sequences. Shards are memory-mapped on use (at most 64 at once)."""

    def __init__(self, name: str, shard_dirs: list[str], seq_len: int, usable: list[int] | None = None,
                 metas: list[dict] | None = None):
        if seq_len < 1:
            raise ValueError(f"seq_len must be >= 1, got {seq_len}")
        self.name = name
        self.shards = [os.path.abspath(p) for p in shard_dirs]
        self.metas = metas if metas is not None else [read_meta(p) for p in self.shards]  # as the opener read them
        dtypes = {m["dtype"] for m in self.metas}
        if len(dtypes) > 1:
            raise ValueError(f"source {name!r}: shards of different dtypes {sorted(dtypes)} (different tokenizers?)")
        self._dtype = np.dtype(dtypes.pop() if dtypes else "<u2")
        self.usable = [int(m["tokens"]) for m in self.metas] if usable is None else [int(u) for u in usable]
        self.ends = np.cumsum(np.asarray(self.usable, dtype=np.int64))
        self.starts = self.ends - np.asarray(self.usable, dtype=np.int64)
        self._seq_len = int(seq_len)
        self._maps: OrderedDict[int, np.ndarray] = OrderedDict()

    # ---------------------------------------------------------------- sizes
    @property
    def seq_len(self) -> int:
        return self._seq_len

    @property
    def total_tokens(self) -> int:
        """Tokens in the stream (before cutting into sequences)."""
        return int(self.ends[-1]) if len(self.ends) else 0

    @property
    def num_sequences(self) -> int:
        return self.total_tokens // self._seq_len

    @property
    def num_tokens(self) -> int:
        """Tokens the sequences hold (``num_sequences * seq_len``)."""
        return self.num_sequences * self._seq_len

    @property
    def dtype(self) -> np.dtype:
        return self._dtype

    @property
    def meta(self) -> dict:
        return {"source": self.name, "shards": len(self.shards), "seq_len": self._seq_len,
                "num_sequences": self.num_sequences, "num_tokens": self.num_tokens, "tokens": self.total_tokens,
                "documents": sum(m["documents"] for m in self.metas), "bytes": sum(m["bytes"] for m in self.metas),
                "dtype": self._dtype.name}

    def __len__(self) -> int:
        return self.num_sequences

    # ---------------------------------------------------------------- data
    def _map(self, i: int) -> np.ndarray:
        m = self._maps.get(i)
        if m is None:
            m = np.memmap(os.path.join(self.shards[i], TOKENS_FILE), dtype=self._dtype, mode="r",
                          shape=(int(self.metas[i]["tokens"]),))
            self._maps[i] = m
            if len(self._maps) > MAX_OPEN_SHARDS:
                self._maps.popitem(last=False)
        else:
            self._maps.move_to_end(i)
        return m

    def tokens(self, start: int, stop: int) -> np.ndarray:
        """Tokens ``[start, stop)`` of the stream (int64), across shard boundaries."""
        out = np.empty(stop - start, dtype=np.int64)
        pos = start
        i = int(np.searchsorted(self.ends, start, side="right"))
        while pos < stop:
            take = min(stop, int(self.ends[i])) - pos
            off = pos - int(self.starts[i])
            out[pos - start:pos - start + take] = self._map(i)[off:off + take]
            pos += take
            i += 1
        return out

    def get_batch(self, indices) -> np.ndarray:
        """The sequences at ``indices`` as an int64 array of shape ``(len(indices), seq_len)``."""
        idx = np.asarray(indices, dtype=np.int64)
        if idx.ndim != 1:
            raise ValueError(f"indices must be 1-D, got shape {idx.shape}")
        if idx.size and (idx.min() < 0 or idx.max() >= self.num_sequences):
            raise IndexError(f"sequence index out of range [0, {self.num_sequences}): min {idx.min()}, max "
                             f"{idx.max()} (source {self.name})")
        L = self._seq_len
        out = np.empty((idx.size, L), dtype=np.int64)
        for r, s in enumerate(idx.tolist()):
            out[r] = self.tokens(s * L, (s + 1) * L)
        return out

    def __getstate__(self) -> dict:  # pickle the paths, not the mapped data
        return {"name": self.name, "shards": self.shards, "seq_len": self._seq_len, "usable": self.usable}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["name"], state["shards"], state["seq_len"], state["usable"])

    def __repr__(self) -> str:
        return (f"TokenSource({self.name!r}, shards={len(self.shards)}, num_sequences={self.num_sequences}, "
                f"seq_len={self.seq_len}, dtype={self.dtype})")


def _usable(src, shard_dirs: list[str], metas: list[dict]) -> list[int]:
    """Tokens of each shard a source trains on (``metas``: the shards' meta.json): file sources stop after the
    document that crosses max_bytes."""
    if not is_file_source(src) or src.max_bytes <= 0:
        return [int(m["tokens"]) for m in metas]
    out, seen = [], 0
    for path, m in zip(shard_dirs, metas):
        if seen >= src.max_bytes:
            out.append(0)
            continue
        if seen + m["bytes"] < src.max_bytes:
            out.append(int(m["tokens"]))
            seen += m["bytes"]
            continue
        cum = seen + np.cumsum(_doc_bytes(path))
        last = int(np.searchsorted(cum, src.max_bytes, side="left"))  # the document that reaches max_bytes
        out.append(int(_doc_ends(path)[last]))
        seen = int(cum[last])
    return out


def source_shard_dirs(src, tokenizer, tok_dir: str, cache_dir: str, files: list[str] | None = None,
                      inputs: list[ShardInput] | None = None) -> list[tuple[ShardInput, str]]:
    """(input, shard folder) of every input of ``src``, in order (the folders may not exist yet)."""
    tok_fp = tokenizer_fingerprint(tok_dir)
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError(f"the tokenizer in {tok_dir!r} has no eos token; token shards need one between documents")
    return [(i, shard_path(cache_dir, shard_key(src, i, tok_fp, eos)))
            for i in (inputs or source_inputs(src, files, cache_dir))]


def open_source(src, tokenizer, tok_dir: str, seq_len: int, cache_dir: str, tokenize_missing: bool = True,
                settings: TokenizeConfig | None = None, progress: bool = True, name: str = "") -> TokenSource:
    """Source ``src`` as a :class:`TokenSource`; shards that do not exist are written here (``tokenize_missing``)
    or raise FileNotFoundError naming the tokenize unit's work that is missing."""
    pairs = source_shard_dirs(src, tokenizer, tok_dir, cache_dir)
    missing = [i for i, p in pairs if not shard_done(p)]
    if missing:
        if not tokenize_missing:
            raise FileNotFoundError(f"source {src.name!r}: {len(missing)} of {len(pairs)} token shards are missing "
                                    f"(first: {missing[0].label}); run its tokenize units first")
        tokenize_inputs(src, missing, tokenizer, tok_dir, cache_dir, settings or TokenizeConfig(), progress,
                        desc=f"tokenize {name or src.name}")
    dirs = [p for _, p in pairs]
    metas = [read_meta(p) for p in dirs]
    view = TokenSource(name or src.name, dirs, seq_len, _usable(src, dirs, metas), metas)
    if view.num_sequences == 0:
        raise ValueError(f"source {name or src.name!r} gave {view.total_tokens} tokens, fewer than one sequence of "
                         f"seq_len={seq_len}; add data, raise corpus.max_bytes or lower pretrain.seq_len")
    return view
