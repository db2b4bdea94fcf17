"""The train job: pretrain one model on one corpus through DeepSpeed (``proxy-train``, a campaign's training unit).

``train(cfg) -> TrainResult`` reads top to bottom: data (the shared tokenizer, the packed corpus), the engine,
resume from the unit's latest complete checkpoint, tracking (rank 0; a resumed unit continues its own MLflow run),
the step loop, and the saved model (an HF folder with its tokenizer). A unit is done only when its completion
marker exists; a run stopped early (``stop_after_steps`` or a preemption outside Slurm) writes none and resumes
when called again.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from dataclasses import dataclass

import torch

from proxy_exp import units
from proxy_exp.compute import train_flops_per_token
from proxy_exp.config import TrainJobConfig, resolve_root
from proxy_exp.devices import TrainDevicePlan, check_one_gpu_per_rank, gpu_identity, train_device_plan
from proxy_exp.distributed import DistEnv, dist_env, init_deepspeed_distributed
from proxy_exp.files import tmp_name
from proxy_exp.models import MODEL_RECORD
from proxy_exp.tracking import Run, keys
from proxy_exp.train.checkpoint import resume
from proxy_exp.train.in_loop import InLoopMetrics
from proxy_exp.train.loop import build_engine, param_record, run_steps
from proxy_exp.train.plan import TrainPlan, plan_training
from proxy_exp.train.preemption import requeue_and_wait, slurm_job_id


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
    device: str = ""  # where it trained: cpu, or cuda:<local rank> of rank 0


def default_unit_id(cfg: TrainJobConfig) -> str:
    if cfg.unit_id:
        return cfg.unit_id
    with units.input_memo(os.path.join(resolve_root(cfg.paths), "cache")):
        return units.train_unit_id(cfg.model, cfg.tokenizer, cfg.tokenizer_corpora, cfg.corpus, cfg.pretrain, cfg.seed)


def _prepare_data(cfg: TrainJobConfig, env: DistEnv, cache: str, progress: bool):
    """The shared tokenizer, the plan and the run's data (:class:`proxy_exp.data.mixture.TrainData`): the token
    shards its tokenize units wrote (rank 0 writes any that are missing, e.g. for a standalone proxy-train; the other
    ranks read its caches). A budget that repeats a source past its max_epochs warns, or fails with
    ``corpus.repeat_policy=fail``."""
    import sys

    import torch.distributed as tdist

    from proxy_exp.data.mixture import open_train_data, repeat_problems
    from proxy_exp.data.tokenizer import build_tokenizer

    tok_corpora = dict(cfg.tokenizer_corpora) or {cfg.corpus.name: cfg.corpus}
    if not env.is_main:
        tdist.barrier()
    tokenizer, tok_dir = build_tokenizer(cfg.tokenizer, tok_corpora, cache, progress=progress and env.is_main)
    plan = plan_training(cfg, len(tokenizer), env.world_size)
    packed = open_train_data(cfg.corpus, tokenizer, tok_dir, cfg.pretrain.seq_len, cache, cfg.seed,
                             cfg.pretrain.global_batch, plan.steps, cfg.tokenize, progress=progress and env.is_main,
                             tokenize_missing=env.is_main)
    if env.is_main:
        tdist.barrier()
    problems = repeat_problems(cfg.corpus.name, packed.shares())
    if problems and str(cfg.corpus.repeat_policy) == "fail":
        raise ValueError(problems[0] + " (corpus.repeat_policy=fail)")
    if env.is_main:
        for line in problems:
            print(f"warning: {line}", file=sys.stderr)
    return tokenizer, plan, packed


def _data_metrics(packed) -> dict[str, float]:
    """The realised mixture of the run: each source's share of its tokens, weight, epochs and sequences drawn."""
    out: dict[str, float] = {}
    for s in packed.shares():
        out |= {keys.data_key(s.source, field): getattr(s, field) for field in keys.DATA_FIELDS}
    return out


def _open_run(cfg: TrainJobConfig, root: str, udir: str, unit_id: str, resumed: bool, counts, plan: TrainPlan,
              env: DistEnv, dplan: TrainDevicePlan, packed) -> Run:
    """The unit's MLflow run: a new one, or (when resuming) the one its first attempt opened."""
    run_id_file = os.path.join(udir, "mlflow_run_id")
    prev = open(run_id_file).read().strip() if os.path.exists(run_id_file) and resumed else ""
    extra = {keys.CORPUS: cfg.corpus.name, keys.SIZE: cfg.model.name, keys.SEED: cfg.seed, keys.ROLE: "proxy"} | cfg.tags
    name = extra.pop("name", f"train {cfg.corpus.name} {cfg.model.name} s{cfg.seed}")
    run = Run(cfg.tracking, root, name, keys.unit_tags("train", unit_id, cfg.campaign, **extra), cfg.parent_run_id,
              run_id=prev, skip_logged_steps=True)
    with open(run_id_file, "w") as f:
        f.write(run.run_id)
    run.log_params(keys.flat_params(cfg.model, "model") | keys.flat_params(cfg.pretrain, "pretrain")
                   | keys.flat_params(cfg.corpus, "corpus") | keys.flat_params(cfg.tokenizer, "tokenizer")
                   | {"seed": cfg.seed, **param_record(counts), "steps": plan.steps, "tokens": plan.tokens,
                      "world_size": env.world_size, "unit_dir": udir, "packed_sequences": packed.num_sequences,
                      "device": dplan.accelerator, "gpus_per_node_resolved": dplan.gpus_per_node, "bf16": dplan.bf16})
    return run


