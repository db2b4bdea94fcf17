"""Small-model pretraining through the DeepSpeed engine.

``train(cfg) -> TrainResult`` reads top to bottom: data, model, engine, resume, loop, save. The token
budget is exact: ``steps = ceil(budget / tokens_per_step)`` optimizer steps of ``global_batch x seq_len``
tokens each, where the budget is ``tokens_per_param x params`` (or ``pretrain.max_tokens``); the batch of
a step is a pure function of (seed, step), so a resumed run sees exactly the data an uninterrupted one does.

Metrics are buffered and sent to MLflow when a checkpoint is saved, just before its COMPLETE marker (and at
the end): a run interrupted before the marker resumes from the previous checkpoint and re-computes those
steps, and a resumed run never sends a step its MLflow run already holds, so the loss curve has neither gaps
nor duplicated steps wherever the interruption falls.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from proxy_exp import tracking, units
from proxy_exp.config import TrainJobConfig, flat_params, resolve_root
from proxy_exp.distributed import dist_env, init_deepspeed_distributed
from proxy_exp.models import build_model, count_params, estimate_param_counts

COMPLETE = "COMPLETE"


@dataclass
class TrainResult:
    unit_id: str
    model_dir: str
    final_loss: float
    tokens: int
    steps: int
    flops: float
    n_params: int
    n_params_non_embedding: int
    run_id: str
    seconds: float
    stopped: bool = False  # True when the run stopped early (stop_after_steps) and must be resumed


@dataclass
class TrainPlan:
    n_params: int
    n_params_non_embedding: int
    budget_tokens: int
    tokens_per_step: int
    steps: int
    tokens: int
    flops: float
    gradient_accumulation: int


def flops_per_token(n_non_embedding: int, n_layers: int, d_model: int, seq_len: int) -> float:
    """6 x non-embedding params, plus attention 12 x layers x d_model x seq_len (PaLM / nanoGPT)."""
    return 6.0 * n_non_embedding + 12.0 * n_layers * d_model * seq_len


def plan_training(cfg: TrainJobConfig, vocab_size: int, world_size: int = 1) -> TrainPlan:
    """What a training run will do: sizes, steps, tokens and FLOPs (used by dry runs too)."""
    p = cfg.pretrain
    counts = estimate_param_counts(cfg.model, vocab_size)
    if p.seq_len > cfg.model.max_seq_len:
        raise ValueError(f"pretrain.seq_len={p.seq_len} exceeds model.max_seq_len={cfg.model.max_seq_len}")
    per_pass = p.micro_batch * world_size
    if p.global_batch % per_pass:
        raise ValueError(f"pretrain.global_batch={p.global_batch} must be a multiple of pretrain.micro_batch x "
                         f"world size = {per_pass}")
    if p.budget_params not in ("non_embedding", "total"):
        raise ValueError(f"pretrain.budget_params={p.budget_params!r}: use 'non_embedding' or 'total'")
    n_budget = counts.non_embedding if p.budget_params == "non_embedding" else counts.total
    budget = int(p.max_tokens) if p.max_tokens > 0 else int(round(p.tokens_per_param * n_budget))
    tokens_per_step = p.global_batch * p.seq_len
    steps = max(1, math.ceil(budget / tokens_per_step))
    tokens = steps * tokens_per_step
    flops = flops_per_token(counts.non_embedding, cfg.model.n_layers, cfg.model.d_model, p.seq_len) * tokens
    return TrainPlan(counts.total, counts.non_embedding, budget, tokens_per_step, steps, tokens, flops,
                     p.global_batch // per_pass)


def lr_lambda(step: int, total: int, warmup_frac: float, min_ratio: float) -> float:
    """Linear warm-up, then cosine decay to ``min_ratio`` of the peak learning rate."""
    warmup = max(1, int(round(warmup_frac * total)))
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class PreemptionFlag:
    """Set by Slurm's pre-timeout / preemption signal; read only at step boundaries.

    The handler only records the signal (never saves from inside it: a collective or a checkpoint there can
    deadlock). All ranks agree on the flag with one all-reduce per step, finish the step, save, and requeue.
    """

    def __init__(self, name: str) -> None:
        self.requested = False
        self.signum = getattr(signal, name if name.startswith("SIG") else f"SIG{name}", None)
        if self.signum is None:
            raise ValueError(f"pretrain.preempt_signal={name!r} is not a signal name (e.g. USR2, USR1, TERM)")
        self._previous = None

    def __enter__(self) -> "PreemptionFlag":
        try:
            self._previous = signal.signal(self.signum, self._handle)
        except ValueError:  # not the main thread: no handler, training still works
            self._previous = None
        return self

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(self.signum, self._previous)

    def agreed(self, world_size: int) -> bool:
        if world_size == 1:
            return self.requested
        import torch.distributed as tdist

        t = torch.tensor([1.0 if self.requested else 0.0])
        tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
        return bool(t.item() > 0)


def slurm_job_id() -> str | None:
    env = os.environ
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID")


def requeue_and_wait(job_id: str, wait_s: float = 300.0) -> None:
    """Ask Slurm to requeue this job, then wait to be stopped (the requeue kills this process)."""
    print(f"[proxy-exp] checkpoint saved; requeueing Slurm job {job_id}", file=sys.stderr, flush=True)
    subprocess.run(["scontrol", "requeue", job_id], check=True, timeout=60)
    time.sleep(wait_s)


def _latest_checkpoint(ckpt_root: str) -> int | None:
    if not os.path.isdir(ckpt_root):
        return None
    steps = [int(d.split("-")[1]) for d in os.listdir(ckpt_root)
             if d.startswith("step-") and os.path.exists(os.path.join(ckpt_root, d, COMPLETE))]
    return max(steps) if steps else None


def _prune_checkpoints(ckpt_root: str, keep: int) -> None:
    done = sorted(int(d.split("-")[1]) for d in os.listdir(ckpt_root)
                  if d.startswith("step-") and os.path.exists(os.path.join(ckpt_root, d, COMPLETE)))
    for s in done[:-keep] if keep > 0 else []:
        shutil.rmtree(os.path.join(ckpt_root, f"step-{s}"), ignore_errors=True)


def default_unit_id(cfg: TrainJobConfig) -> str:
    return cfg.unit_id or units.train_unit_id(cfg.model, cfg.tokenizer, cfg.tokenizer_corpora, cfg.corpus,
                                              cfg.pretrain, cfg.seed)


def train(cfg: TrainJobConfig, progress: bool = True) -> TrainResult:
    """Pretrain one model on one corpus; resumes from the unit's latest complete checkpoint."""
    from proxy_exp.data.packing import batch_indices, pack_corpus
    from proxy_exp.data.tokenizer import build_tokenizer

    t0 = time.time()
    root = resolve_root(cfg.paths)
    unit_id = default_unit_id(cfg)
    done = units.read_done(root, unit_id)
    if done is not None and not done.get("stopped"):
        return TrainResult(**done)
    udir = units.unit_dir(root, unit_id)
    os.makedirs(udir, exist_ok=True)
    ckpt_root = os.path.join(udir, "checkpoints")
    cache = os.path.join(root, "cache")
    p = cfg.pretrain
    torch.set_num_threads(max(1, p.num_threads))

    env = dist_env()
    use_cuda = torch.cuda.is_available() and p.gpus_per_node != 0
    backend = "nccl" if use_cuda else "gloo"
    init_deepspeed_distributed(backend)
    import deepspeed
    import torch.distributed as tdist

    # ---- data: the shared tokenizer, the packed corpus (rank 0 builds, the others read the cache)
    tok_corpora = dict(cfg.tokenizer_corpora) or {cfg.corpus.name: cfg.corpus}
    if not env.is_main:
        tdist.barrier()
    tokenizer, tok_dir = build_tokenizer(cfg.tokenizer, tok_corpora, cache)
    plan = plan_training(cfg, len(tokenizer), env.world_size)
    packed = pack_corpus(cfg.corpus, tokenizer, tok_dir, p.seq_len, cache, max_tokens=plan.tokens + p.seq_len,
                         progress=progress and env.is_main)
    if env.is_main:
        tdist.barrier()

    # ---- model and engine
    model = build_model(cfg.model, len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id,
                        tokenizer.pad_token_id, seed=cfg.seed)
    counts = count_params(model)
    device = torch.device(f"cuda:{env.local_rank}") if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    bf16 = p.precision == "bf16" or (p.precision == "auto" and use_cuda)
    # a torch optimizer: no DeepSpeed C++ op to JIT-compile; on CUDA its fused (single-kernel) implementation
    optimizer = torch.optim.AdamW(model.parameters(), lr=p.lr, betas=tuple(p.betas), eps=1e-8,
                                  weight_decay=p.weight_decay, fused=bool(use_cuda))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_lambda(s, plan.steps, p.warmup_frac, p.min_lr_ratio))
    ds_config = {
        "train_batch_size": p.global_batch,
        "train_micro_batch_size_per_gpu": p.micro_batch,
        "gradient_accumulation_steps": plan.gradient_accumulation,
        "zero_optimization": {"stage": p.zero_stage},
        "gradient_clipping": p.grad_clip,
        "steps_per_print": 10**9,
        "bf16": {"enabled": bf16},
        "wall_clock_breakdown": False,
    }
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                           config=ds_config)
    if p.compile:  # compiles the wrapped module in place: checkpoints and saved weights keep their names
        engine.compile()

    start_step = 0
    latest = _latest_checkpoint(ckpt_root)
    if latest is not None:
        _, client_state = engine.load_checkpoint(ckpt_root, tag=f"step-{latest}")
        start_step = int(client_state["step"])

    # ---- tracking (rank 0 only); a resumed unit continues its own MLflow run
    run = None
    if env.is_main:
        run_id_file = os.path.join(udir, "mlflow_run_id")
        prev = open(run_id_file).read().strip() if os.path.exists(run_id_file) and start_step > 0 else ""
        extra = {"corpus": cfg.corpus.name, "size": cfg.model.name, "seed": cfg.seed, "role": "proxy"} | cfg.tags
        name = extra.pop("name", f"train {cfg.corpus.name} {cfg.model.name} s{cfg.seed}")
        tags = tracking.unit_tags("train", unit_id, cfg.campaign, **extra)
        run = tracking.Run(cfg.tracking, root, name, tags, cfg.parent_run_id, run_id=prev, skip_logged_steps=True)
        with open(run_id_file, "w") as f:
            f.write(run.run_id)
        run.log_params(flat_params(cfg.model, "model") | flat_params(cfg.pretrain, "pretrain")
                       | flat_params(cfg.corpus, "corpus") | flat_params(cfg.tokenizer, "tokenizer")
                       | {"seed": cfg.seed, "n_params": counts.total, "n_params_non_embedding": counts.non_embedding,
                          "steps": plan.steps, "tokens": plan.tokens, "world_size": env.world_size,
                          "unit_dir": udir, "packed_sequences": packed.num_sequences})

    in_loop = InLoopScorer(cfg, tokenizer, cache, plan.steps) if env.is_main and (
        cfg.in_loop.score_every > 0 or cfg.in_loop.eval_every > 0 or cfg.in_loop.log_points > 0) else None
    fpt = flops_per_token(counts.non_embedding, cfg.model.n_layers, cfg.model.d_model, p.seq_len)
    per_rank = p.global_batch // env.world_size
    stop_at = plan.steps if p.stop_after_steps <= 0 else min(plan.steps, start_step + p.stop_after_steps)
    bar = None
    if progress and env.is_main:
        from tqdm.auto import tqdm

        bar = tqdm(total=plan.steps, initial=start_step, desc=f"train {cfg.corpus.name}/{cfg.model.name}",
                   unit="step", dynamic_ncols=True)
    last_loss = float("nan")
    preempted_at = 0
    engine.train()
    flag = PreemptionFlag(p.preempt_signal)
    try:
        flag.__enter__()
        for step in range(start_step, stop_at):
            idx = batch_indices(packed.num_sequences, step, p.global_batch, cfg.seed)
            mine = idx[env.rank * per_rank:(env.rank + 1) * per_rank]
            losses = []
            for m in range(plan.gradient_accumulation):
                x = torch.from_numpy(packed.get_batch(mine[m * p.micro_batch:(m + 1) * p.micro_batch])).to(device)
                out = engine(input_ids=x, labels=x)
                engine.backward(out.loss)
                engine.step()
                losses.append(out.loss.detach().float())
            loss = torch.stack(losses).mean()
            if env.world_size > 1:
                tdist.all_reduce(loss, op=tdist.ReduceOp.SUM)
                loss = loss / env.world_size
            last_loss = float(loss)
            done_steps = step + 1
            if run is not None:
                run.log_metrics({"train/loss": last_loss, "train/lr": scheduler.get_last_lr()[0],
                                 "train/tokens": done_steps * plan.tokens_per_step,
                                 "train/flops": done_steps * plan.tokens_per_step * fpt}, step=done_steps)
            if in_loop is not None and in_loop.due(done_steps):
                metrics = in_loop.metrics(engine.module, done_steps)
                if run is not None:
                    run.log_metrics(metrics, step=done_steps)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{last_loss:.3f}")
            is_last = done_steps == stop_at
            preempt = not is_last and flag.agreed(env.world_size)
            if (p.checkpoint_every and done_steps % p.checkpoint_every == 0) or is_last or preempt:
                _save_checkpoint(engine, ckpt_root, done_steps, env.is_main, p.keep_checkpoints,
                                 before_complete=run.flush if run is not None else None)
            if preempt:
                preempted_at = done_steps
                break
    except BaseException:
        if run is not None:
            run._buffer.clear()  # steps after the last checkpoint are recomputed on resume
            run.end("FAILED")
        raise
    finally:
        flag.__exit__()
        if bar is not None:
            bar.close()

    if preempted_at:
        job = slurm_job_id()
        if run is not None:
            run.set_tags({tracking.TAG + "preempted_at_step": preempted_at})
            run.flush()
        if job and env.is_main:
            requeue_and_wait(job)
        elif job:
            time.sleep(300)  # the requeue issued by rank 0 stops every rank
        stop_at = preempted_at  # not under Slurm: stop here; rerunning resumes from the checkpoint
    stopped = stop_at < plan.steps
    model_dir = os.path.join(udir, "model")
    if not stopped and env.is_main:
        tmp = model_dir + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        engine.module.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        with open(os.path.join(tmp, "proxy_exp.json"), "w") as f:
            json.dump({"unit_id": unit_id, "n_params": counts.total, "n_params_non_embedding": counts.non_embedding,
                       "train_flops": plan.flops, "tokens": plan.tokens, "corpus": cfg.corpus.name}, f, indent=2)
        shutil.rmtree(model_dir, ignore_errors=True)
        os.replace(tmp, model_dir)
    result = TrainResult(unit_id=unit_id, model_dir=model_dir, final_loss=last_loss, tokens=stop_at * plan.tokens_per_step,
                         steps=stop_at, flops=stop_at * plan.tokens_per_step * fpt, n_params=counts.total,
                         n_params_non_embedding=counts.non_embedding, run_id=run.run_id if run else "",
                         seconds=time.time() - t0, stopped=stopped)
    if env.is_main and run is not None:
        if stopped:
            run.end("KILLED")
        else:
            run.log_metrics({"train/final_loss": last_loss, "flops/train": result.flops,
                             "train/seconds": result.seconds, "n_params": counts.total,
                             "n_params_non_embedding": counts.non_embedding}, step=stop_at)
            run.set_tags({tracking.TAG + "model_dir": model_dir})
            run.end("FINISHED")
            units.write_done(root, unit_id, result)
    if env.world_size > 1:
        tdist.barrier()
    return result


