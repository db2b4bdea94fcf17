"""FLOP accounting (proxy_exp/compute.py): the one home of the formulas."""
import pytest

from proxy_exp.compute import forward_flops, train_flops_per_token


def test_compute_formulas():
    n, layers, width, seq = 1000, 2, 8, 4
    # nanoGPT estimate_mfu: flops per token = 6N + 12 L H Q T with H * Q = d_model
    assert train_flops_per_token(n, layers, width, seq) == pytest.approx(6 * n + 12 * layers * width * seq)
    assert train_flops_per_token(n, 0, width, seq) == pytest.approx(6 * n)
    assert forward_flops(n, 10) == pytest.approx(2 * n * 10)


def test_train_plan_and_score_job_use_them():
    from proxy_exp.config import ModelConfig, PretrainConfig, TrainJobConfig
    from proxy_exp.train.plan import plan_training

    cfg = TrainJobConfig(model=ModelConfig(n_layers=2, d_model=32, n_heads=2, n_kv_heads=2),
                         pretrain=PretrainConfig(max_tokens=4096, seq_len=64, global_batch=16, micro_batch=16))
    plan = plan_training(cfg, 512)
    assert plan.flops == pytest.approx(train_flops_per_token(plan.n_params_non_embedding, 2, 32, 64) * plan.tokens)


@pytest.mark.parametrize("model", ["xxs", "xs", "s", "m", "gpt2_xs", "dd_20m", "dd_150m", "dd_1b", "gqa", "gpt2_ff"])
def test_param_counts_in_closed_form_match_the_built_model(model):
    """Plans count parameters without torch (param_counts); the count must be the one of the model build_model
    builds, here built on the meta device (no memory) from every model config the project ships, plus a grouped-query
    Llama and a GPT-2 with an explicit MLP width."""
    import dataclasses

    import torch
    from omegaconf import OmegaConf
    from transformers import AutoModelForCausalLM

    from proxy_exp.compute import param_counts
    from proxy_exp.config import ModelConfig
    from proxy_exp.models import count_params, hf_config
    from launchers.app import CONF_DIR

    if model == "gqa":
        cfg = ModelConfig(n_layers=3, d_model=96, n_heads=6, n_kv_heads=2)
    elif model == "gpt2_ff":
        cfg = ModelConfig(arch="gpt2", n_layers=2, d_model=48, n_heads=4, d_ff=100, max_seq_len=77)
    else:
        cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig),
                                                  OmegaConf.load(f"{CONF_DIR}/model/{model}.yaml")))
    for vocab in (517, 50_280):
        with torch.device("meta"):
            built = AutoModelForCausalLM.from_config(hf_config(cfg, vocab, 0, 0, 0))
        assert dataclasses.astuple(param_counts(cfg, vocab)) == dataclasses.astuple(count_params(built)), (model, vocab)
