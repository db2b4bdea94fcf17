"""Documents from files in the field's formats, one at a time (memory bounded whatever a shard's size).

Formats (``corpus.source``):

- ``jsonl``: JSON lines (Dolma's layout: one object per line with ``text`` and often ``id``, ``source``), plain or
  compressed by name: ``.jsonl`` / ``.json`` / ``.ndjson``, with ``.gz`` (gzip) or ``.zst`` / ``.zstd`` (zstandard,
  multi-frame files included).
- ``parquet``: Parquet files, read in row batches of the text column (and the id / metadata columns) only.
- ``hf_dataset``: a Hugging Face dataset on local disk: a ``save_to_disk`` folder (its Arrow files, memory-mapped;
  for a saved DatasetDict the ``corpus.hf_split`` folder), or data files read through a datasets builder
  (``corpus.hf_builder``: json, parquet, csv, text, arrow) in streaming mode.
- ``text_files``: each file (plain, ``.gz`` or ``.zst``) is one UTF-8 document.

:func:`input_files` expands ``corpus.paths`` (files, folders, globs with ``**``) to a sorted list of input files,
:func:`manifest` gives their (path, size, mtime) without reading them, and :func:`iter_file` yields the
:class:`Document` s of one file. A file that is not what its name says, a line that is not JSON, a record without
the text field, a truncated compressed file or an empty shard raises ValueError naming the file (and the line or
row) and the fix. Readers are our own: datatrove's JsonlReader logs and skips lines it cannot parse, and its
readers come with its pipeline executor; the formats are read with the libraries datatrove uses (gzip,
zstandard, pyarrow, datasets). Tokenizing is our own too (:mod:`proxy_exp.data.shards`, in datatrove's ``.ds`` /
``.ds.index`` layout): datatrove's DocumentTokenizer is a pipeline step that writes one file per executor rank and
by default shuffles the documents in it, and dolma's ``tokens`` command shuffles the input paths and chunks of
documents and packs several inputs into each ``.npy`` memmap (with a ``.csv.gz`` of offsets); neither gives one
shard per input file keyed by its manifest, so that a changed or added file re-tokenizes only itself, and neither
package is a dependency here.
"""
from __future__ import annotations

import contextlib
import glob
import gzip
import io
import json
import os
from dataclasses import dataclass, field
from typing import Any, Iterator

from proxy_exp.config import CorpusSource, HfBuilder

FILE_SOURCES = frozenset({"text_files", "jsonl", "parquet", "hf_dataset"})
COMPRESSIONS = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd"}
JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
PARQUET_SUFFIXES = (".parquet", ".pq")
HF_BUILDERS = tuple(str(b) for b in HfBuilder if str(b))  # the data-file builders (none: a saved folder)
GZIP_MAGIC, ZSTD_MAGIC, PARQUET_MAGIC = b"\x1f\x8b", b"\x28\xb5\x2f\xfd", b"PAR1"
READ_BATCH_ROWS = 1024


@dataclass
class Document:
    """One document: its text, id and metadata fields where the file has them, and its line (JSON lines, 1-based)
    or row (Parquet, datasets, 0-based)."""

    text: str
    id: str | None = None
    meta: dict[str, str] = field(default_factory=dict)
    line: int = 0


def split_compression(path: str) -> tuple[str, str | None]:
    """``(name without the compression suffix, "gzip" | "zstd" | None)``."""
    for suffix, kind in COMPRESSIONS.items():
        if path.endswith(suffix):
            return path[: -len(suffix)], kind
    return path, None


def _is_saved_dataset(folder: str) -> bool:
    return os.path.isfile(os.path.join(folder, "state.json")) or os.path.isfile(os.path.join(folder, "dataset_dict.json"))


def _saved_dataset_files(folder: str, split: str) -> list[str]:
    """The Arrow files of a ``save_to_disk`` folder, in the dataset's order."""
    if os.path.isfile(os.path.join(folder, "dataset_dict.json")):
        with open(os.path.join(folder, "dataset_dict.json")) as f:
            splits = json.load(f).get("splits", [])
        if split not in splits:
            raise ValueError(f"{folder}: a saved DatasetDict without split {split!r} (splits: {splits}); "
                             f"set corpus.hf_split")
        folder = os.path.join(folder, split)
    with open(os.path.join(folder, "state.json")) as f:
        files = [os.path.join(folder, d["filename"]) for d in json.load(f).get("_data_files", [])]
    if not files:
        raise ValueError(f"{folder}: state.json lists no Arrow files: not a complete save_to_disk folder")
    return files


