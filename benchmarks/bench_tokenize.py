"""Tokenization + packing throughput: proxy-exp's ``pack_corpus`` beside a plain HF loop, in one run (CPU).

- ``read only``: ``proxy_exp.data.corpora.read_documents`` alone (the floor: reading and decoding text);
- ``HF tokenizer() + list packing`` (the anchor): read, ``tokenizer(batch)["input_ids"]`` per 1,000
  documents, eos after each document, Python list concatenation, ``np.array``, cut into ``seq_len``
  rows, write the bytes (what a first script does);
- ``proxy-exp pack_corpus``: ``proxy_exp.data.packing.pack_corpus`` end to end (read, batched
  ``encode_batch_fast``, numpy joining, write, meta.json, rename), into a fresh cache folder each call.

All three paths give the same tokens (checked). Reported: MB/s of UTF-8 text, tokens/s, peak RSS
increase (sampled), and the ratio to the anchor. Tokenizers: the project's byte-level BPE trained by
``proxy_exp.data.tokenizer.build_tokenizer`` (conf/tokenizer/bpe.yaml, 4,096 tokens), and the OLMo
tokenizer file shipped in ``olmo_eval`` (50,280 tokens) when that package is installed.

  python benchmarks/bench_tokenize.py                       # python stdlib source, 4 MB
  python benchmarks/bench_tokenize.py --source shakespeare --max-bytes 0
  TOKENIZERS_PARALLELISM=true RAYON_NUM_THREADS=2 python benchmarks/bench_tokenize.py \
      --text-bytes 1000000000 --only floor,project --rounds 0     # a 1 GB corpus, both cores
``--text-bytes N`` writes the source's documents, repeated in order, as text files until N bytes (a
``text_files`` corpus); the anchor's Python lists would need ~10 GB of RAM at 1 GB, so leave it out with
``--only``. Tokenizers run on one thread unless ``TOKENIZERS_PARALLELISM=true`` (then on
``RAYON_NUM_THREADS`` threads).
"""
from __future__ import annotations

import argparse
import importlib.util
import itertools
import os
import shutil
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from measure import PeakMemory, gib, print_table  # noqa: E402

from proxy_exp.config import CorpusConfig, TokenizerConfig  # noqa: E402
from proxy_exp.data.corpora import read_documents  # noqa: E402
from proxy_exp.data.packing import DOCS_PER_BATCH, TOKENS_FILE, pack_corpus, token_dtype  # noqa: E402
from proxy_exp.data.tokenizer import build_tokenizer  # noqa: E402


def read_only(corpus: CorpusConfig) -> dict:
    n_bytes = sum(len(doc.encode("utf-8")) for doc in read_documents(corpus))
    return {"bytes": n_bytes, "tokens": None}