def log_spaced_steps(n: int, total: int) -> set[int]:
    """``n`` distinct steps from 1 to ``total``, spaced geometrically (fewer when small steps coincide)."""
    if n <= 0 or total <= 0:
        return set()
    import numpy as np

    return {int(s) for s in np.unique(np.round(np.geomspace(1, total, n)).astype(int))}


class InLoopScorer:
    """Scores the trace set (and optionally runs direct evaluation) on the in-memory model at step boundaries."""

    def __init__(self, cfg: TrainJobConfig, tokenizer, cache_dir: str, total_steps: int = 0) -> None:
        self.cfg, self.tokenizer, self.cache_dir = cfg.in_loop, tokenizer, cache_dir
        self.traces = None
        self.log_steps = log_spaced_steps(self.cfg.log_points, total_steps)
        if self.cfg.score_every > 0 or self.log_steps:
            from proxy_exp.data.traces import load_traces

            self.traces = load_traces(self.cfg.traces)

    def _score_due(self, step: int) -> bool:
        return (self.cfg.score_every > 0 and step % self.cfg.score_every == 0) or step in self.log_steps

    def _eval_due(self, step: int) -> bool:
        return (self.cfg.eval_every > 0 and step % self.cfg.eval_every == 0) or step in self.log_steps

    def due(self, step: int) -> bool:
        return self._score_due(step) or self._eval_due(step)

    def metrics(self, module, step: int) -> dict[str, float]:
        out: dict[str, float] = {}
        was_training = module.training
        module.eval()
        try:
            if self._score_due(step):
                from proxy_exp.score.aggregate import aggregate
                from proxy_exp.score.scorer import score_traces, token_frequencies

                scored = score_traces(module, self.tokenizer, self.traces, self.cfg.score, progress=False)
                freq = token_frequencies(scored.tokens["token_id"].to_numpy(), len(self.tokenizer),
                                         self.cfg.score.freq_smoothing)
                out.update({k: float(v) for k, v in aggregate(scored.tokens, self.cfg.score, freq).overall.items()})
            if self._eval_due(step):
                from proxy_exp.evaluate.harness import evaluate_in_memory

                ev = evaluate_in_memory(module, self.tokenizer, self.cfg.evaluate, self.cache_dir)
                out.update({f"eval/mean/{k}": float(v) for k, v in ev.mean.items()})
        finally:
            module.train(was_training)
        return {k: v for k, v in out.items() if v == v}


def _save_checkpoint(engine, ckpt_root: str, step: int, is_main: bool, keep: int, before_complete=None) -> None:
    """Save at a step boundary; a checkpoint counts only once its COMPLETE marker exists.

    ``before_complete`` (rank 0: flushing the metrics of the steps up to here) runs before the marker is
    written, so a complete checkpoint always has its metrics in MLflow behind it."""
    import torch.distributed as tdist

    tag = f"step-{step}"
    engine.save_checkpoint(ckpt_root, tag=tag, client_state={"step": step, "universal_checkpoint_info": {}})
    if tdist.is_initialized():
        tdist.barrier()
    if is_main:
        if before_complete is not None:
            before_complete()
        with open(os.path.join(ckpt_root, tag, COMPLETE), "w") as f:
            f.write(json.dumps({"step": step, "time": time.time()}))
        _prune_checkpoints(ckpt_root, keep)


def result_dict(r: TrainResult) -> dict:
    return asdict(r)
