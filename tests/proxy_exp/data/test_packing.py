"""Token shards (one per input file, shared by every sequence length and model size) and the sequences read from
them; caches keyed by the input manifest: a changed file re-tokenizes, an unchanged one does not."""
from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest

from proxy_exp import units
from proxy_exp.config import CorpusConfig, TokenizeConfig, TokenizerConfig
from proxy_exp.data.corpora import packaged_documents
from proxy_exp.data.packing import PackedCorpus, batch_indices, pack_corpus, token_dtype
from proxy_exp.data.shards import DOCS_FILE, INDEX_FILE, TOKENS_FILE, open_source, source_shard_dirs
from proxy_exp.data.tokenizer import tokenizer_fingerprint

from tests.helpers import packaged_records, small_corpus as _corpus, write_jsonl  # noqa: E402

SETTINGS = TokenizeConfig(threads=2, batch_docs=64, batch_bytes=100_000)


def _stream(texts: list[str], tok) -> np.ndarray:
    ids = [tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for t in texts]
    return np.array([t for d in ids for t in d], dtype=np.int64)


def test_pack_corpus_decodes_to_the_token_stream(bpe, cache_dir):
    tok, tok_dir = bpe
    cfg = _corpus("shakespeare")
    packed = pack_corpus(cfg, tok, tok_dir, seq_len=64, cache_dir=cache_dir, progress=False, settings=SETTINGS)
    docs = [d.text for d in packaged_documents(cfg)]  # whole documents up to the one crossing max_bytes
    assert sum(len(d.encode()) for d in docs[:-1]) < cfg.max_bytes <= sum(len(d.encode()) for d in docs)
    stream = _stream(docs, tok)
    assert packed.num_sequences == len(stream) // 64 and packed.num_tokens == packed.num_sequences * 64
    got = packed.get_batch(np.arange(packed.num_sequences))
    assert got.dtype == np.int64 and got.shape == (packed.num_sequences, 64)
    np.testing.assert_array_equal(got.reshape(-1), stream[: packed.num_tokens])
    # the shard: datatrove's layout (tokens + uint64 document ends), per-document records, a manifest
    (shard,) = packed.shards
    ends = np.fromfile(os.path.join(shard, INDEX_FILE), dtype="<u8")
    np.testing.assert_array_equal(ends, np.cumsum([len(tok(d, add_special_tokens=False)["input_ids"]) + 1
                                                   for d in docs]))
    assert np.fromfile(os.path.join(shard, TOKENS_FILE), dtype="<u2").size == len(stream)
    import pyarrow.parquet as pq

    records = pq.read_table(os.path.join(shard, DOCS_FILE)).to_pydict()
    assert records["n_bytes"] == [len(d.encode()) for d in docs] and records["id"][0] == "shakespeare/0"
    meta = json.load(open(os.path.join(shard, "meta.json")))
    assert meta["dtype"] == "uint16" and packed.dtype == np.uint16 and meta["tokens"] == len(stream)
    assert meta["tokenizer_fingerprint"] == tokenizer_fingerprint(tok_dir) and meta["mb_per_s"] > 0
    clone = pickle.loads(pickle.dumps(packed))
    np.testing.assert_array_equal(clone.get_batch(np.array([3, 1])), packed.get_batch(np.array([3, 1])))
    with pytest.raises(IndexError, match="out of range"):
        packed.get_batch(np.array([packed.num_sequences]))
    with pytest.raises(ValueError, match="fewer than one sequence"):
        pack_corpus(_corpus("wikipedia", 200), tok, tok_dir, 4096, cache_dir, progress=False)


def test_one_tokenization_serves_every_sequence_length(bpe, cache_dir):
    tok, tok_dir = bpe
    cfg = _corpus("wikipedia")
    a = pack_corpus(cfg, tok, tok_dir, 32, cache_dir, progress=False)
    tokens = os.path.join(a.shards[0], TOKENS_FILE)
    mtime = os.stat(tokens).st_mtime_ns
    b = pack_corpus(cfg, tok, tok_dir, 48, cache_dir, progress=False)
    assert b.shards == a.shards and os.stat(tokens).st_mtime_ns == mtime  # not tokenized again
    np.testing.assert_array_equal(a.tokens(0, 48 * 5), b.get_batch(np.arange(5)).reshape(-1))
    assert not [n for n in os.listdir(os.path.dirname(a.shards[0])) if n.startswith(".tmp")]
    assert isinstance(PackedCorpus(a.name, a.shards, 16), PackedCorpus)


