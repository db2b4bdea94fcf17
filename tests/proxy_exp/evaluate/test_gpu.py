"""Direct evaluation on CUDA (marked gpu; benchmarks/gpu_check.sh runs it): a random-init Qwen2-0.5B-shape model
evaluated in bf16 through the real harness (the model's dtype on the GPU, evaluate.batch_size=auto), on a local
multiple-choice task, beside the same model in fp32."""
import json

import pytest
import torch

from proxy_exp.config import EvaluateConfig, ModelConfig
from proxy_exp.devices import resolve_placement
from proxy_exp.evaluate.harness import evaluate_model

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    from transformers import AutoModelForCausalLM, Qwen2Config

    from proxy_exp.data.tokenizer import train_bpe

    path = tmp_path_factory.mktemp("qwen") / "model"
    cfg = Qwen2Config(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                      intermediate_size=4864, vocab_size=151_936, max_position_embeddings=2048, tie_word_embeddings=True)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16).save_pretrained(path)
    train_bpe(["Which is heavier, a stone or a feather? The stone. " * 40], 400).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tasks")
    rows = [{"q": f"Which is heavier, item {i} or item {i + 1}?", "choices": [" the stone", " the feather",
                                                                          " both"], "label": i % 3} for i in range(24)]
    (d / "mc.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (d / "gpu_mc.yaml").write_text(
        f"task: gpu_mc\ndataset_path: json\ndataset_kwargs: {{data_files: {{test: {d}/mc.jsonl}}}}\ntest_split: test\n"
        "output_type: multiple_choice\ndoc_to_text: '{{q}}'\ndoc_to_choice: '{{choices}}'\ndoc_to_target: label\n"
        "metric_list: [{metric: acc, aggregation: mean, higher_is_better: true}]\nmetadata: {version: 1.0}\n")
    return str(d)


def test_bf16_evaluation_on_the_gpu_matches_fp32(qwen_dir, task_dir, tmp_path):
    cfg = EvaluateConfig(tasks=["gpu_mc"], include_path=task_dir, limit=0, primary_metric="acc", batch_size="auto")
    bf16 = resolve_placement(ModelConfig(arch="pretrained", path=qwen_dir))
    assert (bf16.device, bf16.dtype) == ("cuda:0", torch.bfloat16)
    fp32 = resolve_placement(ModelConfig(arch="pretrained", path=qwen_dir, dtype="float32"))
    a = evaluate_model(qwen_dir, cfg, str(tmp_path), placement=bf16)
    b = evaluate_model(qwen_dir, cfg, str(tmp_path), placement=fp32)
    assert a.per_task["gpu_mc"]["n"] == 24 and 0.0 <= a.mean["acc"] <= 1.0
    assert a.mean["logprob_per_char"] == pytest.approx(b.mean["logprob_per_char"], rel=2e-2)
    assert a.n_params == b.n_params > 400e6


def test_sharded_evaluation_through_lm_evals_parallelize_matches_one_device(qwen_dir, task_dir, tmp_path):
    """model.device_map=sequential with a GPU budget that holds the embedding and a few of the 24 layers: lm-eval's
    own parallelize / max_memory_per_gpu options split the model over the GPU and the CPU (the same split
    accelerate gives load_model, checked first), and the scores are those of the model on one device."""
    from proxy_exp.models import load_model

    cfg = EvaluateConfig(tasks=["gpu_mc"], include_path=task_dir, limit=0, primary_metric="acc", batch_size=8)
    whole = resolve_placement(ModelConfig(arch="pretrained", path=qwen_dir))
    model, _ = load_model(ModelConfig(arch="pretrained", path=qwen_dir), placement=whole)
    layer = sum(p.numel() * p.element_size() for p in model.model.layers[0].parameters())
    embed = model.model.embed_tokens.weight.numel() * model.model.embed_tokens.weight.element_size()
    del model
    sharded_cfg = ModelConfig(arch="pretrained", path=qwen_dir, device_map="sequential",
                              max_memory={"gpu0": f"{(embed + 6 * layer) // 2**20}MiB", "cpu": "64GiB"})
    sharded = resolve_placement(sharded_cfg, cache_dir=str(tmp_path))
    split, _ = load_model(sharded_cfg, placement=sharded)
    assert set(split.hf_device_map.values()) >= {0, "cpu"}, split.hf_device_map
    del split
    torch.cuda.empty_cache()
    a = evaluate_model(qwen_dir, cfg, str(tmp_path), placement=whole)
    b = evaluate_model(qwen_dir, cfg, str(tmp_path), placement=sharded)
    assert b.per_task["gpu_mc"]["n"] == 24
    assert b.mean["logprob_per_char"] == pytest.approx(a.mean["logprob_per_char"], rel=1e-2)
