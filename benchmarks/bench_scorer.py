"""Scoring throughput: proxy-exp's scorer paths beside the naive HF anchor, in one run.

Every path runs the model's decoder on the same random ``batch x seq_len`` ids and produces the token
statistics of positions ``0..L-2`` at the next token (as scoring does):

- ``bare forward``: the decoder stack only, no LM head (``model.base_model``): the floor;
- ``forward + LM head``: the decoder stack and the LM head applied ``--chunk-tokens`` rows at a time, the
  logits thrown away: what any loss computation pays, so ``stats cost`` (time over this row's, minus 1) is
  what the statistics alone add;
- ``naive HF`` (the anchor of docs/performance.md): ``model(ids).logits`` in full, then the statistics
  on float32 logits (``stats.token_stats_from_logits``);
- ``chunked torch`` (proxy-exp, ``score.kernel=torch``): final hidden states, LM head and statistics
  ``--chunk-tokens`` rows at a time (``lm_head.score_hidden_states``), with the reductions run eagerly and
  through torch.compile (``score.stats_backend=eager|compiled``);
- ``fused triton`` (proxy-exp, ``score.kernel=triton``, CUDA only): one pass over the vocabulary per
  token tile (``score/fused.py``);
- ``liger FLCE``: Liger-Kernel's fused linear cross-entropy forward (CE only), when installed, CUDA only.

Each path is called once (warm-up; its peak memory and statistics are taken there), then timed as the
best of ``--repeats`` rounds that call every path in turn (a shared machine's load hits all alike); on CPU
a round calls a path back to back for ``--min-round-s`` (0.1 s), so that a call is timed in the steady
state of a long scoring job rather than with the caches the previous path left cold.
Reported: tokens/s (scored positions per second), peak memory (CUDA: max allocated; CPU: sampled
peak RSS increase), MFU = FLOPs / time / peak with FLOPs = 2 x non-embedding params x tokens, plus
2 x d_model x vocab x tokens for the paths that apply the LM head (attention score FLOPs left out),
and the peak the measured dense matmul throughput of this device (or ``--peak-tflops``);
``vs naive`` = throughput ratio to the anchor; ``overhead`` = time / bare-forward time - 1;
``stats cost`` = time / (forward + LM head) time - 1 (CPU target for the statistics: <= 25%); ``max abs dce`` and ``rank=`` compare each path's statistics with the
naive path's.

  python benchmarks/bench_scorer.py --device cpu                 # tiny Llama + SmolLM2-135M shape
  python benchmarks/bench_scorer.py --device cuda                # Qwen2-0.5B shape, 8 x 1024, bf16
  python benchmarks/bench_scorer.py --device cuda --models qwen2-7b --batch 1 --seq-len 32768 --repeats 2
                                                                 # a 32k trace at 152k vocab beside a 7B model
"""
from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from measure import PeakMemory, device_description, gib, interleaved_times, matmul_peak_tflops, print_table  # noqa: E402

from proxy_exp.config import ModelConfig  # noqa: E402
from proxy_exp.models import build_model, count_params  # noqa: E402
from proxy_exp.score import fused  # noqa: E402
from proxy_exp.score.lm_head import final_hidden_states, lm_head_of, score_hidden_states  # noqa: E402
from proxy_exp.score.stats import token_stats_from_logits  # noqa: E402

# Model shapes (random init): name -> builder(dtype) -> model
SHAPES = ("tiny-llama", "smollm2-135m", "qwen2-0.5b", "qwen2-7b")


def build(shape: str, dtype: torch.dtype, device: str = "cpu"):
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    torch.manual_seed(0)
    if shape == "tiny-llama":  # the CPU demo's proxy size (conf/model/s.yaml) with the demo's 4,096-token BPE
        return build_model(ModelConfig(name="s", arch="llama", n_layers=2, d_model=64, n_heads=4, n_kv_heads=4,
                                       max_seq_len=2048, dtype=str(dtype).replace("torch.", "")),
                           vocab_size=4096, bos_id=0, eos_id=0, pad_id=1)
    if shape == "smollm2-135m":  # HuggingFaceTB/SmolLM2-135M's config.json
        cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                          num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                          rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True)
    elif shape == "qwen2-0.5b":  # the shape of shared/probes/gpu_scoring_probe.py
        cfg = Qwen2Config(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                          intermediate_size=4864, vocab_size=151936, max_position_embeddings=4096,
                          tie_word_embeddings=True)
    elif shape == "qwen2-7b":  # Qwen2-7B's config.json: the "7B-class model" beside which a 32k trace must fit 80 GB
        cfg = Qwen2Config(hidden_size=3584, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                          intermediate_size=18944, vocab_size=152064, max_position_embeddings=32768,
                          tie_word_embeddings=False)
    else:
        raise ValueError(f"--models: unknown shape {shape!r}; use {SHAPES}")
    with torch.device(device):  # built where it runs: a 7B model is not materialised on the host first
        return AutoModelForCausalLM.from_config(cfg, dtype=dtype, attn_implementation="sdpa")


