"""The fused Triton scorer (proxy_exp/score/fused.py) against float64 references and the torch path.

Runs the real kernel in Triton's interpreter on CPU tensors (TRITON_INTERPRET=1, set before the kernel
module is imported), with small shapes whose token, vocabulary and hidden sizes are not multiples of
the tiles. The references are written here in float64 (rank by explicit comparison) or are the
torch path (stats.token_stats_from_logits on the torch head's logits).
"""
from __future__ import annotations

import importlib
import math
import os

os.environ["TRITON_INTERPRET"] = "1"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

try:
    import triton  # noqa: E402,F401  (the suite checks the fused kernel through Triton's interpreter on CPU)
except ImportError:  # a missing test dependency is a failure, not a skip
    raise ImportError("tests/proxy_exp/score/test_fused.py needs triton: run `bash install.sh test` (installs "
                      "proxy-exp[test], which pins triton)") from None

import proxy_exp.score.fused as fused  # noqa: E402
from tests.helpers import REPO  # noqa: E402
from proxy_exp.config import ScoreConfig  # noqa: E402
from proxy_exp.score.lm_head import LMHead, final_hidden_states, lm_head_of, score_hidden_states  # noqa: E402
from proxy_exp.score.stats import STAT_KEYS, token_stats_from_logits  # noqa: E402

if not fused.interpreting():  # imported earlier in this process without TRITON_INTERPRET: define the kernel again
    fused = importlib.reload(fused)

T, D, V = 37, 32, 1000  # 37 tokens = 2 full tiles of 16 + 5; 1000 = 7 full vocab tiles of 128 + 104


