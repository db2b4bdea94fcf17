"""The shared tokenizer: a cached byte-level BPE, or a pretrained one."""
from __future__ import annotations

import dataclasses
import os

import pytest

from proxy_exp.config import TokenizerConfig
from proxy_exp.data import tokenizer as tokenizer_mod
from proxy_exp.data.corpora import read_documents
from proxy_exp.data.tokenizer import build_tokenizer, tokenizer_fingerprint

from tests.helpers import small_corpus as _corpus  # noqa: E402
from tests.proxy_exp.data.conftest import TOK_CFG  # noqa: E402


def test_bpe_tokenizer_round_trips_text(bpe, tok_corpora):
    tok, tok_dir = bpe
    assert len(tok) == TOK_CFG.vocab_size
    assert tok.eos_token == tok.bos_token == tok.unk_token == "<|endoftext|>" and tok.pad_token == "<pad>"
    assert tok.pad_token_id != tok.eos_token_id
    samples = [next(read_documents(c))[:3000] for c in tok_corpora.values()]
    samples.append("naïve café — ∑ x² \t\n  two  spaces , before punctuation .\r\n🙂")
    for text in samples:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert len(ids) < len(text.encode("utf-8"))  # merges learnt: fewer tokens than bytes
        assert tok.decode(ids) == text
    assert os.path.isfile(os.path.join(tok_dir, "tokenizer.json"))


def test_bpe_cache_hit_does_not_retrain(bpe, cache_dir, tok_corpora, monkeypatch):
    tok, tok_dir = bpe
    mtime = os.stat(os.path.join(tok_dir, "tokenizer.json")).st_mtime_ns

    def no_training(*args, **kwargs):
        raise AssertionError("the cached tokenizer should have been loaded, not retrained")

    monkeypatch.setattr(tokenizer_mod, "train_bpe", no_training)
    again, again_dir = build_tokenizer(TOK_CFG, tok_corpora, cache_dir)
    assert again_dir == tok_dir
    assert os.stat(os.path.join(tok_dir, "tokenizer.json")).st_mtime_ns == mtime
    assert again.get_vocab() == tok.get_vocab()
    # a different sample (or vocab size) is a different tokenizer
    with pytest.raises(AssertionError, match="retrained"):
        build_tokenizer(dataclasses.replace(TOK_CFG, sample_bytes_per_corpus=30_000), tok_corpora, cache_dir)


def test_pretrained_tokenizer_and_fingerprint(bpe, cache_dir, tmp_path):
    tok, tok_dir = bpe
    loaded, loaded_dir = build_tokenizer(TokenizerConfig(kind="pretrained", path=tok_dir), {}, cache_dir)
    text = "def f(x):\n    return x + 1\n"
    assert loaded_dir == tok_dir and loaded(text)["input_ids"] == tok(text)["input_ids"]
    assert tokenizer_fingerprint(tok_dir) == tokenizer_fingerprint(tok_dir)
    other_dir = build_tokenizer(dataclasses.replace(TOK_CFG, vocab_size=400), {"w": _corpus("wikipedia", 20_000)},
                                cache_dir)[1]
    assert tokenizer_fingerprint(other_dir) != tokenizer_fingerprint(tok_dir)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_tokenizer(TokenizerConfig(kind="pretrained", path=str(tmp_path / "nowhere")), {}, cache_dir)
    with pytest.raises(ValueError, match="valid kinds"):
        build_tokenizer(TokenizerConfig(kind="sentencepiece"), {}, cache_dir)


def test_plans_find_a_saved_tokenizer_without_loading_it(bpe, cache_dir, tok_corpora):
    """Plans read a saved tokenizer's eos id (which names its token shards) with the Rust tokenizers library alone:
    it must be the id transformers loads, for the BPE and for OLMo's bare tokenizer.json; before a tokenizer is saved
    the plan finds nothing and creates nothing."""
    from omegaconf import OmegaConf

    from launchers.app import CONF_DIR
    from proxy_exp.data.tokenizer import saved_tokenizer, saved_tokenizer_dir

    tok, tok_dir = bpe
    assert saved_tokenizer_dir(TOK_CFG, tok_corpora, cache_dir) == tok_dir
    assert saved_tokenizer(tok_dir).eos_token_id == tok.eos_token_id is not None
    olmo = TokenizerConfig(**OmegaConf.to_container(OmegaConf.load(f"{CONF_DIR}/tokenizer/olmo.yaml")))
    empty = os.path.join(cache_dir, "fresh")
    assert saved_tokenizer_dir(olmo, {}, empty) == "" and not os.path.exists(empty)
    loaded, olmo_dir = build_tokenizer(olmo, {}, empty)
    assert saved_tokenizer_dir(olmo, {}, empty) == olmo_dir
    assert saved_tokenizer(olmo_dir).eos_token_id == loaded.eos_token_id is not None
    assert saved_tokenizer_dir(dataclasses.replace(TOK_CFG, vocab_size=333), tok_corpora, cache_dir) == ""