def _wanted(source: str, path: str, builder: str) -> bool:
    """Whether a file found under a folder belongs to a ``source`` corpus (by its name)."""
    base, _ = split_compression(path.lower())
    if source == "jsonl":
        return base.endswith(JSONL_SUFFIXES)
    if source == "parquet":
        return base.endswith(PARQUET_SUFFIXES)
    if source == "hf_dataset":
        ext = {"json": JSONL_SUFFIXES, "parquet": PARQUET_SUFFIXES, "csv": (".csv", ".tsv"), "text": (".txt",),
               "arrow": (".arrow",)}[builder]
        return base.endswith(ext)
    return not os.path.basename(path).startswith(".")


def _check_name(source: str, path: str) -> None:
    """A file named by corpus.paths must be of the corpus's format by its name."""
    base, _ = split_compression(path.lower())
    if source == "jsonl" and not base.endswith(JSONL_SUFFIXES):
        raise ValueError(f"{path}: not a JSON-lines file by its name (corpus.source=jsonl reads .jsonl, .json, "
                         f".ndjson, each optionally .gz / .zst); narrow corpus.paths or change corpus.source")
    if source == "parquet" and not base.endswith(PARQUET_SUFFIXES):
        raise ValueError(f"{path}: not a Parquet file by its name (.parquet); narrow corpus.paths or change "
                         f"corpus.source")
    if source == "text_files" and (base.endswith(JSONL_SUFFIXES) or base.endswith(PARQUET_SUFFIXES)):
        raise ValueError(f"{path}: a {'JSON-lines' if base.endswith(JSONL_SUFFIXES) else 'Parquet'} file under "
                         f"corpus.source=text_files (which reads each file as one plain-text document); set "
                         f"corpus.source={'jsonl' if base.endswith(JSONL_SUFFIXES) else 'parquet'}")


_MEMO: dict | None = None  # inside listing_memo(): {"files": source spec -> its files, "stat": path -> os.stat}


@contextlib.contextmanager
def listing_memo():
    """Inside: each file source's files are listed once and each file stat-ed once, whoever asks (a command plans,
    checks and prints hundreds of units over the same sources: each file was stat-ed ~29 times); outside (a job),
    every call looks at the files afresh."""
    global _MEMO
    outer = _MEMO
    _MEMO = {"files": {}, "stat": {}} if outer is None else outer
    try:
        yield
    finally:
        _MEMO = outer


def file_stat(path: str) -> os.stat_result:
    """``os.stat(path)``, once per path inside :func:`listing_memo`."""
    if _MEMO is None:
        return os.stat(path)
    st = _MEMO["stat"].get(path)
    if st is None:
        st = _MEMO["stat"][path] = os.stat(path)
    return st


def input_files(src) -> list[str]:
    """The input files of a file source: every ``src.paths`` entry (a file, a folder searched recursively for files
    of the format, or a glob) expanded and sorted, duplicates dropped; a saved HF dataset gives its Arrow files.
    Raises FileNotFoundError for an entry that matches nothing. Listed once per source inside :func:`listing_memo`."""
    if _MEMO is None:
        return _list_input_files(src)
    key = source_spec_key(src)
    if key not in _MEMO["files"]:
        _MEMO["files"][key] = _list_input_files(src)
    return list(_MEMO["files"][key])


def source_spec_key(src) -> str:
    """What names a file source's list of input files (its format, paths and builder): the key of per-command
    memos of that list and of its manifest's digest."""
    return json.dumps([str(src.source), list(src.paths), src.hf_builder, src.hf_split], default=str)