def bench_model(shape: str, args, peak_tflops: float) -> list[dict]:
    device = args.device
    dtype = getattr(torch, args.dtype)
    model = build(shape, dtype, device).eval()
    counts = count_params(model)
    head = lm_head_of(model)
    weight = model.get_output_embeddings().weight
    n_vocab, d_model = weight.shape
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, n_vocab, (args.batch, args.seq_len), generator=g).to(device)
    targets = ids[:, 1:].reshape(-1)
    n_scored = targets.numel()
    n_forward = ids.numel()
    body_flops = 2.0 * counts.non_embedding * n_forward
    head_flops = 2.0 * d_model * n_vocab * n_scored

    def hidden_rows():
        return final_hidden_states(model, ids)[:, :-1].reshape(-1, d_model)

    def forward_and_head():
        h = hidden_rows()
        return [head(h[i:i + args.chunk_tokens]).shape for i in range(0, h.shape[0], args.chunk_tokens)]

    paths: list[tuple[str, object, bool]] = [
        ("bare forward (no LM head)", lambda: final_hidden_states(model, ids).sum(), False),
        (f"forward + LM head ({args.chunk_tokens} rows, no stats)", forward_and_head, True),
        ("naive HF (full fp32 logits)",
         lambda: token_stats_from_logits(model(ids, use_cache=False).logits[:, :-1].reshape(-1, n_vocab), targets),
         True),
        (f"chunked torch ({args.chunk_tokens} rows), eager stats",
         lambda: score_hidden_states(hidden_rows(), head, targets, args.chunk_tokens, kernel="torch"), True),
    ]
    if device == "cpu":  # on CUDA the fused kernel is the fast path (compiling the torch path needs triton too)
        paths.append((f"chunked torch ({args.chunk_tokens} rows), compiled stats",
                      lambda: score_hidden_states(hidden_rows(), head, targets, args.chunk_tokens, kernel="torch",
                                                  compiled=True), True))
    if device == "cuda" and fused.triton_available():
        paths.append(("fused triton", lambda: score_hidden_states(hidden_rows(), head, targets, args.chunk_tokens,
                                                                  kernel="triton"), True))
        for cfg in args.sweep:
            bt, bv, bd, warps, stages = (int(x) for x in cfg.split(","))
            paths.append((f"fused triton {bt}x{bv}x{bd} w{warps} s{stages}", lambda bt=bt, bv=bv, bd=bd, w=warps, s=stages:
                          fused.fused_token_stats(hidden_rows(), weight, targets, softcap=head.softcap, block_t=bt,
                                                  block_v=bv, block_d=bd, num_warps=w, num_stages=s), True))
    skipped = []
    if device != "cuda":
        skipped.append("fused triton: CUDA only")
    elif not fused.triton_available():
        skipped.append("fused triton: triton not installed")
    try:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

        if device == "cuda":
            liger = LigerFusedLinearCrossEntropyLoss(reduction="none")

            def liger_ce():
                out = liger(weight, hidden_rows(), targets)
                return {"ce": (out[0] if isinstance(out, tuple) else out).float()}

            paths.append(("liger FLCE (CE only)", liger_ce, True))
        else:
            skipped.append("liger FLCE: CUDA only")
    except ImportError:
        skipped.append("liger FLCE: not installed")

    rows, results, runnable = [], {}, {}
    with torch.inference_mode():
        for name, fn, applies_head in paths:  # first call of each path: warm-up, peak memory, result
            fused.RECOUNTS.clear()
            try:
                with PeakMemory(device) as mem:
                    results[name] = fn()
            except torch.OutOfMemoryError:
                rows.append({"path": name, "tokens/s": "OOM"})
                torch.cuda.empty_cache()
                continue
            runnable[name] = fn
            row = {"path": name, "peak mem": gib(mem.peak), "_flops": body_flops + (head_flops if applies_head else 0.0)}
            if fused.RECOUNTS["tokens"]:
                row["recounted"] = f"{fused.RECOUNTS['recounted'] / fused.RECOUNTS['tokens']:.2%}"
            rows.append(row)
        times = interleaved_times(runnable, device, args.repeats, min_call_s=args.min_round_s)
    for row in rows:
        if row["path"] in times:
            seconds = times[row["path"]]
            row.update({"s/batch": f"{seconds:.4f}", "tokens/s": f"{n_scored / seconds:,.0f}",
                        "MFU": f"{row['_flops'] / seconds / (peak_tflops * 1e12):.1%}"})
    bare, with_head, naive = paths[0][0], paths[1][0], paths[2][0]
    for row in rows:
        name = row["path"]
        if name not in times:
            continue
        if naive in times:
            row["vs naive"] = f"{times[naive] / times[name]:.2f}x"
        if name != bare and bare in times:
            row["overhead"] = f"{times[name] / times[bare] - 1:+.0%}"
        if name not in (bare, with_head) and with_head in times:
            row["stats cost"] = f"{times[name] / times[with_head] - 1:+.0%}"
        if name != bare and naive in results and isinstance(results[name], dict):
            ref, ours = results[naive], results[name]
            row["max abs dce"] = f"{(ours['ce'].float() - ref['ce'].float()).abs().max().item():.1e}"
            if "rank" in ours:
                row["rank="] = f"{(ours['rank'] == ref['rank']).float().mean().item():.2%}"
    print_table(rows, ["path", "s/batch", "tokens/s", "vs naive", "overhead", "stats cost", "peak mem", "MFU", "max abs dce", "rank=",
                       "recounted"],
                title=f"{shape}: {counts.total / 1e6:.1f}M params ({counts.non_embedding / 1e6:.1f}M non-embedding), "
                      f"vocab {n_vocab}, d {d_model}, batch {args.batch} x {args.seq_len}, {args.dtype}, {device}")
    for line in skipped:
        print(f"  ({line})")
    del model
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--models", default=None, help=f"comma-separated of {SHAPES} (default: cpu: tiny-llama,"
                        "smollm2-135m; cuda: qwen2-0.5b)")
    parser.add_argument("--batch", type=int, default=None, help="default: cpu 1, cuda 8")
    parser.add_argument("--seq-len", type=int, default=None, help="default: cpu 512, cuda 1024")
    parser.add_argument("--dtype", default=None, help="default: cpu float32, cuda bfloat16")
    parser.add_argument("--chunk-tokens", type=int, default=None, help="default: cpu 256 (ScoreConfig), cuda 1024")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed rounds, each calling every path once (best round kept); default cpu 3, cuda 5")
    parser.add_argument("--min-round-s", type=float, default=None,
                        help="call each path back to back for about this long per round (steady state, warm caches, "
                             "as in a long scoring job); default cpu 0.1, cuda 0 (one call)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="MFU denominator (default: measured dense matmul of this device and dtype)")
    parser.add_argument("--sweep", nargs="*", default=[],
                        help="extra fused configs 'block_t,block_v,block_d,warps,stages' (CUDA), e.g. 128,128,64,8,3")
    args = parser.parse_args(argv)
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device visible to torch")
    args.batch = args.batch or (8 if cuda else 1)
    args.seq_len = args.seq_len or (1024 if cuda else 512)
    args.dtype = args.dtype or ("bfloat16" if cuda else "float32")
    args.chunk_tokens = args.chunk_tokens or (1024 if cuda else 256)
    args.repeats = args.repeats or (5 if cuda else 3)
    args.min_round_s = args.min_round_s if args.min_round_s is not None else (0.0 if cuda else 0.1)
    if args.threads:
        torch.set_num_threads(args.threads)
    shapes = (args.models or ("qwen2-0.5b" if cuda else "tiny-llama,smollm2-135m")).split(",")
    dtype = getattr(torch, args.dtype)
    peak = args.peak_tflops or matmul_peak_tflops(args.device, dtype, 8192 if cuda else 1024)
    print(f"device: {device_description(args.device)}; MFU peak {peak:.3g} TFLOP/s "
          f"({'given' if args.peak_tflops else 'measured matmul'}, {args.dtype}); triton "
          f"{'installed' if fused.triton_available() else 'not installed'}")
    for shape in shapes:
        bench_model(shape, args, peak)


if __name__ == "__main__":
    main()
