"""Where a job runs (proxy_exp/devices.py): the device, dtype and sharding a loaded model gets, and the device plan
and environment of a training job, for machines with and without GPUs (the GPU count is passed in)."""
import os
import subprocess
import sys

import pytest
import torch

from proxy_exp.config import ModelConfig, PretrainConfig
from proxy_exp.devices import resolve_placement, train_device_plan
from proxy_exp.environment import JOB_ENV_DEFAULTS
from tests.helpers import REPO


@pytest.mark.parametrize("device,dtype,n_gpus,bf16,expected", [
    ("auto", "auto", 0, False, ("cpu", torch.float32)),
    ("auto", "auto", 8, True, ("cuda:0", torch.bfloat16)),
    ("auto", "auto", 1, False, ("cuda:0", torch.float16)),  # a GPU without bf16 (e.g. V100)
    ("cpu", "auto", 8, True, ("cpu", torch.float32)),
    ("cuda", "float32", 1, True, ("cuda:0", torch.float32)),
    ("auto", "bfloat16", 0, False, ("cpu", torch.bfloat16)),
])
def test_placement_for_each_setting(device, dtype, n_gpus, bf16, expected):
    p = resolve_placement(ModelConfig(device=device, dtype=dtype), n_gpus=n_gpus, has_bf16=bf16)
    assert (p.device, p.dtype) == expected
    params = p.params()  # what the score and evaluate runs log to MLflow
    assert params["model.device_resolved"] == expected[0] and params["model.dtype_resolved"] == str(expected[1])[6:]


def test_sharded_placement_and_its_errors():
    p = resolve_placement(ModelConfig(device_map="auto", max_memory={"0": "70GiB", "1": "70GiB", "cpu": "0GiB"}),
                          n_gpus=2, has_bf16=True, cache_dir="/c")
    assert p.from_pretrained_kwargs() == {"dtype": torch.bfloat16, "device_map": "auto",
                                          "max_memory": {0: "70GiB", 1: "70GiB", "cpu": "0GiB"},
                                          "offload_folder": "/c/offload"}
    with pytest.raises(ValueError, match="model.device=cuda"):
        resolve_placement(ModelConfig(device="cuda"), n_gpus=0)
    with pytest.raises(ValueError, match="model.device_map='everywhere'"):
        resolve_placement(ModelConfig(device_map="everywhere"), n_gpus=2)
    with pytest.raises(ValueError, match="model.max_memory is set but model.device_map is empty"):
        resolve_placement(ModelConfig(max_memory={"0": "1GiB"}), n_gpus=1)
    with pytest.raises(ValueError, match="model.max_memory key 'npu0'"):
        resolve_placement(ModelConfig(device_map="auto", max_memory={"npu0": "1GiB"}), n_gpus=1)
    with pytest.raises(ValueError, match="names GPUs"):
        resolve_placement(ModelConfig(device_map="auto", max_memory={"0": "1GiB"}), n_gpus=0)


def test_training_device_plan_follows_the_allocation():
    cpu = train_device_plan(PretrainConfig(), n_gpus=0)
    assert (cpu.gpus_per_node, cpu.backend, cpu.accelerator, cpu.bf16) == (0, "gloo", "cpu", False)
    gpu = train_device_plan(PretrainConfig(), n_gpus=8, local_ranks=8)  # default -1: what the job was allocated
    assert (gpu.gpus_per_node, gpu.backend, gpu.accelerator, gpu.bf16) == (8, "nccl", "cuda", True)
    assert gpu.environment() == {"DS_ACCELERATOR": "cuda"} and gpu.device(3) == torch.device("cuda:3")
    assert train_device_plan(PretrainConfig(precision="fp32"), n_gpus=1).bf16 is False
    with pytest.raises(ValueError, match="pretrain.gpus_per_node=0 trains on CPU, but this job has 2 GPU"):
        train_device_plan(PretrainConfig(gpus_per_node=0), n_gpus=2)
    with pytest.raises(ValueError, match="pretrain.gpus_per_node=4 but this job sees 2 GPU"):
        train_device_plan(PretrainConfig(gpus_per_node=4), n_gpus=2)
    with pytest.raises(ValueError, match="one rank per GPU"):
        train_device_plan(PretrainConfig(), n_gpus=2, local_ranks=4)