def hf_list_packing(corpus: CorpusConfig, tokenizer, seq_len: int, out_path: str) -> dict:
    """The anchor: HF tokenizer __call__ and Python lists."""
    eos = tokenizer.eos_token_id
    flat: list[int] = []
    n_bytes = 0
    docs = read_documents(corpus)
    while True:
        batch = list(itertools.islice(docs, DOCS_PER_BATCH))
        if not batch:
            break
        n_bytes += sum(len(doc.encode("utf-8")) for doc in batch)
        for ids in tokenizer(batch, add_special_tokens=False)["input_ids"]:
            flat.extend(ids)
            flat.append(eos)
    tokens = np.array(flat, dtype=token_dtype(len(tokenizer)))
    rows = tokens[: len(tokens) // seq_len * seq_len].reshape(-1, seq_len)
    with open(out_path, "wb") as f:
        f.write(rows.tobytes())
    return {"bytes": n_bytes, "tokens": len(flat), "array": rows.reshape(-1)}


def project_packing(corpus: CorpusConfig, tokenizer, tok_dir: str, seq_len: int, scratch: str) -> dict:
    cache = tempfile.mkdtemp(dir=scratch)
    try:
        packed = pack_corpus(corpus, tokenizer, tok_dir, seq_len, cache, progress=False)
        array = np.fromfile(os.path.join(packed.path, TOKENS_FILE), dtype=packed.dtype)
        return {"bytes": packed.meta["bytes_read"], "tokens": packed.meta["tokens_read"], "array": array}
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def repeated_corpus(source: CorpusConfig, n_bytes: int, folder: str) -> CorpusConfig:
    """A ``text_files`` corpus of about ``n_bytes``: the source's documents, one file each, repeated in order."""
    os.makedirs(folder, exist_ok=True)
    written, i = 0, 0
    docs = [d for d in read_documents(source) if d]
    if not docs:
        raise SystemExit(f"source {source.source!r} gave no text")
    while written < n_bytes:
        data = docs[i % len(docs)].encode("utf-8")
        with open(os.path.join(folder, f"{i:07d}.txt"), "wb") as f:
            f.write(data)
        written += len(data)
        i += 1
    print(f"wrote {written / 1e6:.1f} MB in {i:,} files ({len(docs):,} distinct documents) to {folder}")
    return CorpusConfig(name=f"{source.name}_x{n_bytes}", source="text_files", max_bytes=0,
                        paths=[os.path.join(folder, "*.txt")])


def tokenizers_to_run(args, corpus: CorpusConfig, cache: str) -> list[tuple[str, object, str]]:
    out = []
    bpe_cfg = TokenizerConfig(kind="bpe", vocab_size=4096, sample_bytes_per_corpus=args.bpe_sample_bytes)
    tok, tok_dir = build_tokenizer(bpe_cfg, {corpus.name: corpus}, cache)
    out.append((f"proxy-exp BPE ({len(tok)} tokens)", tok, tok_dir))
    spec = importlib.util.find_spec("olmo_eval")
    if spec is not None and spec.submodule_search_locations:
        path = os.path.join(spec.submodule_search_locations[0], "tokenizers", "allenai_gpt-neox-olmo-dolma-v1_5.json")
        if os.path.isfile(path):
            tok, tok_dir = build_tokenizer(TokenizerConfig(kind="pretrained", path=path), {}, cache)
            out.append((f"OLMo ({len(tok)} tokens)", tok, tok_dir))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default="python_stdlib", help="corpus source (proxy_exp.data.corpora)")
    parser.add_argument("--max-bytes", type=int, default=4_000_000, help="text to read (0 = the whole corpus)")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--bpe-sample-bytes", type=int, default=1_000_000, help="BPE training sample (not timed)")
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds, interleaved (best kept; 0 = time "
                        "the first call)")
    parser.add_argument("--text-bytes", type=int, default=0, help="repeat the source into text files of this size")
    parser.add_argument("--only", default="floor,anchor,project", help="paths to run: floor, anchor, project")
    args = parser.parse_args(argv)
    corpus = CorpusConfig(name=args.source, source=args.source, max_bytes=args.max_bytes)
    scratch = tempfile.mkdtemp(prefix="bench_tokenize_")
    only = set(args.only.split(","))
    try:
        if args.text_bytes:
            corpus = repeated_corpus(corpus, args.text_bytes, os.path.join(scratch, "texts"))
        print(f"corpus: source={corpus.source} ({args.source}), max_bytes={corpus.max_bytes:,}, "
              f"text_bytes={args.text_bytes:,}; seq_len {args.seq_len}; {os.cpu_count()} cores, "
              f"TOKENIZERS_PARALLELISM={os.environ['TOKENIZERS_PARALLELISM']}, "
              f"RAYON_NUM_THREADS={os.environ.get('RAYON_NUM_THREADS', '(all)')}")
        for label, tok, tok_dir in tokenizers_to_run(args, corpus, os.path.join(scratch, "cache")):
            paths = {
                "read only (floor)": lambda: read_only(corpus),
                "HF tokenizer() + list packing": lambda: hf_list_packing(corpus, tok, args.seq_len,
                                                                         os.path.join(scratch, "anchor.bin")),
                "proxy-exp pack_corpus": lambda: project_packing(corpus, tok, tok_dir, args.seq_len, scratch),
            }
            keys = {"floor": "read only (floor)", "anchor": "HF tokenizer() + list packing",
                    "project": "proxy-exp pack_corpus"}
            paths = {keys[k]: paths[keys[k]] for k in ("floor", "anchor", "project") if k in only}
            results, peaks, best = {}, {}, {name: float("inf") for name in paths}
            for name, fn in paths.items():  # first call: peak memory and the result
                t0 = time.perf_counter()
                with PeakMemory("cpu") as mem:
                    results[name] = fn()
                peaks[name] = mem.peak
                if args.rounds == 0:
                    best[name] = time.perf_counter() - t0
            for _ in range(args.rounds):
                for name, fn in paths.items():
                    t0 = time.perf_counter()
                    fn()
                    best[name] = min(best[name], time.perf_counter() - t0)
            anchor = "HF tokenizer() + list packing"
            same = "not checked (no anchor run)"
            if anchor in results and "proxy-exp pack_corpus" in results:
                if not np.array_equal(results[anchor]["array"], results["proxy-exp pack_corpus"]["array"]):
                    raise SystemExit(f"{label}: pack_corpus and the anchor disagree on the packed tokens")
                same = "yes"
            rows = []
            for name, seconds in best.items():
                r = results[name]
                row = {"path": name, "s": f"{seconds:.3f}", "MB/s": f"{r['bytes'] / 1e6 / seconds:.2f}",
                       "peak RSS+": gib(peaks[name]),
                       "vs anchor": f"{best[anchor] / seconds:.2f}x" if anchor in best else "-"}
                if r["tokens"]:
                    row["tokens/s"] = f"{r['tokens'] / seconds:,.0f}"
                rows.append(row)
            ref = results.get("proxy-exp pack_corpus") or next(iter(results.values()))
            print_table(rows, ["path", "s", "MB/s", "tokens/s", "vs anchor", "peak RSS+"],
                        title=f"{label}: {ref['bytes'] / 1e6:.2f} MB -> {ref['tokens'] or 0:,} tokens "
                              f"(same packed tokens: {same})")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
