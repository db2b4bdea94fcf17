"""Training on a GPU (marked gpu: run by benchmarks/gpu_check.sh): one NCCL rank with DeepSpeed's CUDA accelerator,
bf16 and fused AdamW, a checkpoint and resume equal to an uninterrupted run; four tiny units sharing one GPU, each
in its own process (small-model mode). No MLflow (tracking.enabled=false): the GPU image has none."""
import json

import pytest
import torch

from proxy_exp.config import CorpusConfig, ExecutorConfig
from proxy_exp.train.job import train
from tests.helpers import FIXTURE_TRACES, tiny_train_cfg

pytestmark = pytest.mark.gpu


def _cfg(root, corpus_file, **pretrain):
    cfg = tiny_train_cfg(root, steps=20, micro_batch=16, **pretrain)
    cfg.corpus = CorpusConfig(name="fixture_text", source="text_files", paths=[str(corpus_file)], max_bytes=0)
    cfg.tracking.enabled = False
    return cfg


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "text.txt"
    with open(FIXTURE_TRACES) as f:
        rows = [json.loads(line) for line in f]
    path.write_text("\n\n".join(r["prompt"] + "\n" + r["solution"] for r in rows) * 20)
    return path


def test_nccl_training_checkpoints_and_resumes_on_gpu(tmp_path, corpus_file):
    import torch.distributed as tdist

    full = train(_cfg(tmp_path / "full", corpus_file), progress=False)
    assert full.device == "cuda:0" and tdist.get_backend() == "nccl"
    from deepspeed.accelerator import get_accelerator

    assert get_accelerator().device_name() == "cuda"
    from proxy_exp.train.preemption import PreemptionFlag

    flag = PreemptionFlag("USR2")  # the per-step agreement as several ranks run it: an all-reduce on a CUDA tensor
    assert flag.agreed(2, torch.device("cuda:0")) is False
    flag.requested = True
    assert flag.agreed(2, torch.device("cuda:0")) is True
    from proxy_exp.devices import gpu_identity

    host, uuid = gpu_identity(torch.device("cuda:0"))  # what ranks compare to find two on one GPU
    assert host and len(uuid.replace("-", "")) >= 32, uuid
    part = train(_cfg(tmp_path / "resumed", corpus_file, stop_after_steps=10), progress=False)
    assert part.stopped and part.steps == 10
    resumed = train(_cfg(tmp_path / "resumed", corpus_file), progress=False)
    assert resumed.steps == 20 and not resumed.stopped
    assert resumed.final_loss == pytest.approx(full.final_loss, abs=2e-3)  # bf16 on one GPU: near bit-exact
    assert full.final_loss < 6.0  # it learnt (ln 512 = 6.24 at the start)


def test_four_small_units_share_one_gpu(tmp_path, corpus_file):
    from launchers.submit import groupable, run_unit_group
    from proxy_exp.units import Unit

    configs = []
    for seed in range(4):
        cfg = _cfg(tmp_path, corpus_file)
        cfg.seed = seed
        configs.append(cfg)
    units = [Unit(f"u{s}", "train", "proxy", "fixture_text", "xs", s, c) for s, c in enumerate(configs)]
    assert all(groupable(u, ExecutorConfig(gpus_per_node=1, units_per_job=4)) for u in units)
    outcomes = run_unit_group("train", configs)
    assert [status for status, _ in outcomes] == ["done"] * 4
    assert {result.device for _, result in outcomes} == {"cuda:0"}
    assert len({round(result.final_loss, 4) for _, result in outcomes}) == 4  # four seeds, four runs
    assert torch.cuda.device_count() >= 1
