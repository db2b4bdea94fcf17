"""Training throughput: proxy-exp's DeepSpeed train step beside plain HF training loops, in one run.

- ``proxy-exp DeepSpeed``: the step of ``proxy_exp/train/loop.py``: the model from
  ``proxy_exp.models.build_model``, a torch AdamW with the loop's warm-up/cosine schedule, the loop's
  DeepSpeed config (ZeRO ``--zero-stage``, bf16 on CUDA, fp32 on CPU, gradient clipping 1.0), and
  ``engine(input_ids=x, labels=x)``, ``engine.backward``, ``engine.step``;
- ``HF eager`` (the anchor of docs/performance.md): the same architecture, ``model(input_ids, labels)``,
  ``loss.backward()``, AdamW (fused on CUDA), bf16 autocast on CUDA, fp32 on CPU;
- ``HF torch.compile`` with ``--compile`` (the anchor's faster row).

Throughput is tokens/s (``batch x seq_len`` per step, best of ``--rounds`` interleaved rounds of
``--steps`` steps after ``--warmup`` steps); MFU = tokens/s x FLOPs per token / peak with docs/performance.md's
FLOPs per token ``6 N_non-embedding + 12 L d T + 6 d V`` (``proxy_exp.train.loop.flops_per_token`` plus
the LM head's ``6 d V``) and the peak ``--peak-tflops`` (CUDA default 989, dense bf16 H100) or, on CPU,
the measured float32 matmul throughput.

  python benchmarks/bench_train.py --device cpu                       # the demo's xs and s proxies
  python benchmarks/bench_train.py --device cuda --compile            # 124M Llama and GPT-2, 16 x 1024
"""
from __future__ import annotations

import argparse
import copy
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from measure import PeakMemory, device_description, gib, matmul_peak_tflops, print_table, sync  # noqa: E402

from proxy_exp.config import ModelConfig, PretrainConfig  # noqa: E402
from proxy_exp.distributed import dist_env, init_deepspeed_distributed  # noqa: E402
from proxy_exp.models import build_model, count_params  # noqa: E402
from proxy_exp.compute import train_flops_per_token as flops_per_token  # noqa: E402

# name -> ModelConfig; CPU: conf/model/xs.yaml and s.yaml; CUDA: the 124M shapes of shared/probes/gpu_train_probe.py
MODELS: dict[str, ModelConfig] = {
    "xs": ModelConfig(name="xs", arch="llama", n_layers=2, d_model=32, n_heads=2, n_kv_heads=2, max_seq_len=256),
    "s": ModelConfig(name="s", arch="llama", n_layers=2, d_model=64, n_heads=4, n_kv_heads=4, max_seq_len=256),
    "m": ModelConfig(name="m", arch="llama", n_layers=4, d_model=128, n_heads=4, n_kv_heads=4, max_seq_len=512),
    "llama-124m": ModelConfig(name="llama-124m", arch="llama", n_layers=12, d_model=768, n_heads=12, n_kv_heads=12,
                              d_ff=2048, max_seq_len=1024),
    "gpt2-124m": ModelConfig(name="gpt2-124m", arch="gpt2", n_layers=12, d_model=768, n_heads=12, max_seq_len=1024),
}


class _Vocab:
    """What build_engine reads of a tokenizer: its size and special ids (the benchmark feeds random tokens)."""

    bos_token_id, eos_token_id, pad_token_id = 0, 0, 1

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n


def deepspeed_step(cfg: ModelConfig, p: PretrainConfig, total_steps: int, vocab: int, device: torch.device, ids):
    """A step of proxy-exp's own engine (proxy_exp/train/loop.py:build_engine: the DeepSpeed config, fused AdamW on
    CUDA, bf16 on GPU, pretrain.compile), on ``ids``."""
    from proxy_exp.config import TrainJobConfig
    from proxy_exp.train.loop import build_engine
    from proxy_exp.train.plan import TrainPlan

    tokens = p.global_batch * p.seq_len
    plan = TrainPlan(n_params=0, n_params_non_embedding=0, budget_tokens=tokens * total_steps, tokens_per_step=tokens,
                     steps=total_steps, tokens=tokens * total_steps, flops=0.0, gradient_accumulation=1)
    engine, _, _ = build_engine(TrainJobConfig(model=cfg, pretrain=p), plan, _Vocab(vocab), device,
                                bf16=device.type == "cuda")
    engine.train()

    def step():
        out = engine(input_ids=ids, labels=ids)
        engine.backward(out.loss)
        engine.step()
        return out.loss.detach()

    return step


