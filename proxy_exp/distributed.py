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
    local_world_size: int = 1  # ranks on this node

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dist_env() -> DistEnv:
    """Rank, world size and rendezvous, in this order of trust:

    1. torchrun (``TORCHELASTIC_RUN_ID``): its RANK / WORLD_SIZE / MASTER_* variables;
    2. a Slurm step with several tasks (srun, submitit): derived from SLURM_* (submitit's
       TorchDistributedEnvironment), overwriting whatever RANK / MASTER_* the submitter's environment carried
       (sbatch exports the caller's environment);
    3. otherwise one process: rank 0 of 1 on 127.0.0.1 with a free port.
    """
    env = os.environ
    if "TORCHELASTIC_RUN_ID" in env and "RANK" in env:
        rank, world, local = int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0))
        local_world = int(env.get("LOCAL_WORLD_SIZE", 1))
    elif int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in env:
        import submitit

        for k in ("MASTER_ADDR", "MASTER_PORT"):  # inherited from the submitter: derive them from the job instead
            env.pop(k, None)
        d = submitit.helpers.TorchDistributedEnvironment()
        rank, world, local, local_world = d.rank, d.world_size, d.local_rank, d.local_world_size
        env["MASTER_ADDR"], env["MASTER_PORT"] = d.master_addr, str(d.master_port)
    else:
        rank, world, local, local_world = 0, 1, 0, 1
        import torch.distributed as tdist

        if not (tdist.is_available() and tdist.is_initialized()):
            env["MASTER_ADDR"], env["MASTER_PORT"] = "127.0.0.1", str(free_port())
    env.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(local), LOCAL_WORLD_SIZE=str(local_world))
    return DistEnv(rank, local, world, env["MASTER_ADDR"], int(env["MASTER_PORT"]), local_world)


def select_deepspeed_accelerator(name: str) -> None:
    """Make DeepSpeed use its ``cuda`` or ``cpu`` accelerator, whatever an inherited ``DS_ACCELERATOR`` or an
    earlier import chose (DeepSpeed picks its accelerator once, at import or on the first ``get_accelerator``)."""
    if name not in ("cuda", "cpu"):
        raise ValueError(f"DeepSpeed accelerator {name!r}: use cuda or cpu")
    os.environ["DS_ACCELERATOR"] = name
    from deepspeed.accelerator import get_accelerator, set_accelerator

    if get_accelerator().device_name() != name:
        if name == "cuda":
            from deepspeed.accelerator.cuda_accelerator import CUDA_Accelerator as Accelerator
        else:
            from deepspeed.accelerator.cpu_accelerator import CPU_Accelerator as Accelerator
        set_accelerator(Accelerator())


def init_deepspeed_distributed(backend: str) -> None:
    """deepspeed.init_distributed with DeepSpeed's accelerator chosen by ``backend`` (nccl: CUDA, gloo: CPU; see
    :func:`select_deepspeed_accelerator`), so a GPU job never trains on the CPU accelerator with its batches on
    ``cuda:N``; on CPU without JIT-compiling the shared-memory op (minutes on a fresh machine: gloo works without
    it; the module is patched through sys.modules because `deepspeed.comm` re-exports the name `torch`).
    """
    select_deepspeed_accelerator("cuda" if backend == "nccl" else "cpu")
    import deepspeed
    import torch.distributed as tdist

    if backend == "gloo":
        mod = sys.modules.get("deepspeed.comm.torch")
        if mod is not None and hasattr(mod, "build_shm_op"):
            mod.build_shm_op = lambda: None
    if not tdist.is_initialized():
        deepspeed.init_distributed(dist_backend=backend)
