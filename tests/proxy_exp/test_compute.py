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
