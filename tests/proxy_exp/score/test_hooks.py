"""Proxies from a training loop that is not proxy-exp's (proxy_exp/score/hooks.py): a Hugging Face Trainer with
ProxyCallback logs proxy/* at the right steps into the same MLflow run as its own loss; a plain hook in a plain loop."""
import json

import mlflow
import pytest
import torch

import proxy_exp
from tests.helpers import FIXTURE_TRACES


def _traces(n=4):
    with open(FIXTURE_TRACES) as f:
        return [json.loads(line) for line in f][:n]


@pytest.fixture(scope="module")
def tiny():
    from transformers import LlamaConfig, LlamaForCausalLM

    from proxy_exp.data.tokenizer import train_bpe

    traces = _traces(12)
    tok = train_bpe([t["prompt"] + t["solution"] for t in traces], 400)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg), tok, traces


def test_trainer_callback_logs_proxies_into_the_trainers_mlflow_run(tiny, tmp_path, monkeypatch):
    from transformers import Trainer, TrainingArguments

    model, tok, traces = tiny
    ids = tok("\n".join(t["solution"] for t in traces), add_special_tokens=False)["input_ids"]
    blocks = [ids[i:i + 64] for i in range(0, len(ids) - 64, 64)]
    dataset = [{"input_ids": torch.tensor(b), "labels": torch.tensor(b)} for b in blocks]
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("team")
    args = TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=10, per_device_train_batch_size=4,
                             learning_rate=5e-3, logging_steps=1, report_to=["mlflow"], use_cpu=True,
                             save_strategy="no", disable_tqdm=True)
    callback = proxy_exp.ProxyCallback(tok, traces[:4], every=5)
    with mlflow.start_run() as run:  # the team's own run; the Trainer's MLflow integration logs into it too
        Trainer(model=model, args=args, train_dataset=dataset, callbacks=[callback]).train()
    client = mlflow.MlflowClient(uri)
    ce = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "proxy/ce/uniform"))
    assert [s for s, _ in ce] == [5, 10]
    assert ce[1][1] < ce[0][1]  # training lowers the trace cross-entropy
    assert len([k for k in client.get_run(run.info.run_id).data.metrics if k.startswith("proxy/")]) == 80
    assert "loss" in client.get_run(run.info.run_id).data.metrics  # the Trainer's own loss, in the same run
    assert [s for s, _ in callback.hook.history] == [5, 10]


def test_plain_hook_in_a_plain_loop(tiny):
    model, tok, traces = tiny
    logged = []
    hook = proxy_exp.ProxyHook(tok, traces[:3], every=3, log=lambda metrics, step: logged.append((step, metrics)),
                               per_task=True)
    for step in range(1, 8):
        hook(model, step)
    assert [s for s, _ in logged] == [3, 6]
    assert "proxy/top5/freq" in logged[0][1] and "proxy_task/gsm8k/top5/freq" in logged[0][1]
    direct = proxy_exp.score_model(model, tok, traces[:3], proxy_exp.ScoreConfig())
    assert logged[-1][1]["proxy/ce/uniform"] == pytest.approx(direct.proxies["proxy/ce/uniform"])
    with pytest.raises(ValueError, match=r"no active MLflow run .*mlflow\.start_run\(\).*log=<callable"):
        proxy_exp.ProxyHook(tok, traces[:1], every=1)(model, 1)
    with pytest.raises(ValueError, match="every=0"):
        proxy_exp.ProxyHook(tok, traces[:1], every=0)
