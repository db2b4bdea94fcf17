"""Slurm's pre-timeout / preemption signal: a flag read at step boundaries, and the job's own requeue."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import torch


class PreemptionFlag:
    """Set by Slurm's pre-timeout / preemption signal; read only at step boundaries.

    The handler only records the signal (never saves from inside it: a collective or a checkpoint there can
    deadlock). All ranks agree on the flag with one all-reduce per step, finish the step, save, and requeue.
    Use as a context manager: the previous handler is restored on exit.
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

    def agreed(self, world_size: int, device: torch.device | str = "cpu") -> bool:
        """Whether any rank got the signal (one all-reduce when several ranks train). ``device``: where the
        process group reduces (a CUDA tensor under NCCL, which refuses CPU tensors)."""
        if world_size == 1:
            return self.requested
        import torch.distributed as tdist

        t = torch.tensor([1.0 if self.requested else 0.0], device=device)
        tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
        return bool(t.item() > 0)


def slurm_job_id() -> str | None:
    """This process's Slurm job id (``<array job>_<task>`` for an array element), or None outside Slurm."""
    env = os.environ
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID")


def requeue_and_wait(job_id: str, wait_s: float = 300.0) -> None:
    """Ask Slurm to requeue this job, then wait to be stopped (the requeue kills this process)."""
    print(f"[proxy-exp] checkpoint saved; requeueing Slurm job {job_id}", file=sys.stderr, flush=True)
    subprocess.run(["scontrol", "requeue", job_id], check=True, timeout=60)
    time.sleep(wait_s)