def hf_step(model, p: PretrainConfig, use_cuda: bool, device: torch.device, ids, compile_: bool):
    """The anchor: a plain HF training step (docs/performance.md, shared/probes/gpu_train_probe.py)."""
    model = model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=p.lr, betas=tuple(p.betas), eps=1e-8,
                                  weight_decay=p.weight_decay, fused=use_cuda)
    forward = torch.compile(model) if compile_ else model

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_cuda):
            loss = forward(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), p.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def bench(name: str, args, peak_tflops: float) -> None:
    use_cuda = args.device == "cuda"
    device = torch.device("cuda" if use_cuda else "cpu")
    cfg = copy.deepcopy(MODELS[name])
    cfg.max_seq_len = max(cfg.max_seq_len, args.seq_len)
    p = PretrainConfig(seq_len=args.seq_len, global_batch=args.batch, micro_batch=args.batch,
                       zero_stage=args.zero_stage, precision="auto")
    ids = torch.randint(0, args.vocab, (args.batch, args.seq_len), generator=torch.Generator().manual_seed(0)).to(device)
    build = lambda: build_model(cfg, args.vocab, bos_id=0, eos_id=0, pad_id=1, seed=0)  # noqa: E731
    counts = count_params(build())
    fpt = flops_per_token(counts.non_embedding, cfg.n_layers, cfg.d_model, args.seq_len) + 6.0 * cfg.d_model * args.vocab
    tokens = args.batch * args.seq_len
    total = args.warmup + args.rounds * args.steps
    paths = [("proxy-exp DeepSpeed", lambda: deepspeed_step(cfg, p, total, args.vocab, device, ids)),
             ("HF eager", lambda: hf_step(build(), p, use_cuda, device, ids, compile_=False))]
    if args.compile:
        pc = PretrainConfig(**{**p.__dict__, "compile": True})
        paths.append(("proxy-exp DeepSpeed + compile", lambda: deepspeed_step(cfg, pc, total, args.vocab, device, ids)))
        paths.append(("HF torch.compile", lambda: hf_step(build(), p, use_cuda, device, ids, compile_=True)))

    steps, rows = {}, {}
    for label, make in paths:  # build each path and warm it up (compilation happens here)
        with PeakMemory(args.device) as mem:
            step = make()
            for _ in range(args.warmup):
                loss = step()
            sync(args.device)
        steps[label] = step
        rows[label] = {"path": label, "peak mem": gib(mem.peak), "loss": f"{float(loss):.3f}"}
    best = {label: float("inf") for label in steps}
    import time

    for _ in range(args.rounds):  # interleaved: a shared machine's load hits every path alike
        for label, step in steps.items():
            sync(args.device)
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step()
            sync(args.device)
            best[label] = min(best[label], (time.perf_counter() - t0) / args.steps)
    anchor = best["HF eager"]
    for label, seconds in best.items():
        tps = tokens / seconds
        rows[label].update({"s/step": f"{seconds:.4f}", "tokens/s": f"{tps:,.0f}",
                            "MFU": f"{tps * fpt / (peak_tflops * 1e12):.1%}", "vs HF eager": f"{anchor / seconds:.2f}x"})
    print_table(list(rows.values()), ["path", "s/step", "tokens/s", "vs HF eager", "MFU", "peak mem", "loss"],
                title=f"{name} ({cfg.arch}): {counts.total / 1e6:.2f}M params ({counts.non_embedding / 1e6:.2f}M "
                      f"non-embedding), vocab {args.vocab}, batch {args.batch} x {args.seq_len}, "
                      f"{'bf16' if use_cuda else 'fp32'}, ZeRO {args.zero_stage}, {fpt / 1e6:.2f} MFLOP/token")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--models", default=None, help=f"comma-separated of {sorted(MODELS)} "
                        "(default: cpu xs,s; cuda llama-124m,gpt2-124m)")
    parser.add_argument("--batch", type=int, default=None, help="sequences per step (default: cpu 16, cuda 16)")
    parser.add_argument("--seq-len", type=int, default=None, help="default: cpu 128 (pretrain/cpu_tiny), cuda 1024")
    parser.add_argument("--vocab", type=int, default=None, help="default: cpu 4096 (tokenizer/bpe), cuda 50304")
    parser.add_argument("--zero-stage", type=int, default=0)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=None, help="steps per timed round (default: cpu 5, cuda 10)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--compile", action="store_true",
                        help="add proxy-exp with pretrain.compile=true and the HF torch.compile anchor")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="MFU denominator (default: cuda 989 = dense bf16 H100; cpu: measured fp32 matmul)")
    args = parser.parse_args(argv)
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device visible to torch")
    args.batch = args.batch or 16
    args.seq_len = args.seq_len or (1024 if cuda else 128)
    args.vocab = args.vocab or (50304 if cuda else 4096)
    args.steps = args.steps or (10 if cuda else 5)
    if args.threads:
        torch.set_num_threads(args.threads)
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
    dist_env()  # rank 0 of 1, as a plain `proxy-train` process
    init_deepspeed_distributed("nccl" if cuda else "gloo")
    peak = args.peak_tflops or (989.0 if cuda else matmul_peak_tflops("cpu", torch.float32, 1024))
    print(f"device: {device_description(args.device)}; MFU peak {peak:.3g} TFLOP/s "
          f"({'given' if args.peak_tflops else 'H100 dense bf16' if cuda else 'measured fp32 matmul'})")
    for name in (args.models or ("llama-124m,gpt2-124m" if cuda else "xs,s")).split(","):
        if name not in MODELS:
            parser.error(f"--models: unknown model {name!r}; use {sorted(MODELS)}")
        bench(name, args, peak)


if __name__ == "__main__":
    main()