def reference64(logits: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
    """stats.py's definitions in float64, the rank by comparing every entry with the expert's logit."""
    x = logits.double()
    y = targets.long()
    logp = torch.log_softmax(x, dim=1)
    p = logp.exp()
    x_y = x.gather(1, y[:, None])
    others = torch.ones_like(x, dtype=torch.bool).scatter_(1, y[:, None], False)
    rank = ((x >= x_y) & others).sum(dim=1)
    max_p = p.max(dim=1).values
    p_y = p.gather(1, y[:, None]).squeeze(1)
    out = {"ce": -logp.gather(1, y[:, None]).squeeze(1)}
    for k in (1, 2, 3, 5):
        out[f"top{k}"] = (rank < k).double()
    out["entropy"] = -(p * logp).nan_to_num().sum(dim=1) / math.log(x.shape[1])
    out["rank"] = rank
    out["recip_rank"] = 1.0 / (rank + 1.0)
    out["margin"] = max_p - p_y
    out["wrong_conf"] = torch.where(rank >= 1, max_p, 0.0)
    out["p_expert"] = p_y
    out["max_p"] = max_p
    return out


def assert_same_stats(ours: dict, ref: dict, atol: float) -> None:
    assert list(ours) == list(STAT_KEYS)
    assert ours["rank"].dtype == torch.int64 and ours["ce"].dtype == torch.float32
    for key in STAT_KEYS:
        if key == "rank":
            torch.testing.assert_close(ours[key], ref[key].long(), rtol=0, atol=0, msg=key)
        else:
            torch.testing.assert_close(ours[key].double(), ref[key].double(), rtol=0, atol=atol, msg=key)


def random_problem(seed: int, dtype: torch.dtype = torch.float32, n_dim: int = D):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(T, n_dim, generator=g)
    weight = torch.randn(V, n_dim, generator=g) * 0.5
    targets = torch.randint(0, V, (T,), generator=g)
    return hidden.to(dtype), weight.to(dtype), targets


@pytest.mark.parametrize("splits,block_d", [(1, 16), (3, 64)])
def test_float32_matches_float64_reference(splits, block_d):
    hidden, weight, targets = random_problem(0)
    # recount=False: the kernel's own numbers, without the torch recount of rows whose target logit differs
    ours = fused.fused_token_stats(hidden, weight, targets, vocab_splits=splits, block_d=block_d, recount=False)
    assert_same_stats(ours, reference64(hidden.double() @ weight.double().T, targets), atol=5e-6)
    assert_same_stats(ours, token_stats_from_logits(hidden @ weight.T, targets), atol=5e-6)


def test_rows_whose_target_logit_differs_are_recounted_in_torch():
    # The interpreter's float32 products round differently with the operands' layout (numpy matmul), so
    # some rows' pre-pass target logit differs from its tile's in the last bit; those rows get the torch
    # path's statistics, every other row keeps the kernel's.
    hidden, weight, targets = random_problem(6)
    before = dict(fused.RECOUNTS)
    kernel_only = fused.fused_token_stats(hidden, weight, targets, recount=False)
    differ = fused.RECOUNTS["differ"] - before.get("differ", 0)
    assert fused.RECOUNTS["recounted"] == before.get("recounted", 0)
    ours = fused.fused_token_stats(hidden, weight, targets)
    assert fused.RECOUNTS["recounted"] - before.get("recounted", 0) == differ
    reference = token_stats_from_logits(hidden @ weight.T, targets)
    assert_same_stats(ours, reference, atol=5e-6)
    changed = ~torch.isclose(ours["ce"], kernel_only["ce"], rtol=0, atol=0)
    assert changed.sum().item() <= differ
    if differ:  # the recounted rows carry the torch values exactly
        same_as_torch = torch.isclose(ours["ce"], reference["ce"], rtol=0, atol=0)
        assert same_as_torch.sum().item() >= differ


def test_planted_ties_give_the_exact_pessimistic_rank():
    # Small-integer inputs make every logit exact in float32, so ties are real ties in any summation order.
    g = torch.Generator().manual_seed(1)
    hidden = torch.randint(-2, 3, (T, D), generator=g).float()
    weight = torch.randint(-1, 2, (V, D), generator=g).float()
    targets = torch.randint(0, V, (T,), generator=g)
    for t in range(0, T, 3):  # the expert row copied to two other tokens (in other vocab tiles)
        y = int(targets[t])
        weight[(y + 301) % V] = weight[y]
        weight[(y + 602) % V] = weight[y]
    hidden[4] = 0.0  # all-equal logits (an untrained head): rank V - 1
    before = fused.RECOUNTS["differ"]
    ours = fused.fused_token_stats(hidden, weight, targets, vocab_splits=2, recount=False)
    assert fused.RECOUNTS["differ"] == before, "exact logits: the pre-pass and the tiles must agree"
    ref = reference64(hidden.double() @ weight.double().T, targets)
    assert_same_stats(ours, ref, atol=5e-6)
    assert ours["rank"][4].item() == V - 1 and ours["entropy"][4].item() == pytest.approx(1.0, abs=1e-6)
    tied = [t for t in range(0, T, 3) if t != 4]
    assert all(ours["rank"][t].item() >= 2 for t in tied)  # both copies count against the expert token


def test_bfloat16_follows_the_bfloat16_head_and_float64_within_bf16_tolerance():
    hidden, weight, targets = random_problem(2, torch.bfloat16)
    ours = fused.fused_token_stats(hidden, weight, targets, vocab_splits=2, recount=False)
    # The torch path: the head returns bfloat16 logits, statistics in float32.
    assert_same_stats(ours, token_stats_from_logits(hidden @ weight.T, targets), atol=2e-6)
    # Against float64 of the unrounded product, the difference is bfloat16's logit rounding.
    exact = reference64(hidden.double() @ weight.double().T, targets)
    for key in ("ce", "entropy", "p_expert", "max_p", "margin"):
        torch.testing.assert_close(ours[key].double(), exact[key], rtol=0, atol=3e-2, msg=key)
    # Without rounding to bfloat16, the kernel keeps float32 accumulations: float64 within float32 error.
    unrounded = fused.fused_token_stats(hidden, weight, targets, round_logits=False, recount=False)
    assert_same_stats(unrounded, exact, atol=5e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_softcap_matches_the_torch_head(dtype):
    hidden, weight, targets = random_problem(3, dtype, n_dim=40)
    head = LMHead(torch.nn.Linear(40, V, bias=False).to(dtype), softcap=1.5)
    head.module.weight.data.copy_(weight)
    ours = fused.fused_token_stats(hidden, weight, targets, softcap=1.5, block_d=32, recount=False)
    with torch.no_grad():
        logits = head(hidden)
    assert (logits.float().abs() <= 1.5).all()
    assert_same_stats(ours, token_stats_from_logits(logits, targets), atol=2e-6)


def test_bias_and_dispatch_through_score_hidden_states():
    hidden, weight, targets = random_problem(4)
    torch.manual_seed(0)
    linear = torch.nn.Linear(D, V)
    by_torch = score_hidden_states(hidden, linear, targets, chunk_tokens=10, kernel="torch")
    tokens_before = fused.RECOUNTS["tokens"]
    by_triton = score_hidden_states(hidden, linear, targets, chunk_tokens=10, kernel="triton")
    assert fused.RECOUNTS["tokens"] == tokens_before + T
    assert_same_stats(by_triton, by_torch, atol=5e-6)
    # auto stays on the torch path for CPU tensors: bit-identical to kernel=torch, the kernel not called
    auto = score_hidden_states(hidden, linear, targets, chunk_tokens=10)
    assert fused.RECOUNTS["tokens"] == tokens_before + T
    for key in STAT_KEYS:
        assert torch.equal(auto[key], by_torch[key]), key


def test_bad_input_is_rejected_with_the_fix():
    hidden, weight, targets = random_problem(5)
    with pytest.raises(ValueError, match="score.kernel must be one of"):
        score_hidden_states(hidden, torch.nn.Linear(D, V), targets, chunk_tokens=8, kernel="cuda")
    with pytest.raises(ValueError, match="plain linear LM head"):
        score_hidden_states(hidden, lambda h: h @ weight.T, targets, chunk_tokens=8, kernel="triton")
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 1000\)"):
        fused.fused_token_stats(hidden, weight, targets + V)
    with pytest.raises(ValueError, match="share one dtype"):
        fused.fused_token_stats(hidden, weight.to(torch.bfloat16), targets)
    with pytest.raises(ValueError, match="power of two"):
        fused.fused_token_stats(hidden, weight, targets, block_v=100)


def test_real_models_score_the_same_with_either_kernel():
    from transformers import Gemma2Config, Gemma2ForCausalLM, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    llama = LlamaForCausalLM(LlamaConfig(
        vocab_size=333, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, bos_token_id=1, eos_token_id=1, pad_token_id=0)).eval()
    gemma = Gemma2ForCausalLM(Gemma2Config(
        vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, max_position_embeddings=64, final_logit_softcapping=0.5,
        pad_token_id=0, bos_token_id=1, eos_token_id=1)).eval()
    for model in (llama, gemma):
        ids = torch.randint(2, 300, (2, 21), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            hidden = final_hidden_states(model, ids)[:, :-1].reshape(-1, 32)
        targets = ids[:, 1:].reshape(-1)
        head = lm_head_of(model)
        torch_stats = score_hidden_states(hidden, head, targets, chunk_tokens=16, kernel="torch")
        fused_stats = score_hidden_states(hidden, head, targets, chunk_tokens=16, kernel="triton")
        assert_same_stats(fused_stats, torch_stats, atol=5e-6)
    assert ScoreConfig().kernel == "auto"


def test_cpu_row_blocks_give_the_same_statistics(monkeypatch):
    # The torch path reduces CPU logits in row blocks of CPU_STATS_BLOCK_ELEMENTS logits (cache-sized);
    # with blocks of 3 rows here, every statistic must equal the whole-chunk computation exactly.
    import proxy_exp.score.stats as stats

    hidden, weight, targets = random_problem(7)
    linear = torch.nn.Linear(D, V, bias=False)
    linear.weight.data.copy_(weight)
    whole = token_stats_from_logits(hidden @ weight.T, targets)
    monkeypatch.setattr(stats, "CPU_STATS_BLOCK_ELEMENTS", 3 * V)
    blocks = []
    real = stats.token_stats_from_logits
    monkeypatch.setattr(stats, "token_stats_from_logits", lambda x, y, c=False: blocks.append(x.shape[0]) or real(x, y, c))
    blocked = score_hidden_states(hidden, linear, targets, chunk_tokens=20, kernel="torch")
    assert max(blocks) == 3 and sum(blocks) == T
    for key in STAT_KEYS:
        torch.testing.assert_close(blocked[key], whole[key], rtol=0, atol=0, msg=key)


COMPILE_SCRIPT = r"""
import sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
import proxy_exp.score.fused as fused

kernel = fused._token_stats_kernel
assert type(kernel).__name__ == "JITFunction", type(kernel).__name__
pointers = {"H": "{dt}", "W": "{dt}", "BIAS": "{dt}", "Y": "i64", "OUT_M": "fp32", "OUT_S": "fp32", "OUT_U": "fp32",
            "OUT_CNT": "i32", "OUT_LY": "fp32", "OUT_LYPRE": "fp32"}
for dt, round_code in (("bf16", 1), ("fp16", 2), ("fp32", 0)):
    constexprs = {"HAS_BIAS": True, "SOFTCAP": True, "ROUND": round_code, "DOT_FP32": False, "INPUT_PRECISION": "ieee",
                  "BLOCK_T": fused.DEFAULT_BLOCKS["block_t"], "BLOCK_V": fused.DEFAULT_BLOCKS["block_v"],
                  "BLOCK_D": fused.DEFAULT_BLOCKS["block_d"]}
    signature = {name: "*" + kind.format(dt=dt) for name, kind in pointers.items()}
    signature.update({name: "i32" for name in ("T", "V", "D", "stride_ht", "stride_hd", "stride_wv", "stride_wd",
                                                 "tiles_per_split")})
    signature["cap"] = "fp32"
    signature.update({name: "constexpr" for name in constexprs})
    source = ASTSource(fn=kernel, signature=signature,
                       constexprs={(kernel.arg_names.index(n),): v for n, v in constexprs.items()})
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32),
                              options={"num_warps": fused.DEFAULT_BLOCKS["num_warps"],
                                       "num_stages": fused.DEFAULT_BLOCKS["num_stages"]})
    ptx = compiled.asm["ptx"]
    # bf16, fp16: tensor-core MMA; fp32: IEEE products, so no (TF32) MMA instruction at all
    assert ("mma" in ptx) == (dt != "fp32") and len(compiled.asm["cubin"]) > 0, dt
    print(dt, "ok")
"""


def test_kernel_compiles_for_an_h100_without_a_gpu():
    # The interpreter runs the kernel's Python; this compiles the same source through Triton's real
    # pipeline (TTIR -> TTGIR -> LLVM -> PTX -> cubin) for sm_90, as on an H100, in a process without
    # TRITON_INTERPRET. Catches what only the compiler sees (types, layouts, dot shapes).
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    done = subprocess.run([sys.executable, "-c", COMPILE_SCRIPT], env=env, capture_output=True, text=True,
                          timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["bf16", "ok", "fp16", "ok", "fp32", "ok"]