def _list_input_files(src) -> list[str]:
    source = str(src.source)
    if source not in FILE_SOURCES:
        raise ValueError(f"corpus {src.name!r}: source {source!r} reads no files of its own")
    if not src.paths:
        raise ValueError(f"corpus {src.name!r}: corpus.source={source} needs corpus.paths (files, folders or globs)")
    builder = src.hf_builder
    if source == "hf_dataset" and builder and builder not in HF_BUILDERS:
        raise ValueError(f"corpus {src.name!r}: hf_builder={builder!r}; use one of {', '.join(HF_BUILDERS)} "
                         f"(or '' for a save_to_disk folder)")
    files: list[str] = []
    for pattern in src.paths:
        expanded = os.path.expanduser(str(pattern))
        matches = sorted(glob.glob(expanded, recursive=True)) if glob.has_magic(expanded) else (
            [expanded] if os.path.exists(expanded) else [])
        found: list[str] = []
        for m in matches:
            if source == "hf_dataset" and not builder:
                if os.path.isdir(m) and _is_saved_dataset(m):
                    found += _saved_dataset_files(m, src.hf_split)
                elif not glob.has_magic(expanded):
                    raise ValueError(f"{m}: not a save_to_disk folder (no state.json / dataset_dict.json); for data "
                                     f"files set corpus.hf_builder to one of {', '.join(HF_BUILDERS)}")
            elif os.path.isdir(m):
                found += sorted(os.path.join(d, n) for d, _, names in os.walk(m) for n in names
                                if _wanted(source, n, builder))
            elif os.path.isfile(m):
                if glob.has_magic(expanded) and not _wanted(source, m, builder):
                    continue
                if source != "hf_dataset":
                    _check_name(source, m)
                found.append(m)
        if not found:
            raise FileNotFoundError(f"corpus {src.name!r}: corpus.paths entry {pattern!r} matches no file of "
                                    f"corpus.source={source}; check the path or glob")
        files += [os.path.abspath(p) for p in found]
    return list(dict.fromkeys(files))


def manifest(files: list[str]) -> list[dict[str, Any]]:
    """``[{path, size, mtime_ns}]`` of input files: what caches and unit ids are keyed by (no file is read)."""
    out = []
    for p in files:
        st = file_stat(p)
        out.append({"path": p, "size": st.st_size, "mtime_ns": st.st_mtime_ns})
    return out


# ------------------------------------------------------------------------------------ content checksums of inputs
CHECKSUMS_DIR = "inputs"  # under the cache folder: what tokenization learnt of its input files' contents
_CHECKSUM_CACHE: str | None = None  # inside checksums_at(): the cache folder whose index names inputs


@dataclass
class ChecksumIndex:
    """What tokenization recorded of its input files: for each (path, size, mtime) it read, the sha256 of the file's
    bytes and the manifest entry the file was known by then (its *identity*). An input file is named in unit ids and
    shard keys by :meth:`identity`: a file seen before is known by the entry it had then, and a file whose stat is new
    (touched, copied, moved) but whose bytes were seen before, under the same path when there is one, by that entry;
    anything else by its own entry. Only files of a size seen before are read (to checksum them), so a plan over new
    data reads nothing."""

    by_stat: dict = field(default_factory=dict)  # (path, size, mtime_ns) -> record
    by_sha: dict = field(default_factory=dict)  # sha256 -> records, in file order
    sizes: set = field(default_factory=set)

    def add(self, record: dict) -> None:
        key = (record["path"], record["size"], record["mtime_ns"])
        if key in self.by_stat:
            return
        self.by_stat[key] = record
        self.by_sha.setdefault(record["sha256"], []).append(record)
        self.sizes.add(record["size"])

    def identity(self, entry: dict) -> dict:
        known = self.by_stat.get((entry["path"], entry["size"], entry["mtime_ns"]))
        if known is not None:
            return dict(known["identity"])
        if entry["size"] not in self.sizes:
            return entry
        from proxy_exp.files import file_sha256

        seen = self.by_sha.get(file_sha256(entry["path"]), [])
        same_path = [r for r in seen if r["path"] == entry["path"]]
        return dict((same_path or seen)[0]["identity"]) if seen else entry


_INDEXES: dict[str, tuple[tuple, ChecksumIndex]] = {}


def checksum_index(cache_dir: str) -> ChecksumIndex:
    """The index of ``<cache_dir>/inputs/*.json`` (one file per tokenization), reloaded when a file is added."""
    folder = os.path.join(cache_dir, CHECKSUMS_DIR)
    names = tuple(sorted(n for n in os.listdir(folder) if n.endswith(".json"))) if os.path.isdir(folder) else ()
    cached = _INDEXES.get(folder)
    if cached is not None and cached[0] == names:
        return cached[1]
    index = ChecksumIndex()
    for name in names:
        with open(os.path.join(folder, name), encoding="utf-8") as f:
            for record in json.load(f):
                index.add(record)
    _INDEXES[folder] = (names, index)
    return index


