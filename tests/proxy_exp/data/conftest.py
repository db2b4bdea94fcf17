"""Shared fixtures of the data tests: one cached BPE over two packaged corpora."""
from __future__ import annotations


import pytest

from proxy_exp.config import TokenizerConfig
from proxy_exp.data.tokenizer import build_tokenizer

from tests.helpers import PACKAGE_SOURCES  # noqa: E402
from tests.helpers import small_corpus as _corpus  # noqa: E402


# --------------------------------------------------------------------------- tokenizer
TOK_CFG = TokenizerConfig(kind="bpe", vocab_size=512, sample_bytes_per_corpus=40_000)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def tok_corpora():
    return {s: _corpus(s) for s in PACKAGE_SOURCES}


@pytest.fixture(scope="module")
def bpe(cache_dir, tok_corpora):
    return build_tokenizer(TOK_CFG, tok_corpora, cache_dir)
