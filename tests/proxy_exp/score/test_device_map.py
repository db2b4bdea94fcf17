"""A model sharded through accelerate (model.device_map) scores exactly as the same model on one device: on CPU, part
of the layers and the LM head offloaded to disk (accelerate's hooks move activations; the head with offloaded
weights stays on the torch path)."""
import pytest
import torch

from proxy_exp.config import ModelConfig, ScoreConfig, TracesConfig
from proxy_exp.data.tokenizer import train_bpe
from proxy_exp.data.traces import load_traces
from proxy_exp.devices import resolve_placement
from proxy_exp.models import load_model
from proxy_exp.score.lm_head import lm_head_of, resolve_kernel
from proxy_exp.score.pipeline import score_model
from tests.helpers import FIXTURE_TRACES


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    traces = load_traces(TracesConfig(name="fixture", source="jsonl", tasks=[], per_task=0, paths=[FIXTURE_TRACES]))
    tok = train_bpe([t["prompt"] + t["solution"] for t in traces], 300)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=False, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("sharded") / "model"
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path), traces[:6]


def test_device_map_scoring_equals_unsharded(saved_model, tmp_path):
    path, traces = saved_model
    whole, tok = load_model(ModelConfig(arch="pretrained", path=path))
    cfg = ModelConfig(arch="pretrained", path=path, device_map="sequential", max_memory={"cpu": "400KB"},
                      offload_folder=str(tmp_path / "offload"))
    sharded, _ = load_model(cfg, placement=resolve_placement(cfg, n_gpus=0))
    where = set(sharded.hf_device_map.values())
    assert where == {"cpu", "disk"}, sharded.hf_device_map  # really split over two places
    assert resolve_kernel("auto", lm_head_of(sharded), None)[0] == "torch"
    score = ScoreConfig(batch_size=2)
    a, b = score_model(whole, tok, traces, score), score_model(sharded, tok, traces, score)
    assert len(a.tokens) == len(b.tokens) > 0
    assert b.proxies == pytest.approx(a.proxies, rel=1e-5, abs=1e-7)
    for column in ("ce", "rank", "entropy"):
        assert b.tokens[column].to_numpy() == pytest.approx(a.tokens[column].to_numpy(), rel=1e-5, abs=1e-6)