def record_checksums(cache_dir: str, records: list[dict]) -> None:
    """Add ``records`` ({path, size, mtime_ns, sha256, identity}) to the index: one file named by its content, written
    whole (tokenize tasks on several nodes add theirs at once)."""
    from proxy_exp.files import write_json

    if not records:
        return
    import hashlib

    blob = json.dumps(records, sort_keys=True)
    folder = os.path.join(cache_dir, CHECKSUMS_DIR)
    os.makedirs(folder, exist_ok=True)
    write_json(os.path.join(folder, hashlib.sha256(blob.encode()).hexdigest()[:20] + ".json"), records, indent=None)


@contextlib.contextmanager
def checksums_at(cache_dir: str):
    """Inside: :func:`identity_manifest` names files through the checksum index of ``cache_dir`` (a plan, a job
    that computes its own unit id)."""
    global _CHECKSUM_CACHE
    outer, _CHECKSUM_CACHE = _CHECKSUM_CACHE, cache_dir
    try:
        yield
    finally:
        _CHECKSUM_CACHE = outer


def identity_manifest(files: list[str], cache_dir: str | None = None) -> list[dict[str, Any]]:
    """:func:`manifest` of ``files`` named by :func:`identities`: what unit ids and token shards are keyed by."""
    return identities(manifest(files), cache_dir)


def identities(entries: list[dict[str, Any]], cache_dir: str | None = None) -> list[dict[str, Any]]:
    """Each manifest entry replaced by its identity (:class:`ChecksumIndex`) when a checksum index is in force
    (``cache_dir``, else the one of :func:`checksums_at`), so that a touched, copied or moved file whose bytes are
    unchanged is the same input."""
    cache = cache_dir or _CHECKSUM_CACHE
    if not cache:
        return entries
    index = checksum_index(cache)
    return [index.identity(e) for e in entries] if index.sizes else entries


def manifest_digest(entries: list[dict[str, Any]]) -> str:
    """sha256 (16 hex digits) of a :func:`manifest`: what a file source's inputs are known by."""
    import hashlib

    blob = json.dumps([[e["path"], e["size"], e["mtime_ns"]] for e in entries])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------------ byte streams
def _open_bytes(path: str) -> io.BufferedIOBase:
    """The decompressed bytes of ``path`` (gzip / zstandard by its name), checked against what the name says."""
    _, kind = split_compression(path)
    raw = open(path, "rb")
    head = raw.read(4)
    raw.seek(0)
    if kind is None and head[:2] == GZIP_MAGIC:
        raw.close()
        raise ValueError(f"{path}: gzip-compressed data under a name without .gz; rename it to {path}.gz")
    if kind is None and head == ZSTD_MAGIC:
        raw.close()
        raise ValueError(f"{path}: zstandard-compressed data under a name without .zst; rename it to {path}.zst")
    if kind == "gzip":
        if head[:2] != GZIP_MAGIC:
            raw.close()
            raise ValueError(f"{path}: not gzip data although the name ends in .gz (first bytes {head!r}); "
                             f"rename or replace the file")
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    if kind == "zstd":
        import zstandard

        if head != ZSTD_MAGIC:
            raw.close()
            raise ValueError(f"{path}: not zstandard data although the name ends in .zst (first bytes {head!r}); "
                             f"rename or replace the file")
        try:
            check_zstd_frames(path)
        except ValueError:
            raw.close()
            raise
        reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True, closefd=True)
        return io.BufferedReader(reader, buffer_size=1 << 20)  # type: ignore[arg-type]
    return raw  # type: ignore[return-value]