def test_file_sources_cap_at_whole_documents_like_packaged_ones(tmp_path, bpe):
    """max_bytes of a file source is applied when reading (the shards hold whole files) and gives exactly the
    documents a packaged source gives: whole ones, up to the one that crosses max_bytes, across file boundaries."""
    tok, tok_dir = bpe
    recs = packaged_records("wikipedia", 300)
    for i in range(3):
        write_jsonl(tmp_path / f"part-{i}.jsonl.gz", recs[i * 100:(i + 1) * 100])
    cap = sum(len(r["text"].encode()) for r in recs[:150]) - 5  # inside document 150, in the second file
    src = CorpusConfig(name="wiki_files", source="jsonl", paths=[str(tmp_path / "*.jsonl.gz")], max_bytes=cap)
    view = open_source(src, tok, tok_dir, 32, str(tmp_path / "cache"), settings=SETTINGS, progress=False)
    stream = _stream([r["text"] for r in recs[:150]], tok)
    assert view.total_tokens == len(stream) and len(view.shards) == 3 and view.usable[2] == 0
    np.testing.assert_array_equal(view.tokens(0, view.total_tokens), stream)
    packaged = open_source(_corpus("wikipedia", cap), tok, tok_dir, 32, str(tmp_path / "cache"), progress=False)
    assert packaged.total_tokens > 0  # the packaged reader caps the same way (its own document order)


def test_changed_input_file_retokenizes_and_an_unchanged_one_does_not(tmp_path, bpe):
    tok, tok_dir = bpe
    recs = packaged_records("wikipedia", 90)
    files = [write_jsonl(tmp_path / f"shard-{i}.jsonl", recs[i * 30:(i + 1) * 30]) for i in range(3)]
    src = CorpusConfig(name="local", source="jsonl", paths=[str(tmp_path / "*.jsonl")])
    cache = str(tmp_path / "cache")
    first = open_source(src, tok, tok_dir, 16, cache, settings=SETTINGS, progress=False)
    stamps = {p: os.stat(os.path.join(p, TOKENS_FILE)).st_mtime_ns for p in first.shards}
    unit_ids = [units.tokenize_unit_id(C_TOK, {}, src, [f]) for f in files]
    # an unchanged corpus: no work, same shards (found from the manifest, not by reading the files)
    assert [p for _, p in source_shard_dirs(src, tok, tok_dir, cache)] == first.shards
    with open(files[1], "a") as f:
        f.write(json.dumps({"id": "new", "text": "A new document appended to the middle shard."}) + "\n")
    second = open_source(src, tok, tok_dir, 16, cache, settings=SETTINGS, progress=False)
    assert second.shards[0] == first.shards[0] and second.shards[2] == first.shards[2]
    assert second.shards[1] != first.shards[1]  # only the changed file got a new shard
    for p in (first.shards[0], first.shards[2]):
        assert os.stat(os.path.join(p, TOKENS_FILE)).st_mtime_ns == stamps[p]  # not re-tokenized
    assert second.total_tokens > first.total_tokens
    new_ids = [units.tokenize_unit_id(C_TOK, {}, src, [f]) for f in files]
    assert new_ids[0] == unit_ids[0] and new_ids[2] == unit_ids[2] and new_ids[1] != unit_ids[1]
    assert units.train_unit_id(*_train_args(src)) != units.train_unit_id(*_train_args(
        CorpusConfig(name="local", source="jsonl", paths=[str(tmp_path / "shard-0.jsonl")])))


C_TOK = TokenizerConfig(kind="pretrained", path="/t")


def _train_args(src):
    from proxy_exp.config import ModelConfig, PretrainConfig

    return ModelConfig(), C_TOK, {}, src, PretrainConfig(), 0


def test_large_vocabularies_use_uint32(tmp_path, cache_dir):
    """A real word-level tokenizer whose ids exceed 65535: uint16 would wrap them."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    cfg = _corpus("wikipedia", 20_000)
    docs = [d.text for d in packaged_documents(cfg)]
    words = sorted({w for d in docs for w in d.split()})
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
    assert flat.max() > 2**16
    np.testing.assert_array_equal(flat, _stream(docs, tok)[: packed.num_tokens])
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