def _save_model(engine, tokenizer, model_dir: str, record: dict) -> None:
    """The trained model as an HF folder with its tokenizer and :data:`MODEL_RECORD` (tmp name, then rename)."""
    tmp = tmp_name(model_dir)
    shutil.rmtree(tmp, ignore_errors=True)
    engine.module.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    with open(os.path.join(tmp, MODEL_RECORD), "w") as f:
        json.dump(record, f, indent=2)
    shutil.rmtree(model_dir, ignore_errors=True)
    os.replace(tmp, model_dir)


def train(cfg: TrainJobConfig, progress: bool = True) -> TrainResult:
    """Pretrain one model on one corpus; resumes from the unit's latest complete checkpoint.

    A single-process unit holds its lock while it runs (two campaigns that share it run it once); a unit that fails
    records why (``FAILED.json``, shown by ``proxy-campaign action=status``)."""
    root = resolve_root(cfg.paths)
    unit_id = default_unit_id(cfg)
    done = units.read_done(root, unit_id)
    if done is not None:
        return TrainResult(**done)
    single = int(os.environ.get("SLURM_NTASKS", "1")) <= 1 and "TORCHELASTIC_RUN_ID" not in os.environ
    with units.unit_lock(root, unit_id) if single else contextlib.nullcontext():
        done = units.read_done(root, unit_id) if single else None  # finished by another process meanwhile?
        if done is not None:
            return TrainResult(**done)
        try:
            return _train(cfg, progress, root, unit_id)
        except Exception as e:
            units.record_failure(root, unit_id, e)
            raise


def _train(cfg: TrainJobConfig, progress: bool, root: str, unit_id: str) -> TrainResult:
    t0 = time.time()
    udir = units.unit_dir(root, unit_id)
    os.makedirs(udir, exist_ok=True)
    ckpt_root = os.path.join(udir, "checkpoints")
    cache = os.path.join(root, "cache")
    p = cfg.pretrain
    torch.set_num_threads(max(1, p.num_threads))

    env = dist_env()
    dplan = train_device_plan(p, local_ranks=env.local_world_size)  # before DeepSpeed is imported
    init_deepspeed_distributed(dplan.backend)
    import torch.distributed as tdist

    tokenizer, plan, packed = _prepare_data(cfg, env, cache, progress)
    device = dplan.device(env.local_rank)
    if dplan.on_gpu:
        torch.cuda.set_device(device)
        check_one_gpu_per_rank(gpu_identity(device), env.world_size)
    engine, scheduler, counts = build_engine(cfg, plan, tokenizer, device, dplan.bf16)
    start_step = resume(engine, ckpt_root)
    run = _open_run(cfg, root, udir, unit_id, start_step > 0, counts, plan, env, dplan, packed) if env.is_main else None
    if run is not None:
        run.log_metrics(_data_metrics(packed), step=0)
    in_loop = (InLoopMetrics(cfg, tokenizer, cache, plan.steps, os.path.join(udir, keys.IN_LOOP_HISTORY), start_step)
               if env.is_main and InLoopMetrics.wanted(cfg) else None)
    fpt = train_flops_per_token(counts.non_embedding, cfg.model.n_layers, cfg.model.d_model, p.seq_len)
    outcome = run_steps(engine, scheduler, packed, plan, cfg, env, device, start_step, ckpt_root, fpt, run, in_loop,
                        progress)

    if outcome.preempted_at:
        job = slurm_job_id()
        if run is not None:
            run.set_tags({keys.tag(keys.PREEMPTED_AT_STEP): outcome.preempted_at})
            run.flush()
        if job and env.is_main:
            requeue_and_wait(job)
        elif job:
            time.sleep(300)  # the requeue issued by rank 0 stops every rank
        # not under Slurm: stop here; rerunning resumes from the checkpoint
    stopped = outcome.stop_at < plan.steps
    model_dir = os.path.join(udir, "model")
    flops = outcome.stop_at * plan.tokens_per_step * fpt
    if not stopped and env.is_main:
        _save_model(engine, tokenizer, model_dir, {"unit_id": unit_id, **param_record(counts), "train_flops": plan.flops,
                                                   "tokens": plan.tokens, "corpus": cfg.corpus.name})
    result = TrainResult(unit_id=unit_id, model_dir=model_dir, final_loss=outcome.last_loss,
                         tokens=outcome.stop_at * plan.tokens_per_step, steps=outcome.stop_at, flops=flops,
                         n_params=counts.total, n_params_non_embedding=counts.non_embedding,
                         run_id=run.run_id if run else "", seconds=time.time() - t0, stopped=stopped,
                         device=str(device))
    if run is not None:
        if stopped:
            run.end("KILLED")
        else:
            run.log_metrics({keys.TRAIN_FINAL_LOSS: outcome.last_loss, keys.TRAIN_SECONDS: result.seconds,
                             **param_record(counts)}, step=outcome.stop_at)
            run.set_tags({keys.tag(keys.MODEL_DIR): model_dir})
            if in_loop is not None:
                in_loop.log_history(run)
            run.end("FINISHED")
            units.write_done(root, unit_id, result)
    if env.world_size > 1:
        tdist.barrier()
    return result