def check_zstd_frames(path: str) -> None:
    """Walk the frame and block headers of a zstandard file (seeks only, nothing is decompressed) and raise
    ValueError naming the file when it ends inside a frame: zstandard's stream reader would stop there silently."""
    size = os.path.getsize(path)
    pos = frames = 0
    with open(path, "rb") as f:
        def at(offset: int, n: int) -> bytes:
            f.seek(offset)
            data = f.read(n)
            if len(data) < n:
                raise ValueError(f"{path}: truncated zstandard data (the file ends inside frame {frames + 1}, at byte "
                                 f"{size}); re-copy the file (a shard must be complete)")
            return data

        while pos < size:
            magic = int.from_bytes(at(pos, 4), "little")
            if 0x184D2A50 <= magic <= 0x184D2A5F:  # a skippable frame
                pos += 8 + int.from_bytes(at(pos + 4, 4), "little")
                continue
            if magic != 0xFD2FB528:
                raise ValueError(f"{path}: corrupt zstandard data (no frame magic at byte {pos}); re-copy the file")
            fhd = at(pos + 4, 1)[0]
            single = (fhd >> 5) & 1
            header = 1 + (0 if single else 1) + (0, 1, 2, 4)[fhd & 3] + ((1 if single else 0), 2, 4, 8)[fhd >> 6]
            pos += 4 + header
            while True:
                block = int.from_bytes(at(pos, 3), "little")
                kind = (block >> 1) & 3
                if kind == 3:
                    raise ValueError(f"{path}: corrupt zstandard data (reserved block type at byte {pos}); re-copy it")
                pos += 3 + (1 if kind == 1 else block >> 3)
                if block & 1:
                    break
            pos += 4 if (fhd >> 2) & 1 else 0
            if pos > size:
                at(size, 1)  # raises: truncated
            frames += 1


def _stream_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [EOFError, gzip.BadGzipFile, OSError]
    try:
        import zstandard

        errors.append(zstandard.ZstdError)
    except ImportError:  # pragma: no cover - zstandard is a dependency
        pass
    return tuple(errors)


def _corrupt(path: str, e: BaseException, line: int) -> ValueError:
    return ValueError(f"{path}: truncated or corrupt compressed data after line {line} ({type(e).__name__}: {e}); "
                      f"re-copy the file (a shard must be complete)")


# ------------------------------------------------------------------------------------------------------ readers
def _record(path: str, where: str, obj: Any, src) -> Document | None:
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: {where} is a JSON {type(obj).__name__}, not an object with a "
                         f"{src.text_field!r} field")
    text = obj.get(src.text_field)
    if text is None:
        fields = ", ".join(sorted(map(str, obj))[:12]) or "none"
        raise ValueError(f"{path}: {where} has no field {src.text_field!r} (fields: {fields}); set corpus.text_field "
                         f"to the field that holds the text")
    if not isinstance(text, str):
        raise ValueError(f"{path}: {where} field {src.text_field!r} is a {type(text).__name__}, not a string; set "
                         f"corpus.text_field to the field that holds the text")
    doc_id = obj.get(src.id_field)
    meta = {k: str(obj[k]) for k in src.metadata_fields if obj.get(k) is not None}
    return Document(text, None if doc_id is None else str(doc_id), meta)


def _jsonl(path: str, src) -> Iterator[Document]:
    n = 0
    line = 0
    errors = _stream_errors()
    with _open_bytes(path) as f:
        while True:
            try:
                raw = f.readline()
            except errors as e:
                raise _corrupt(path, e, line) from e
            if not raw:
                break
            line += 1
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
                raise ValueError(f"{path}: line {line} is not a JSON object ({type(e).__name__}: {str(e)[:120]}); a "
                                 f"JSON-lines shard holds one object per line (binary or compressed data under a "
                                 f".jsonl name?)") from None
            doc = _record(path, f"line {line}", obj, src)
            doc.line = line
            n += 1
            if doc.text:
                yield doc
    if n == 0:
        raise ValueError(f"{path}: empty shard (no JSON records); remove it from corpus.paths or replace it")


def _check_columns(path: str, names: list[str], src, kind: str) -> list[str]:
    if src.text_field not in names:
        raise ValueError(f"{path}: {kind} without column {src.text_field!r} (columns: {', '.join(names[:12])}); set "
                         f"corpus.text_field to the column that holds the text")
    return [c for c in dict.fromkeys([src.text_field, src.id_field, *src.metadata_fields]) if c in names]


def _rows(path: str, batches, columns: list[str], src, first_row: int = 0) -> Iterator[Document]:
    row = first_row
    for batch in batches:
        data = batch if isinstance(batch, dict) else batch.to_pydict()
        texts = data[src.text_field]
        ids = data.get(src.id_field) if src.id_field in columns else None
        metas = {k: data[k] for k in src.metadata_fields if k in columns and k != src.text_field}
        for i, text in enumerate(texts):
            if text is None:
                raise ValueError(f"{path}: row {row} has a null {src.text_field!r}; drop such rows or set "
                                 f"corpus.text_field")
            if not isinstance(text, str):
                raise ValueError(f"{path}: row {row} column {src.text_field!r} is a {type(text).__name__}, not a "
                                 f"string; set corpus.text_field to the column that holds the text")
            if text:
                yield Document(text, None if ids is None or ids[i] is None else str(ids[i]),
                               {k: str(v[i]) for k, v in metas.items() if v[i] is not None}, row)
            row += 1