@pytest.mark.parametrize("gpus_per_node", [-1, 8])
def test_training_device_plan_with_one_gpu_bound_to_each_task(gpus_per_node):
    """Slurm's per-task binding (--gpus-per-task=1, --gpu-bind=single:1): each of a node's 8 ranks sees one GPU,
    the node has 8, and every rank trains on its cuda:0."""
    plan = train_device_plan(PretrainConfig(gpus_per_node=gpus_per_node), n_gpus=1, local_ranks=8)
    assert (plan.gpus_per_node, plan.backend, plan.per_task) == (8, "nccl", True)
    assert {plan.device(r) for r in range(8)} == {torch.device("cuda:0")}
    with pytest.raises(ValueError, match="pretrain.gpus_per_node=16 but this job sees 8 GPU"):
        train_device_plan(PretrainConfig(gpus_per_node=16), n_gpus=1, local_ranks=8)
    alone = train_device_plan(PretrainConfig(), n_gpus=1, local_ranks=1)  # one rank, one GPU: not a binding
    assert not alone.per_task and alone.device(0) == torch.device("cuda:0")


def _gather_identities(rank: int, port: int, identities: list, results) -> None:
    import torch.distributed as tdist

    from proxy_exp.devices import check_one_gpu_per_rank

    tdist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=len(identities))
    try:
        check_one_gpu_per_rank(identities[rank], len(identities))
        results.put((rank, ""))
    except ValueError as e:
        results.put((rank, str(e)))
    finally:
        tdist.destroy_process_group()


@pytest.mark.parametrize("shared", [False, True])
def test_every_rank_checks_its_gpu_is_its_own_over_gloo(shared):
    """The check a multi-rank GPU job runs after its process group starts, here with two real gloo ranks: each rank
    gathers every rank's (host, GPU UUID); when two are the same, every rank raises the same one-line error."""
    import torch.multiprocessing as mp

    from proxy_exp.distributed import free_port

    identities = [("node1", "GPU-a"), ("node1", "GPU-a" if shared else "GPU-b")]
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=_gather_identities, args=(r, port, identities, results))
             for port in [free_port()] for r in range(2)]
    for proc in procs:
        proc.start()
    got = dict(results.get(timeout=120) for _ in procs)
    for proc in procs:
        proc.join(60)
    if shared:
        assert got[0] == got[1] and got[0].startswith("ranks 0 and 1 share GPU GPU-a on node1")
    else:
        assert got == {0: "", 1: ""}


def test_ranks_sharing_a_gpu_are_an_error_naming_the_fix():
    from proxy_exp.devices import duplicate_gpus

    assert duplicate_gpus([("n1", "GPU-a"), ("n1", "GPU-b"), ("n2", "GPU-a"), ("n2", "GPU-b")]) == ""
    error = duplicate_gpus([("n1", "GPU-a"), ("n1", "GPU-b"), ("n1", "GPU-a")])
    assert error.startswith("ranks 0 and 2 share GPU GPU-a on n1") and "--gpus-per-task=1" in error


