"""Where a job runs: the device, dtype and sharding of a loaded model, and the device plan of a training job.

Every choice is a pure function of the config and of what the machine has (passed in explicitly in tests, read
from torch otherwise), so the plan a GPU job gets is checked on a CPU machine too.

- :func:`resolve_placement` (``model.device``, ``model.dtype``, ``model.device_map``, ``model.max_memory``): a
  loaded model for scoring or evaluation. ``auto`` device: CUDA when a GPU is visible, else CPU; ``auto`` dtype:
  bfloat16 on a GPU that supports it, else float16 on a GPU, float32 on CPU. A ``device_map`` shards one model over
  the node's devices through accelerate.
- :func:`train_device_plan` (``pretrain.gpus_per_node``): how many GPUs a training job uses (one rank each, NCCL,
  DeepSpeed's CUDA accelerator, bf16) or CPU (gloo, DeepSpeed's CPU accelerator). The allocation is the one
  source of truth: -1 (the default) takes the GPUs the job has; 0 while GPUs are allocated is an error naming the
  setting. Both ways Slurm hands a node's GPUs to its tasks work: every task sees all of them (rank ``r`` uses
  ``cuda:r``), or each task sees only its own (``--gpus-per-task=1``, ``--gpu-bind=single:1``: every rank uses
  ``cuda:0``); :func:`duplicate_gpus` turns ranks that ended up sharing one GPU into an error that says so.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch

from proxy_exp.config import DType, Device, ModelConfig, Precision, PretrainConfig

# accelerate's device_map strategies (transformers' from_pretrained(device_map=...))
DEVICE_MAPS: tuple[str, ...] = ("auto", "balanced", "balanced_low_0", "sequential")


def cuda_device_count() -> int:
    """GPUs this process may use (0 without CUDA)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def bf16_supported() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


@dataclass(frozen=True)
class Placement:
    """Where a loaded model goes: ``device`` (inputs go there; the first device of a ``device_map``), ``dtype``,
    and, when sharded, accelerate's ``device_map`` strategy with ``max_memory`` per device."""

    device: str
    dtype: torch.dtype
    device_map: str = ""
    max_memory: dict[Any, str] = field(default_factory=dict)
    offload_folder: str = ""

    def params(self) -> dict[str, str]:
        """What was chosen, for the run's MLflow params."""
        out = {"model.device_resolved": self.device, "model.dtype_resolved": str(self.dtype).removeprefix("torch.")}
        if self.device_map:
            out["model.device_map"] = self.device_map
            out["model.max_memory"] = ",".join(f"{k}={v}" for k, v in self.max_memory.items())
        return out

    def from_pretrained_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {"dtype": self.dtype}
        if self.device_map:
            kw["device_map"] = self.device_map
            if self.max_memory:
                kw["max_memory"] = dict(self.max_memory)
            if self.offload_folder:
                kw["offload_folder"] = self.offload_folder
        return kw


def _max_memory(cfg: ModelConfig) -> dict[Any, str]:
    out: dict[Any, str] = {}
    for key, value in cfg.max_memory.items():
        k = str(key)
        gpu = k[3:] if k.startswith("gpu") else k  # gpu0: how a GPU is written on the command line (Hydra's dict
        if gpu.isdigit():                          # keys are strings; {0: ...} does not compose)
            out[int(gpu)] = str(value)
        elif k in ("cpu", "disk", "mps"):
            out[k] = str(value)
        else:
            raise ValueError(f"model.max_memory key {k!r}: use gpu0, gpu1, ... (or a GPU index), 'cpu' or 'disk', "
                             "e.g. ++model.max_memory={gpu0: 70GiB, gpu1: 70GiB, cpu: 0GiB}")
    return out


def resolve_placement(cfg: ModelConfig, n_gpus: int | None = None, has_bf16: bool | None = None,
                      cache_dir: str = "") -> Placement:
    """The device, dtype and sharding of a model loaded with ``cfg`` on a machine with ``n_gpus`` GPUs (default:
    this machine's); raises ValueError naming the setting when the machine cannot do what it asks."""
    n_gpus = cuda_device_count() if n_gpus is None else n_gpus
    has_bf16 = bf16_supported() if has_bf16 is None else has_bf16
    if cfg.device == Device.cuda and n_gpus == 0:
        raise ValueError("model.device=cuda but no CUDA device is visible here (torch.cuda.is_available() is False); "
                         "run on a GPU node, or set model.device=auto (or cpu)")
    on_gpu = cfg.device == Device.cuda or (cfg.device == Device.auto and n_gpus > 0)
    if cfg.dtype == DType.auto:
        dtype = (torch.bfloat16 if has_bf16 else torch.float16) if on_gpu else torch.float32
    else:
        dtype = getattr(torch, cfg.dtype)
    if cfg.device_map and cfg.device_map not in DEVICE_MAPS:
        raise ValueError(f"model.device_map={cfg.device_map!r}: use one of {', '.join(DEVICE_MAPS)} (accelerate's "
                         "strategies), or '' for one device")
    max_memory = _max_memory(cfg)
    if max_memory and not cfg.device_map:
        raise ValueError("model.max_memory is set but model.device_map is empty: set model.device_map=auto to shard "
                         "the model over the devices max_memory names")
    if cfg.device_map and not on_gpu:
        # on CPU a device map can still place weights on 'cpu' and 'disk' (accelerate's offloading)
        gpus_named = [k for k in max_memory if isinstance(k, int)]
        if gpus_named:
            raise ValueError(f"model.max_memory names GPUs {gpus_named} but the model runs on CPU here")
    offload = cfg.offload_folder or (os.path.join(cache_dir, "offload") if cfg.device_map and cache_dir else "")
    return Placement(device="cuda:0" if on_gpu else "cpu", dtype=dtype, device_map=cfg.device_map,
                     max_memory=max_memory, offload_folder=offload)


