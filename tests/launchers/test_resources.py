"""Each unit kind's Slurm request (executor.train / score / evaluate) and the one source of truth for the GPUs a
training job trains on; the sbatch scripts submitit writes, read as text (the real cluster reads them back in
tests/integration/test_slurm_resources.py)."""
import pytest

from launchers.submit import _train_resources, groupable, kind_resources, make_executor, train_gpus
from proxy_exp.config import ExecutorConfig, PretrainConfig, TargetResources, TrainJobConfig, UnitResources
from proxy_exp.units import Unit


def _sbatch(ex: ExecutorConfig, kind: str, **extra) -> str:
    executor = make_executor(ex, "/f/%j", kind)
    executor.update_parameters(**extra)
    return executor._executor._make_submission_file_text("python -u -m submitit.core._submit /f/%j", "uid")


def _train(**pretrain) -> Unit:
    return Unit("train-x", "train", "proxy", "c", "xs", 0, TrainJobConfig(pretrain=PretrainConfig(**pretrain)))


GPU_SITE = ExecutorConfig(kind="slurm", partition="gpu", timeout_min=60, cpus_per_task=4, gpus_per_node=1,
                          train=UnitResources(gpus_per_node=8, mem_gb=200, timeout_min=600),
                          score=UnitResources(gpus_per_node=8, cpus_per_task=32, mem_gb=900),
                          evaluate=UnitResources(timeout_min=120))


def test_each_unit_kind_asks_for_its_own_resources():
    score = _sbatch(GPU_SITE, "score")
    assert "--gpus-per-node=8" in score and "--cpus-per-task=32" in score and "--mem=900GB" in score
    assert "--time=60" in score
    evaluate = _sbatch(GPU_SITE, "evaluate")  # unset fields take the executor's values
    assert "--gpus-per-node=1" in evaluate and "--cpus-per-task=4" in evaluate and "--time=120" in evaluate
    assert "--mem" not in evaluate
    train = _sbatch(GPU_SITE, "train", **_train_resources(_train(nodes=2), GPU_SITE))
    assert all(f in train for f in ("--nodes=2", "--ntasks-per-node=8", "--gpus-per-node=8", "--mem=200GB",
                                    "--time=600"))
    assert kind_resources(ExecutorConfig(), "score") == kind_resources(ExecutorConfig(), "")
    for kind in ("bpe", "tokenize"):  # data units: CPU work, no GPU on a GPU site unless executor.data says so
        text = _sbatch(GPU_SITE, kind)
        assert "--gpus-per-node" not in text and "--cpus-per-task=4" in text, text
    assert kind_resources(ExecutorConfig(gpus_per_node=1, data=UnitResources(gpus_per_node=1)),
                          "tokenize")["gpus_per_node"] == 1


def test_one_source_of_truth_for_training_gpus():
    assert train_gpus(_train(), GPU_SITE) == 8  # pretrain.gpus_per_node=-1: the allocation
    assert train_gpus(_train(gpus_per_node=8), GPU_SITE) == 8  # both set and equal
    cpu = ExecutorConfig(kind="slurm")
    assert train_gpus(_train(), cpu) == 0 and _train_resources(_train(tasks_per_node=2), cpu) == {
        "nodes": 1, "tasks_per_node": 2}
    assert _train_resources(_train(gpus_per_node=4), cpu)["gpus_per_node"] == 4  # only pretrain says: ask for 4
    with pytest.raises(ValueError, match="pretrain.gpus_per_node=4 but the executor allocates 8"):
        train_gpus(_train(gpus_per_node=4), GPU_SITE)
    with pytest.raises(ValueError, match="pretrain.gpus_per_node=0 but the executor allocates 8"):
        train_gpus(_train(gpus_per_node=0), GPU_SITE)


def test_small_model_mode_shares_one_gpu():
    one_gpu = ExecutorConfig(kind="slurm", gpus_per_node=1, units_per_job=4)
    assert groupable(_train(), one_gpu)  # several tiny units, each a process on the job's one GPU
    assert not groupable(_train(), GPU_SITE)  # an 8-GPU training job is not shared
    assert not groupable(_train(nodes=2), one_gpu)


def test_target_models_get_their_own_resources():
    """A 1B target trains on 8 GPUs and a 70B target scores on a whole node, while the proxies' jobs take one GPU:
    executor.target.<kind> over executor.<kind> for the target's units, unset fields falling through."""
    site = ExecutorConfig(kind="slurm", timeout_min=60, cpus_per_task=4, gpus_per_node=1,
                          score=UnitResources(gpus_per_node=1, mem_gb=40),
                          target=TargetResources(train=UnitResources(gpus_per_node=8, timeout_min=2880),
                                                 score=UnitResources(gpus_per_node=8, mem_gb=900,
                                                                     additional_parameters={"exclusive": True})))
    proxy, target = _sbatch(site, "score"), make_executor(site, "/f/%j", "score", "target")
    target = target._executor._make_submission_file_text("python -u -m submitit.core._submit /f/%j", "uid")
    assert "--gpus-per-node=1" in proxy and "--mem=40GB" in proxy and "--exclusive" not in proxy
    assert "--gpus-per-node=8" in target and "--mem=900GB" in target and "--exclusive" in target
    assert "--time=60" in target and "--cpus-per-task=4" in target  # unset: the kind's, then the executor's
    assert kind_resources(site, "evaluate", "target") == kind_resources(site, "evaluate", "proxy")  # nothing set
    big = Unit("train-t", "train", "target", "c", "dd_1b", 0, TrainJobConfig(pretrain=PretrainConfig()))
    assert train_gpus(big, site) == 8 and train_gpus(_train(), site) == 1  # the allocation is the one source
    assert _train_resources(big, site) == {"nodes": 1, "tasks_per_node": 8, "gpus_per_node": 8}
    assert not groupable(big, site) and groupable(_train(), site)