def test_no_entry_point_or_job_pins_deepspeed_to_the_cpu_accelerator():
    """A GPU job's environment: nothing proxy-exp sets at import (entry points, submitit jobs) pins DeepSpeed to its
    CPU accelerator; the training job selects DeepSpeed's accelerator from its device plan."""
    assert "DS_ACCELERATOR" not in JOB_ENV_DEFAULTS
    env = {k: v for k, v in os.environ.items() if k != "DS_ACCELERATOR"}
    code = ("import os, launchers.app, launchers.submit; from proxy_exp.environment import offline_env; offline_env();"
            "print(os.environ.get('DS_ACCELERATOR', 'unset'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "unset"


def test_deepspeed_accelerator_follows_the_backend():
    from deepspeed.accelerator import get_accelerator

    from proxy_exp.distributed import select_deepspeed_accelerator

    try:
        select_deepspeed_accelerator("cuda")  # what a NCCL job gets, even after a CPU-accelerator import
        assert get_accelerator().device_name() == "cuda" and os.environ["DS_ACCELERATOR"] == "cuda"
    finally:
        select_deepspeed_accelerator("cpu")
    assert get_accelerator().device_name() == "cpu"


def test_sharding_as_the_readme_writes_it_on_the_command_line(compose_cfg):
    """model.device_map=auto ++model.max_memory={gpu0: ..., gpu1: ..., cpu: ...} composes and reaches accelerate as GPU
    indices (Hydra's dict keys are strings: {0: ...} would not compose)."""
    import launchers.app as app
    from proxy_exp.config import ScoreJobConfig

    job = app.to_job(compose_cfg("score", ["model.path=/tmp/m", "model.device_map=auto",
                                           "++model.max_memory={gpu0: 70GiB, gpu1: 70GiB, cpu: 0GiB}"]), ScoreJobConfig)
    p = resolve_placement(job.model, n_gpus=2, has_bf16=True, cache_dir="/c")
    assert p.from_pretrained_kwargs()["max_memory"] == {0: "70GiB", 1: "70GiB", "cpu": "0GiB"}
    assert p.from_pretrained_kwargs()["device_map"] == "auto"


def test_batch_sizes_and_kernel_choice_per_device():
    """What a GPU job would run with, decided on CPU: the score batch size (auto: the longest traces within the token
    budget on a GPU, 1 on CPU), lm-eval's batch size, and the kernel auto picks for a head on a CUDA device."""
    from proxy_exp.config import EvaluateConfig, ScoreConfig
    from proxy_exp.evaluate.harness import batch_size
    from proxy_exp.score import fused
    from proxy_exp.score.lm_head import resolve_kernel
    from proxy_exp.score.scorer import AUTO_BATCH_MAX, AUTO_BATCH_TOKENS, resolve_batch_size

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert resolve_batch_size(ScoreConfig(batch_size=0), cpu, 1000) == (1, ScoreConfig().auto_batch)
    assert resolve_batch_size(ScoreConfig(batch_size=0), cuda, 1000) == (min(AUTO_BATCH_MAX, AUTO_BATCH_TOKENS // 1000),
                                                                         True)
    assert resolve_batch_size(ScoreConfig(batch_size=0), cuda, 10 * AUTO_BATCH_TOKENS) == (1, True)
    assert resolve_batch_size(ScoreConfig(batch_size=6, auto_batch=False), cuda, 1000) == (6, False)
    assert [batch_size(EvaluateConfig(batch_size=v)) for v in ("auto", "auto:4", "16")] == ["auto", "auto:4", 16]
    for bad in ("0", "-2", "big", "auto:x"):
        with pytest.raises(ValueError, match="evaluate.batch_size"):
            batch_size(EvaluateConfig(batch_size=bad))
    head = torch.nn.Linear(8, 32, bias=False)
    assert resolve_kernel("auto", head, cpu) == ("torch", "")  # on CPU the torch path is the one there is
    assert resolve_kernel("torch", head, cuda) == ("torch", "")
    if fused.triton_available():
        assert resolve_kernel("auto", head, cuda) == ("triton", "")
        kernel, why = resolve_kernel("auto", head.double(), cuda)  # a dtype the kernel does not take: fall back
        assert kernel == "torch" and "float64" in why
    with pytest.raises(ValueError, match="plain linear LM head"):
        resolve_kernel("triton", torch.nn.Sequential(head), cuda)


def test_sharded_evaluation_arguments_for_lm_eval():
    """A sharded model reaches lm-eval's HFLM through its own parallelize / device_map / max_memory_per_gpu options."""
    from proxy_exp.evaluate.harness import _placement_args

    one = resolve_placement(ModelConfig(), n_gpus=1, has_bf16=True)
    assert _placement_args(one) == {"device": "cuda:0", "dtype": "bfloat16"}
    assert _placement_args(resolve_placement(ModelConfig(), n_gpus=0)) == {"device": "cpu", "dtype": "float32"}
    sharded = resolve_placement(ModelConfig(device_map="auto", max_memory={"gpu0": "70GiB", "gpu1": "70GiB",
                                                                           "cpu": "10GiB"}),
                                n_gpus=2, has_bf16=True, cache_dir="/c")
    args = _placement_args(sharded)
    assert args["parallelize"] is True and args["device_map"] == "auto" and args["max_memory_per_gpu"] == "70GiB"
    assert args["max_cpu_memory"] == "10GiB" and args["offload_folder"] == "/c/offload" and args["dtype"] == "bfloat16"
    uneven = resolve_placement(ModelConfig(device_map="auto", max_memory={"gpu0": "70GiB", "gpu1": "30GiB"}),
                               n_gpus=2, has_bf16=True)
    with pytest.raises(ValueError, match="max_memory_per_gpu"):
        _placement_args(uneven)