@dataclass(frozen=True)
class TrainDevicePlan:
    """A training job's device: ``gpus_per_node`` GPUs (0 = CPU), the torch.distributed ``backend``, DeepSpeed's
    ``accelerator``, whether it trains in ``bf16``, and the environment its processes must have."""

    gpus_per_node: int
    backend: str
    accelerator: str
    bf16: bool
    per_task: bool = False  # each rank sees only its own GPU (Slurm binds one per task): every rank uses cuda:0

    @property
    def on_gpu(self) -> bool:
        return self.gpus_per_node > 0

    def environment(self) -> dict[str, str]:
        """Variables set before DeepSpeed is imported (it picks its accelerator once, at import)."""
        return {"DS_ACCELERATOR": self.accelerator}

    def device(self, local_rank: int) -> torch.device:
        if not self.on_gpu:
            return torch.device("cpu")
        return torch.device("cuda:0" if self.per_task else f"cuda:{local_rank}")


def train_device_plan(p: PretrainConfig, n_gpus: int | None = None, local_ranks: int = 1) -> TrainDevicePlan:
    """The device plan of a training job with ``n_gpus`` GPUs visible to this process (default: this machine's) and
    ``local_ranks`` ranks on this node; raises ValueError naming the setting when they disagree. One visible GPU
    with several ranks on the node is Slurm's per-task binding: the node has one GPU per rank."""
    n_gpus = cuda_device_count() if n_gpus is None else n_gpus
    per_task = n_gpus == 1 and local_ranks > 1
    if per_task:
        n_gpus = local_ranks
    if p.gpus_per_node == 0:
        if n_gpus > 0:
            raise ValueError(f"pretrain.gpus_per_node=0 trains on CPU, but this job has {n_gpus} GPU(s) allocated: set "
                             "pretrain.gpus_per_node=-1 to train on them, or allocate no GPUs (executor.gpus_per_node=0,"
                             " or CUDA_VISIBLE_DEVICES= for a local run)")
        gpus = 0
    elif p.gpus_per_node < 0:
        gpus = n_gpus
    else:
        if n_gpus < p.gpus_per_node:
            raise ValueError(f"pretrain.gpus_per_node={p.gpus_per_node} but this job sees {n_gpus} GPU(s): allocate "
                             f"{p.gpus_per_node} (executor.gpus_per_node / executor.train.gpus_per_node), or set "
                             "pretrain.gpus_per_node=-1 to use what is allocated")
        gpus = p.gpus_per_node
    if gpus and local_ranks > gpus:
        raise ValueError(f"{local_ranks} ranks on this node but {gpus} GPU(s): one rank per GPU (Slurm "
                         "--ntasks-per-node must equal the GPUs per node)")
    bf16 = p.precision == Precision.bf16 or (p.precision == Precision.auto and gpus > 0)
    return TrainDevicePlan(gpus_per_node=gpus, backend="nccl" if gpus else "gloo",
                           accelerator="cuda" if gpus else "cpu", bf16=bf16, per_task=per_task and gpus > 0)


def gpu_identity(device: torch.device) -> tuple[str, str]:
    """(host, GPU UUID) of this rank's device: what :func:`duplicate_gpus` compares across ranks."""
    import socket

    return socket.gethostname(), str(torch.cuda.get_device_properties(device).uuid)


def duplicate_gpus(identities: list[tuple[str, str]]) -> str:
    """An error line when two ranks got the same GPU (one ``(host, GPU UUID)`` per rank, by rank), else "": e.g. a
    job whose tasks were each bound to a GPU but several to the same one."""
    first: dict[tuple[str, str], int] = {}
    for rank, ident in enumerate(identities):
        if ident in first:
            return (f"ranks {first[ident]} and {rank} share GPU {ident[1]} on {ident[0]}: give each Slurm task its own "
                    "GPU (--gpus-per-task=1 or --gpu-bind=single:1, or let every task see all the node's GPUs), with "
                    "as many tasks per node as GPUs (pretrain.gpus_per_node)")
        first[ident] = rank
    return ""


def check_one_gpu_per_rank(identity: tuple[str, str], world_size: int) -> None:
    """Every rank on its own GPU: the ranks' :func:`gpu_identity` gathered over a gloo group (an NCCL communicator
    between ranks sharing a GPU fails first, with NCCL's own 'Duplicate GPU' message); raises ValueError with
    :func:`duplicate_gpus`'s line on every rank. Called by all ranks after the process group is initialised."""
    if world_size == 1:
        return
    import torch.distributed as tdist

    group = tdist.new_group(backend="gloo")
    identities: list[Any] = [None] * world_size
    tdist.all_gather_object(identities, identity, group=group)
    tdist.destroy_process_group(group)
    error = duplicate_gpus([tuple(i) for i in identities])
    if error:
        raise ValueError(error)
