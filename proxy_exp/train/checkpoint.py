"""Checkpoints of a training unit: ``checkpoints/step-N`` folders that count only once their COMPLETE marker exists,
and only while their files still match the checksums the marker records.

A checkpoint is saved at a step boundary by every rank (DeepSpeed), then rank 0 runs ``before_complete`` (flushing
the metrics of the steps up to here, so a complete checkpoint always has its metrics in MLflow behind it), writes
the marker (with each file's size and sha256) and prunes older complete checkpoints beyond ``keep``. A half-written
folder is never resumed from; a truncated or corrupt one is moved aside (``corrupt-step-N``) and the one before it
is used. A save that fills the disk removes its partial folder and fails with one line; the checkpoints before it
stay.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import sys
import time
from typing import Callable

from proxy_exp.errors import OutputNotWritable
from proxy_exp.files import write_json
from proxy_exp.units import manifest, verify_manifest

COMPLETE = "COMPLETE"


def complete_steps(ckpt_root: str) -> list[int]:
    """The steps of the checkpoints whose COMPLETE marker was written, oldest first (none is verified here)."""
    if not os.path.isdir(ckpt_root):
        return []
    return sorted(int(d.split("-")[1]) for d in os.listdir(ckpt_root)
                  if d.startswith("step-") and os.path.exists(os.path.join(ckpt_root, d, COMPLETE)))


def _intact(ckpt_root: str, step: int) -> str:
    """"" when checkpoint ``step`` matches its marker's checksums (markers without them are trusted), else why."""
    folder = os.path.join(ckpt_root, f"step-{step}")
    with open(os.path.join(folder, COMPLETE)) as f:
        files = json.load(f).get("files")
    return verify_manifest(folder, files) if files else ""


def latest_checkpoint(ckpt_root: str) -> int | None:
    """The step of the newest complete and intact checkpoint, or None; damaged ones are moved aside."""
    for step in reversed(complete_steps(ckpt_root)):
        problem = _intact(ckpt_root, step)
        if not problem:
            return step
        print(f"[proxy-exp] checkpoint step-{step} in {ckpt_root} is damaged ({problem}): not used; moved to "
              f"corrupt-step-{step}, resuming from the one before it", file=sys.stderr, flush=True)
        os.replace(os.path.join(ckpt_root, f"step-{step}"), os.path.join(ckpt_root, f"corrupt-step-{step}"))
    return None


def prune_checkpoints(ckpt_root: str, keep: int) -> None:
    """Delete complete checkpoints older than the newest ``keep`` (``keep <= 0``: keep all)."""
    for s in complete_steps(ckpt_root)[:-keep] if keep > 0 else []:
        shutil.rmtree(os.path.join(ckpt_root, f"step-{s}"), ignore_errors=True)


# torch.save's zip writer on a full disk says "file write failed", or its C++ stream "basic_ios::clear" /
# "unexpected pos" (torch 2.x): messages other I/O failures share, so they count only on a (nearly) full filesystem
_WRITE_FAILED = ("file write failed", "basic_ios::clear", "unexpected pos")


def _disk_full(e: BaseException, folder: str) -> bool:
    """Whether a failed save ran out of space: ENOSPC anywhere in the exception chain (torch wraps the stream's
    error in another RuntimeError), or a writer's failure on a filesystem with (next to) nothing left."""
    try:
        nearly_full = shutil.disk_usage(folder).free < (16 << 20)
    except OSError:
        nearly_full = False
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if (isinstance(e, OSError) and e.errno == errno.ENOSPC) or "No space left on device" in str(e):
            return True
        if nearly_full and any(m in str(e) for m in _WRITE_FAILED):
            return True
        e = e.__cause__ or e.__context__
    return nearly_full


def _release(e: BaseException) -> None:
    """Drop the locals of the frames an exception chain holds (the half-written file objects among them), so the
    files are closed now rather than whenever the exception is collected."""
    import gc
    import traceback

    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        traceback.clear_frames(e.__traceback__)
        e = e.__cause__ or e.__context__
    gc.collect()


def save_checkpoint(engine, ckpt_root: str, step: int, is_main: bool, keep: int,
                    before_complete: Callable[[], None] | None = None) -> None:
    """Save the engine's state at step ``step``; rank 0 marks it COMPLETE (after ``before_complete``) and prunes."""
    import torch.distributed as tdist

    tag = f"step-{step}"
    folder = os.path.join(ckpt_root, tag)
    try:
        engine.save_checkpoint(ckpt_root, tag=tag, client_state={"step": step, "universal_checkpoint_info": {}})
    except (OSError, RuntimeError) as e:
        if not _disk_full(e, ckpt_root):
            raise
        _release(e)  # the writer's frames hold the partial file open: its space is freed only once it is closed
        shutil.rmtree(folder, ignore_errors=True)  # a partial checkpoint: never resumed from, and it frees space
        kept = [f"step-{s}" for s in complete_steps(ckpt_root)]
        raise OutputNotWritable(
            f"the disk is full saving checkpoint {tag} in {ckpt_root} ({shutil.disk_usage(ckpt_root).free >> 10} KiB "
            f"free): the partial checkpoint was removed; complete checkpoints kept: {', '.join(kept) or 'none'}. Free "
            "space there (or lower pretrain.keep_checkpoints, or move paths.root), then rerun: it resumes from the "
            "last one") from e
    if tdist.is_initialized():
        tdist.barrier()
    if is_main:
        if before_complete is not None:
            before_complete()
        record = {"step": step, "time": time.time(), "files": manifest(folder, skip=(COMPLETE,))}
        write_json(os.path.join(folder, COMPLETE), record, indent=None)
        prune_checkpoints(ckpt_root, keep)


def resume(engine, ckpt_root: str) -> int:
    """Load the newest complete, intact checkpoint into ``engine``; returns the step to continue from (0: none)."""
    latest = latest_checkpoint(ckpt_root)
    if latest is None:
        return 0
    _, client_state = engine.load_checkpoint(ckpt_root, tag=f"step-{latest}")
    return int(client_state["step"])
