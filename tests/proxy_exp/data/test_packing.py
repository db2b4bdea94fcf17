"""Packed token shards and the deterministic batch order."""
from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from proxy_exp.config import CorpusConfig
from proxy_exp.data.corpora import corpus_fingerprint, read_documents
from proxy_exp.data.packing import PackedCorpus, batch_indices, pack_corpus, token_dtype
from proxy_exp.data.tokenizer import tokenizer_fingerprint

from tests.helpers import small_corpus as _corpus  # noqa: E402


# --------------------------------------------------------------------------- packing
def _reference_stream(cfg: CorpusConfig, tok) -> tuple[list[str], np.ndarray]:
    docs = list(read_documents(cfg))
    ids = [tok(d, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for d in docs]
    return docs, np.array([t for d in ids for t in d], dtype=np.int64)


def test_pack_corpus_decodes_to_the_token_stream(bpe, cache_dir):
    tok, tok_dir = bpe
    cfg = _corpus("shakespeare")
    packed = pack_corpus(cfg, tok, tok_dir, seq_len=64, cache_dir=cache_dir, progress=False)
    docs, stream = _reference_stream(cfg, tok)
    assert packed.num_sequences == len(stream) // 64 and packed.num_tokens == packed.num_sequences * 64
    got = packed.get_batch(np.arange(packed.num_sequences))
    assert got.dtype == np.int64 and got.shape == (packed.num_sequences, 64)
    flat = got.reshape(-1)
    np.testing.assert_array_equal(flat, stream[: packed.num_tokens])
    # eos separates the documents: splitting the stream at eos gives the documents' text back
    eos_at = np.flatnonzero(flat == tok.eos_token_id)
    doc_ends = np.cumsum([len(tok(d, add_special_tokens=False)["input_ids"]) + 1 for d in docs])
    np.testing.assert_array_equal(eos_at, doc_ends[doc_ends <= packed.num_tokens] - 1)
    pieces = np.split(flat, eos_at + 1)
    assert [tok.decode(p[:-1].tolist()) for p in pieces[:-1]] == docs[: len(eos_at)]
    meta = packed.meta
    assert meta["dtype"] == "uint16" and packed.dtype == np.uint16  # vocab 512
    assert meta["bytes_read"] == sum(len(d.encode()) for d in docs) and meta["mb_per_s"] > 0
    assert meta["corpus_fingerprint"] == corpus_fingerprint(cfg)
    assert meta["tokenizer_fingerprint"] == tokenizer_fingerprint(tok_dir)


def test_pack_corpus_cache_and_max_tokens(bpe, cache_dir):
    tok, tok_dir = bpe
    cfg = _corpus("wikipedia")
    a = pack_corpus(cfg, tok, tok_dir, 32, cache_dir, progress=False)
    bin_path = os.path.join(a.path, "tokens.bin")
    mtime = os.stat(bin_path).st_mtime_ns
    b = pack_corpus(cfg, tok, tok_dir, 32, cache_dir, progress=False)
    assert b.path == a.path and os.stat(bin_path).st_mtime_ns == mtime
    assert not [n for n in os.listdir(os.path.dirname(a.path)) if n.startswith(".tmp")]
    assert pack_corpus(cfg, tok, tok_dir, 48, cache_dir, progress=False).path != a.path

    small = pack_corpus(cfg, tok, tok_dir, 32, cache_dir, max_tokens=1000, progress=False)
    assert small.path != a.path
    assert small.num_tokens == (1000 // 32) * 32
    assert small.meta["bytes_read"] < a.meta["bytes_read"]
    np.testing.assert_array_equal(small.get_batch(np.arange(small.num_sequences)),
                                  a.get_batch(np.arange(small.num_sequences)))
    with pytest.raises(IndexError, match="out of range"):
        small.get_batch(np.array([small.num_sequences]))
    clone = pickle.loads(pickle.dumps(small))
    np.testing.assert_array_equal(clone.get_batch(np.array([3, 1])), small.get_batch(np.array([3, 1])))
    assert isinstance(PackedCorpus(small.path), PackedCorpus)
    with pytest.raises(ValueError, match="fewer than one sequence"):
        pack_corpus(_corpus("wikipedia", 200), tok, tok_dir, 4096, cache_dir, progress=False)


def test_pack_corpus_uses_uint32_for_large_vocabularies(tmp_path, cache_dir):
    """A real word-level tokenizer whose ids exceed 65535: uint16 would wrap them."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    cfg = _corpus("wikipedia", 20_000)
    words = sorted({w for d in read_documents(cfg) for w in d.split()})
    vocab = {"<|endoftext|>": 0, "<unk>": 1}
    vocab.update({f"<filler_{i}>": i + 2 for i in range(70_000)})
    vocab.update({w: len(vocab) + i for i, w in enumerate(words)})
    raw = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|endoftext|>", unk_token="<unk>")
    tok_dir = str(tmp_path / "wordlevel")
    tok.save_pretrained(tok_dir)

    packed = pack_corpus(cfg, tok, tok_dir, 16, cache_dir, progress=False)
    assert packed.meta["dtype"] == "uint32" and packed.dtype == np.uint32
    flat = packed.get_batch(np.arange(packed.num_sequences)).reshape(-1)
    _, stream = _reference_stream(cfg, tok)
    assert flat.max() > 2**16
    np.testing.assert_array_equal(flat, stream[: packed.num_tokens])
    assert token_dtype(2**16 - 1) == np.uint16 and token_dtype(2**16) == np.uint32


# --------------------------------------------------------------------------- batch order
def test_batch_indices_cover_each_sequence_once_per_epoch():
    n, batch, seed = 10, 3, 7
    stream = np.concatenate([batch_indices(n, step, batch, seed) for step in range(20)])  # 60 = 6 epochs
    epochs = stream.reshape(6, n)
    for e in epochs:
        assert sorted(e.tolist()) == list(range(n))
    assert len({tuple(e) for e in epochs}) > 1  # each epoch has its own permutation
    # step alone decides: out of order, fresh calls give the same batches
    for step in (13, 0, 5, 19):
        np.testing.assert_array_equal(batch_indices(n, step, batch, seed), stream[step * batch:(step + 1) * batch])
    assert not np.array_equal(batch_indices(1000, 0, 16, seed), batch_indices(1000, 0, 16, seed + 100))
    big = batch_indices(4, 1, 10, 0)  # a batch larger than the data spans several epochs
    assert big.shape == (10,) and set(big.tolist()) == {0, 1, 2, 3}
    with pytest.raises(ValueError, match="batch_size"):
        batch_indices(10, 0, 0, 0)
