"""The scorer on CUDA (marked gpu: left out, and counted, where there is no CUDA; benchmarks/gpu_check.sh runs it):
the fused Triton kernel against the chunked torch path on CUDA tensors, bf16 scoring of a random-init
Qwen2-0.5B-shape model, and a model sharded over devices scoring as it does on one."""
import json

import pytest
import torch

from proxy_exp.config import ModelConfig, ScoreConfig
from proxy_exp.data.tokenizer import train_bpe
from proxy_exp.score.lm_head import LMHead, lm_head_of, resolve_kernel, score_hidden_states
from proxy_exp.score.pipeline import score_model
from tests.helpers import FIXTURE_TRACES

pytestmark = pytest.mark.gpu


def _traces(n: int = 12) -> list[dict]:
    with open(FIXTURE_TRACES) as f:  # plain json: the GPU image may lack `datasets`
        return [json.loads(line) for line in f][:n]


@pytest.mark.parametrize("dtype,softcap,bias", [(torch.float32, None, False), (torch.bfloat16, None, False),
                                                (torch.bfloat16, 30.0, True), (torch.float16, None, False)])
def test_fused_kernel_matches_the_torch_path_on_cuda(dtype, softcap, bias):
    g = torch.Generator(device="cuda").manual_seed(0)
    n_tokens, d, vocab = 1000, 896, 151_936  # Qwen2-0.5B's head, 1000 tokens: many vocab and token tiles
    hidden = torch.randn(n_tokens, d, device="cuda", generator=g).to(dtype)
    linear = torch.nn.Linear(d, vocab, bias=bias, device="cuda", dtype=dtype)
    with torch.no_grad():
        linear.weight.normal_(0, 0.05, generator=g)
    targets = torch.randint(0, vocab, (n_tokens,), device="cuda", generator=g)
    head = LMHead(linear, softcap)
    assert resolve_kernel("auto", head, linear.weight.device) == ("triton", "")
    fused = score_hidden_states(hidden, head, targets, chunk_tokens=256, kernel="triton")
    torch_path = score_hidden_states(hidden, head, targets, chunk_tokens=256, kernel="torch")
    atol = 1e-4 if dtype == torch.float32 else 2e-3
    for key in ("ce", "entropy", "margin", "wrong_conf", "p_expert", "max_p"):
        torch.testing.assert_close(fused[key], torch_path[key], rtol=1e-3, atol=atol, msg=key)
    for key in ("rank", "top1", "top5"):  # exact: rows whose target logit rounds differently are recounted
        assert torch.equal(fused[key], torch_path[key]), key


def _qwen(dtype=torch.bfloat16, layers: int = 24):
    from transformers import AutoModelForCausalLM, Qwen2Config

    cfg = Qwen2Config(hidden_size=896, num_hidden_layers=layers, num_attention_heads=14, num_key_value_heads=2,
                      intermediate_size=4864, vocab_size=151_936, max_position_embeddings=4096,
                      tie_word_embeddings=True)
    torch.manual_seed(0)
    with torch.device("cuda"):
        return AutoModelForCausalLM.from_config(cfg, dtype=dtype, attn_implementation="sdpa").eval()


def test_bf16_scoring_of_a_qwen2_05b_shape_model_uses_the_fused_kernel():
    traces = _traces()
    tok = train_bpe([t["prompt"] + t["solution"] for t in traces], 512)  # ids < 512 < the model's vocabulary
    model = _qwen()
    fused = score_model(model, tok, traces, ScoreConfig(batch_size=0))
    assert fused.kernel == "triton" and fused.batch_size >= 1 and fused.n_traces == len(traces)
    # the same batches: in bf16 another batch size alone moves a proxy by more than 2% (rank/nll_kernel, which weighs
    # a few tokens, moved 4% between batch 4 and 1 on CPU), so only the LM head + statistics differ here
    reference = score_model(model, tok, traces, ScoreConfig(kernel="torch", batch_size=fused.batch_size))
    for key, value in reference.proxies.items():
        assert fused.proxies[key] == pytest.approx(value, rel=2e-2, abs=2e-3), key


def test_sharded_model_scores_as_on_one_device(tmp_path):
    """Two GPUs: the layers split over them; one GPU: the first layers on the GPU, the rest on the CPU (accelerate's
    hooks move activations; the head's hidden states move to the head's device)."""
    traces = _traces(6)
    tok = train_bpe([t["prompt"] + t["solution"] for t in traces], 512)
    path = tmp_path / "model"
    _qwen(torch.float32, layers=4).save_pretrained(path)
    tok.save_pretrained(path)
    from proxy_exp.devices import resolve_placement
    from proxy_exp.models import load_model

    one = ModelConfig(arch="pretrained", path=str(path), dtype="float32")
    whole, _ = load_model(one)
    if torch.cuda.device_count() >= 2:
        sharded_cfg = ModelConfig(arch="pretrained", path=str(path), dtype="float32", device_map="balanced")
    else:  # GPU 0 gets the (tied) embedding and about 3 layers' worth: accelerate keeps room for its largest
        # module, so 2 layers land there and 2 on the CPU (a whole-model budget, e.g. 900 MiB, puts all on GPU 0)
        layer = sum(p.numel() * p.element_size() for p in whole.model.layers[0].parameters())
        embed = whole.model.embed_tokens.weight.numel() * whole.model.embed_tokens.weight.element_size()
        sharded_cfg = ModelConfig(arch="pretrained", path=str(path), dtype="float32", device_map="sequential",
                                  max_memory={"0": f"{(embed + 3 * layer) // 2**20}MiB", "cpu": "64GiB"})
    sharded, _ = load_model(sharded_cfg, placement=resolve_placement(sharded_cfg))
    assert len(set(sharded.hf_device_map.values())) >= 2, sharded.hf_device_map
    a = score_model(whole, tok, traces, ScoreConfig(kernel="torch"))
    b = score_model(sharded, tok, traces, ScoreConfig())
    assert b.proxies == pytest.approx(a.proxies, rel=1e-4, abs=1e-5)
    head_on = lm_head_of(sharded).module.weight.device
    assert b.kernel == ("triton" if head_on.type == "cuda" else "torch")


def test_32k_token_trace_at_152k_vocabulary_fits(tmp_path):
    """One 32,768-token trace through a Qwen2 model (4 layers of the 7B shape, 152k vocabulary): the fused kernel
    keeps no [T, V] logits; peak memory is reported beside the weights."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    cfg = Qwen2Config(hidden_size=3584, num_hidden_layers=4, num_attention_heads=28, num_key_value_heads=4,
                      intermediate_size=18944, vocab_size=152_064, max_position_embeddings=32_768,
                      tie_word_embeddings=False)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16, attn_implementation="sdpa").eval()
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    tok = train_bpe(["a b c d e f g h " * 200], 300)
    text = " ".join(str(i % 97) for i in range(40_000))
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) > 32_000
    trace = {"id": "long", "task": "long", "prompt": "", "solution": tok.decode(ids[:32_000])}
    torch.cuda.reset_peak_memory_stats()
    out = score_model(model, tok, [trace], ScoreConfig(window=0, batch_size=1))
    peak = torch.cuda.max_memory_allocated()
    print(f"32k-token trace, vocab 152k: peak {peak / 2**30:.2f} GiB, weights {weights / 2**30:.2f} GiB, "
          f"kernel {out.kernel}")
    assert out.kernel == "triton" and len(out.tokens) >= 31_000
    assert peak < weights + 24 * 2**30  # a [32k, 152k] fp32 logits buffer alone would be 18.6 GiB