def _parquet(path: str, src) -> Iterator[Document]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise ValueError(f"{path}: not a readable Parquet file ({type(e).__name__}: {e}); re-copy or replace it") from None
    with pf:
        columns = _check_columns(path, pf.schema_arrow.names, src, "a Parquet file")
        if pf.metadata.num_rows == 0:
            raise ValueError(f"{path}: empty shard (0 rows); remove it from corpus.paths or replace it")
        try:
            yield from _rows(path, pf.iter_batches(batch_size=READ_BATCH_ROWS, columns=columns), columns, src)
        except (pa.ArrowException, OSError) as e:
            raise ValueError(f"{path}: corrupt Parquet data ({type(e).__name__}: {e}); re-copy the file") from None


def _hf_dataset(path: str, src) -> Iterator[Document]:
    import datasets

    if not src.hf_builder:  # one Arrow file of a save_to_disk folder, memory-mapped
        try:
            ds = datasets.Dataset.from_file(path)
        except Exception as e:  # noqa: BLE001 (pyarrow and datasets raise several types)
            raise ValueError(f"{path}: not a readable Arrow file of a saved dataset ({type(e).__name__}: {e})") from None
        columns = _check_columns(path, list(ds.column_names), src, "a saved dataset")
        if len(ds) == 0:
            raise ValueError(f"{path}: empty shard (0 rows); remove it from the dataset or corpus.paths")
        yield from _rows(path, ds.select_columns(columns).iter(batch_size=READ_BATCH_ROWS), columns, src)
        return
    try:
        ds = datasets.load_dataset(src.hf_builder, data_files=[path], split="train", streaming=True)
        rows = iter(ds)
        first = next(rows, None)
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"{path}: datasets' {src.hf_builder!r} builder cannot read it ({type(e).__name__}: "
                         f"{str(e)[:200]})") from None
    if first is None:
        raise ValueError(f"{path}: empty shard (no rows); remove it from corpus.paths or replace it")
    columns = _check_columns(path, list(first), src, f"a {src.hf_builder} file")
    row, rec = 0, first
    while rec is not None:
        yield from _rows(path, [{c: [rec.get(c)] for c in columns}], columns, src, row)
        row += 1
        try:
            rec = next(rows, None)
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"{path}: datasets' {src.hf_builder!r} builder failed at row {row} ({type(e).__name__}: "
                             f"{str(e)[:200]})") from None


def _text_file(path: str, src) -> Iterator[Document]:
    with _open_bytes(path) as f:
        try:
            data = f.read()
        except _stream_errors() as e:
            raise _corrupt(path, e, 0) from e
    if not data:
        raise ValueError(f"{path}: empty file; remove it from corpus.paths")
    if data[:4] == PARQUET_MAGIC or b"\x00" in data[:4096]:
        raise ValueError(f"{path}: binary data under corpus.source=text_files (which reads plain UTF-8 text); "
                         f"use source=parquet / jsonl / hf_dataset for such files")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte {e.start}); text_files reads UTF-8 plain text; convert it "
                         f"or use the source of its format") from None
    yield Document(text, os.path.basename(path), {}, 0)


_FILE_READERS = {"jsonl": _jsonl, "parquet": _parquet, "hf_dataset": _hf_dataset, "text_files": _text_file}


def iter_file(src, path: str) -> Iterator[Document]:
    """The documents of one input file of source ``src``, in file order (empty texts skipped)."""
    source = str(src.source)
    if source not in _FILE_READERS:
        raise ValueError(f"corpus {src.name!r}: source {source!r} is not a file format "
                         f"({', '.join(sorted(_FILE_READERS))})")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: input file of corpus {src.name!r} does not exist (moved since the plan?)")
    return _FILE_READERS[source](path, src)


def is_file_source(src) -> bool:
    return str(src.source) in FILE_SOURCES


assert FILE_SOURCES < set(CorpusSource)
