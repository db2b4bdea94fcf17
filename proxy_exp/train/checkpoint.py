"""Checkpoints of a training unit: ``checkpoints/step-N`` folders that count only once their COMPLETE marker exists.

A checkpoint is saved at a step boundary by every rank (DeepSpeed), then rank 0 runs ``before_complete`` (flushing
the metrics of the steps up to here, so a complete checkpoint always has its metrics in MLflow behind it), writes
the marker and prunes older complete checkpoints beyond ``keep``. A half-written folder is never resumed from.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from typing import Callable

COMPLETE = "COMPLETE"


def _complete_steps(ckpt_root: str) -> list[int]:
    if not os.path.isdir(ckpt_root):
        return []
    return sorted(int(d.split("-")[1]) for d in os.listdir(ckpt_root)
                  if d.startswith("step-") and os.path.exists(os.path.join(ckpt_root, d, COMPLETE)))


def latest_checkpoint(ckpt_root: str) -> int | None:
    """The step of the newest complete checkpoint, or None."""
    steps = _complete_steps(ckpt_root)
    return steps[-1] if steps else None


def prune_checkpoints(ckpt_root: str, keep: int) -> None:
    """Delete complete checkpoints older than the newest ``keep`` (``keep <= 0``: keep all)."""
    for s in _complete_steps(ckpt_root)[:-keep] if keep > 0 else []:
        shutil.rmtree(os.path.join(ckpt_root, f"step-{s}"), ignore_errors=True)


def save_checkpoint(engine, ckpt_root: str, step: int, is_main: bool, keep: int,
                    before_complete: Callable[[], None] | None = None) -> None:
    """Save the engine's state at step ``step``; rank 0 marks it COMPLETE (after ``before_complete``) and prunes."""
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
        prune_checkpoints(ckpt_root, keep)


def resume(engine, ckpt_root: str) -> int:
    """Load the newest complete checkpoint into ``engine``; returns the step to continue from (0: none)."""
    latest = latest_checkpoint(ckpt_root)
    if latest is None:
        return 0
    _, client_state = engine.load_checkpoint(ckpt_root, tag=f"step-{latest}")
    return int(client_state["step"])
