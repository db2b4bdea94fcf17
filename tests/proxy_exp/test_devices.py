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
    with pytest.raises(ValueError, match="model.max_memory key 'gpu0'"):
        resolve_placement(ModelConfig(device_map="auto", max_memory={"gpu0": "1GiB"}), n_gpus=1)
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
