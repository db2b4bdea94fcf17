"""The packaged corpora and local text files, read deterministically."""
from __future__ import annotations

import dataclasses
import gzip
import json
import os

import pytest

from proxy_exp.config import CorpusConfig
from proxy_exp.data import corpora as corpora_mod
from proxy_exp.data.corpora import CORPUS_SOURCES, corpus_fingerprint, read_documents
from proxy_exp.data.packages import package_dir

from tests.helpers import PACKAGE_SOURCES  # noqa: E402
from tests.helpers import SMALL_CORPUS_BYTES as SMALL, small_corpus as _corpus  # noqa: E402


# --------------------------------------------------------------------------- corpora
@pytest.mark.parametrize("source", PACKAGE_SOURCES)
def test_corpus_source_yields_text_deterministically(source):
    cfg = _corpus(source)
    docs = list(read_documents(cfg))
    assert docs and all(isinstance(d, str) and d for d in docs)
    total = sum(len(d.encode("utf-8")) for d in docs)
    assert SMALL - 4 < total <= SMALL  # stops at max_bytes, cutting the last document
    assert list(read_documents(cfg)) == docs
    first = corpus_fingerprint(cfg)
    corpora_mod._FINGERPRINTS.clear()  # recompute from the files, not the memo
    assert corpus_fingerprint(cfg) == first and len(first) == 16
    assert corpus_fingerprint(dataclasses.replace(cfg, max_bytes=SMALL // 2)) != first
    # a shorter read is a prefix of the longer one
    short = list(read_documents(dataclasses.replace(cfg, max_bytes=SMALL // 2)))
    assert "".join(short) == "".join(docs)[: len("".join(short))]


def test_corpus_sources_differ_and_champ_is_model_text():
    heads = {s: next(read_documents(_corpus(s, 10_000))) for s in PACKAGE_SOURCES}
    assert len(set(heads.values())) == len(PACKAGE_SOURCES)
    champ = list(read_documents(_corpus("champ_math", 50_000)))
    with open(os.path.join(package_dir("champ_dataset"), "dataset_files", "v0.json")) as f:
        problems = json.load(f)["problems"]
    human = {m["text"] for p in problems.values() for c in (p.get("conversations") or {}).values()
             for m in c["messages"] if not m["role"].startswith("Model")}
    human |= {p["_raw_text"] for p in problems.values()}
    assert not human & set(champ[:-1])


def test_text_files_source(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "b.txt").write_text("second file\n")
    (tmp_path / "a.txt").write_text("first file\n")
    with gzip.open(tmp_path / "sub" / "c.txt.gz", "wt") as f:
        f.write("gzipped file\n")
    cfg = CorpusConfig(name="local", source="text_files", max_bytes=0,
                       paths=[str(tmp_path / "*.txt"), str(tmp_path / "**" / "*.gz")])
    assert list(read_documents(cfg)) == ["first file\n", "second file\n", "gzipped file\n"]
    fp = corpus_fingerprint(cfg)
    (tmp_path / "a.txt").write_text("first file, edited\n")
    assert corpus_fingerprint(cfg) != fp  # the memo is keyed by the files' state
    with pytest.raises(FileNotFoundError, match="matches no file"):
        list(read_documents(dataclasses.replace(cfg, paths=[str(tmp_path / "*.md")])))


def test_unknown_corpus_source():
    with pytest.raises(ValueError, match="valid sources: " + ", ".join(CORPUS_SOURCES)):
        list(read_documents(_corpus("common_crawl")))
