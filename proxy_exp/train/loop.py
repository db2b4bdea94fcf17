"""The DeepSpeed engine of a training unit and its step loop.

The batch of a step is a pure function of (seed, step) (:class:`proxy_exp.data.mixture.TrainData`), so a
resumed run sees exactly the data an uninterrupted one does; each rank reads only its rows, two steps ahead.
Metrics are buffered and sent to MLflow when a checkpoint is saved, just before its COMPLETE marker (and at the end): a run interrupted before the marker resumes
from the previous checkpoint and recomputes those steps, and a resumed run never sends a step its MLflow run
already holds, so the loss curve has neither gaps nor duplicated steps wherever the interruption falls.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from proxy_exp.config import TrainJobConfig
from proxy_exp.distributed import DistEnv
from proxy_exp.errors import TrainingDiverged
from proxy_exp.compute import ParamCounts
from proxy_exp.models import build_model, count_params
from proxy_exp.tracking import Run, keys
from proxy_exp.train.checkpoint import save_checkpoint
from proxy_exp.train.plan import TrainPlan, lr_lambda
from proxy_exp.train.preemption import PreemptionFlag


def build_engine(cfg: TrainJobConfig, plan: TrainPlan, tokenizer, device: torch.device, bf16: bool = False):
    """The freshly initialised model (seeded by ``cfg.seed``, fp32 master weights) inside a DeepSpeed engine with
    AdamW (fused on CUDA), bf16 compute when ``bf16``, and the warm-up + cosine schedule; returns
    ``(engine, scheduler, param counts)``."""
    import deepspeed

    p = cfg.pretrain
    use_cuda = device.type == "cuda"
    model = build_model(cfg.model, len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id,
                        tokenizer.pad_token_id, seed=cfg.seed)
    counts = count_params(model)
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
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config)
    if p.compile:  # compiles the wrapped module in place: checkpoints and saved weights keep their names
        engine.compile()
    return engine, scheduler, counts


@dataclass
class LoopOutcome:
    """Where the loop ended: ``stop_at`` (the last step done), the loss there, and ``preempted_at`` (the step at
    which a preemption signal stopped it after saving, 0 if none)."""

    stop_at: int
    last_loss: float
    preempted_at: int = 0


def run_steps(engine, scheduler, packed, plan: TrainPlan, cfg: TrainJobConfig, env: DistEnv, device: torch.device,
              start_step: int, ckpt_root: str, flops_per_token: float, run: Run | None, in_loop=None,
              progress: bool = True) -> LoopOutcome:
    """Optimizer steps from ``start_step`` to the plan's last step (or ``pretrain.stop_after_steps`` more, or a
    preemption), saving a checkpoint every ``pretrain.checkpoint_every`` steps, at the end and when preempted.

    On an exception the run's buffered steps (after the last complete checkpoint) are dropped, since a resumed run
    recomputes them, and the run ends FAILED."""
    import torch.distributed as tdist

    p = cfg.pretrain
    per_rank = p.global_batch // env.world_size
    stop_at = plan.steps if p.stop_after_steps <= 0 else min(plan.steps, start_step + p.stop_after_steps)
    bar = None
    if progress and env.is_main:
        from tqdm.auto import tqdm

        bar = tqdm(total=plan.steps, initial=start_step, desc=f"train {cfg.corpus.name}/{cfg.model.name}",
                   unit="step", dynamic_ncols=True)
    outcome = LoopOutcome(stop_at=stop_at, last_loss=float("nan"))
    engine.train()
    # this rank's rows of each step's global batch, read from the token shards two steps ahead
    batches = packed.prefetch(range(start_step, stop_at), env.rank * per_rank, (env.rank + 1) * per_rank)
    try:
        with PreemptionFlag(p.preempt_signal) as flag:
            for step in range(start_step, stop_at):
                mine = next(batches)
                losses = []
                for m in range(plan.gradient_accumulation):
                    x = torch.from_numpy(mine[m * p.micro_batch:(m + 1) * p.micro_batch]).to(device)
                    out = engine(input_ids=x, labels=x)
                    engine.backward(out.loss)
                    engine.step()
                    losses.append(out.loss.detach().float())
                loss = torch.stack(losses).mean()
                if env.world_size > 1:
                    tdist.all_reduce(loss, op=tdist.ReduceOp.SUM)
                    loss = loss / env.world_size
                outcome.last_loss = float(loss)
                done_steps = step + 1
                if not math.isfinite(outcome.last_loss):  # every rank sees the same all-reduced loss
                    from proxy_exp.train.checkpoint import complete_steps

                    # the newest complete one; its checksums are verified (by one process) when the unit resumes
                    last = (complete_steps(ckpt_root) or [None])[-1]
                    raise TrainingDiverged(
                        f"train/loss is {outcome.last_loss} at step {done_steps} of {cfg.corpus.name}/{cfg.model.name} "
                        f"seed {cfg.seed}: training stopped, no checkpoint saved at this step (the last good one is "
                        f"{'step-' + str(last) if last else 'none'}); lower pretrain.lr (now {p.lr}) or raise "
                        f"pretrain.warmup_frac, or set pretrain.grad_clip, then rerun")
                if run is not None:
                    tokens = done_steps * plan.tokens_per_step
                    run.log_metrics({keys.TRAIN_LOSS: outcome.last_loss, keys.TRAIN_LR: scheduler.get_last_lr()[0],
                                     keys.TRAIN_TOKENS: tokens, keys.FLOPS_TRAIN: tokens * flops_per_token}, step=done_steps)
                if in_loop is not None and in_loop.due(done_steps):
                    metrics = in_loop.metrics(engine.module, done_steps)
                    if run is not None:
                        run.log_metrics(metrics, step=done_steps)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{outcome.last_loss:.3f}")
                is_last = done_steps == stop_at
                preempt = not is_last and flag.agreed(env.world_size, device)
                if (p.checkpoint_every and done_steps % p.checkpoint_every == 0) or is_last or preempt:
                    save_checkpoint(engine, ckpt_root, done_steps, env.is_main, p.keep_checkpoints,
                                    before_complete=run.flush if run is not None else None)
                if preempt:
                    outcome.preempted_at = outcome.stop_at = done_steps
                    break
    except BaseException as e:
        if run is not None:
            run.discard_unflushed()  # steps after the last checkpoint are recomputed on resume
            try:
                run.set_tags({keys.tag("failure"): f"{type(e).__name__}: {e}"[:4000]})
                run.end("FAILED")
            except Exception:  # noqa: BLE001 (a tracking error must not hide the job's own)
                pass
        raise
    finally:
        batches.close()
        if bar is not None:
            bar.close()
    return outcome


def param_record(counts: ParamCounts) -> dict[str, int]:
    return {keys.N_PARAMS: counts.total, keys.N_PARAMS_NON_EMBEDDING: counts.non_embedding}
