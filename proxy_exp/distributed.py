"""Rank, world size and rendezvous: from Slurm (srun), torchrun, or a plain single process."""
from __future__ import annotations

import os
import socket
import sys
from dataclasses import dataclass


@dataclass
class DistEnv:
    rank: int
    local_rank: int
    world_size: int
    master_addr: str
    master_port: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dist_env() -> DistEnv:
    """Fill torchrun-style variables from the environment (torchrun, Slurm) or for a single process."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        rank, world, local = int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0))
    elif int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in env:
        import submitit

        d = submitit.helpers.TorchDistributedEnvironment()
        rank, world, local = d.rank, d.world_size, d.local_rank
        env.setdefault("MASTER_ADDR", d.master_addr)
        env.setdefault("MASTER_PORT", str(d.master_port))
    else:
        rank, world, local = 0, 1, 0
        env.setdefault("MASTER_ADDR", "127.0.0.1")
        env["MASTER_PORT"] = env.get("MASTER_PORT") or str(free_port())
    env.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(local))
    env.setdefault("MASTER_ADDR", "127.0.0.1")
    env.setdefault("MASTER_PORT", str(free_port()))
    return DistEnv(rank, local, world, env["MASTER_ADDR"], int(env["MASTER_PORT"]))


def init_deepspeed_distributed(backend: str) -> None:
    """deepspeed.init_distributed without JIT-compiling the CPU shared-memory op (minutes on a fresh machine).

    DeepSpeed builds `deepspeed_shm_comm` on first init on CPU; gloo works without it. The module must be
    patched through sys.modules because `deepspeed.comm` re-exports the name `torch`.
    """
    os.environ.setdefault("DS_ACCELERATOR", "cpu" if backend == "gloo" else "cuda")
    import deepspeed
    import torch.distributed as tdist

    if backend == "gloo":
        mod = sys.modules.get("deepspeed.comm.torch")
        if mod is not None and hasattr(mod, "build_shm_op"):
            mod.build_shm_op = lambda: None
    if not tdist.is_initialized():
        deepspeed.init_distributed(dist_backend=backend)
