"""Token statistics, chunked LM head, trace scoring, weightings and aggregation vs plain references.

The references are written plainly here (Python loops over tokens and vocabulary, float64), and the
models are real (tiny random-init Llama and GPT-2 from transformers configs) with a real byte-level
BPE tokenizer trained in the test.
"""
from __future__ import annotations

import copy
import json
import math
import os
import textwrap

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import numpy as np
import pandas as pd
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    Gemma2Config,
    Gemma2ForCausalLM,
    GraniteConfig,
    GraniteForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from proxy_exp.config import STATISTICS, WEIGHTINGS, ScoreConfig
from proxy_exp.tracking.keys import proxy_key
from proxy_exp.score.aggregate import aggregate, token_weights
import proxy_exp.score.stats as stats_module
from proxy_exp.score.scorer import score_traces, token_frequencies
from proxy_exp.score.lm_head import check_lm_head, final_hidden_states, lm_head_of, score_hidden_states
from proxy_exp.score.stats import STAT_KEYS, token_stats_from_logits

MAX_POS = 64


# --------------------------------------------------------------------------- references
def reference_stats(logits: np.ndarray, targets: np.ndarray) -> dict[str, np.ndarray]:
    """The statistics of stats.py's docstring, one token and one vocabulary entry at a time, float64."""
    out: dict[str, list[float]] = {k: [] for k in STAT_KEYS}
    n_vocab = logits.shape[1]
    for t in range(logits.shape[0]):
        row = [float(v) for v in logits[t]]
        y = int(targets[t])
        top = max(row)
        lse = top + math.log(sum(math.exp(v - top) for v in row))
        p = [math.exp(v - lse) for v in row]
        rank = sum(1 for v in range(n_vocab) if v != y and row[v] >= row[y])
        max_p = max(p)
        out["ce"].append(lse - row[y])
        for k in (1, 2, 3, 5):
            out[f"top{k}"].append(1.0 if rank < k else 0.0)
        out["entropy"].append(-sum(q * math.log(q) for q in p if q > 0) / math.log(n_vocab))
        out["rank"].append(rank)
        out["recip_rank"].append(1.0 / (rank + 1))
        out["margin"].append(max_p - p[y])
        out["wrong_conf"].append(max_p if rank >= 1 else 0.0)
        out["p_expert"].append(p[y])
        out["max_p"].append(max_p)
    return {k: np.array(v, dtype=np.float64) for k, v in out.items()}


def assert_stats_close(ours: dict, ref: dict, atol: float) -> None:
    assert set(ours) == set(STAT_KEYS)
    for key in STAT_KEYS:
        got = ours[key].cpu().numpy() if isinstance(ours[key], torch.Tensor) else np.asarray(ours[key])
        if key == "rank":
            np.testing.assert_array_equal(got, ref[key], err_msg=key)
        else:
            np.testing.assert_allclose(got, ref[key], rtol=0, atol=atol, err_msg=key)


def tied_logits(seed: int = 0, n_tokens: int = 40, n_vocab: int = 37) -> tuple[torch.Tensor, torch.Tensor]:
    """Random logits with planted ties: expert tied at the top, tied in the middle, all-equal rows."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n_tokens, n_vocab, generator=g) * 3
    targets = torch.randint(0, n_vocab, (n_tokens,), generator=g)
    for t in range(0, n_tokens, 5):  # expert token tied with two others at the maximum
        y = int(targets[t])
        logits[t, y] = logits[t].max() + 1.0
        others = [v for v in range(n_vocab) if v != y][t % 7 : t % 7 + 2]
        logits[t, others] = logits[t, y].item()
    for t in range(1, n_tokens, 5):  # expert token tied with another token in the middle
        y = int(targets[t])
        other = (y + 3) % n_vocab
        logits[t, other] = logits[t, y].item()
    logits[2] = 0.7  # all-equal logits (an untrained head)
    logits[3] = -1.5
    return logits, targets


# --------------------------------------------------------------------------- token statistics
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_statistics_match_reference_on_random_logits_with_ties(compiled):
    logits, targets = tied_logits()
    logits[4, 7] = float("-inf")  # a masked vocabulary entry adds nothing (0 * -inf must not give nan)
    ours = token_stats_from_logits(logits, targets, compiled=compiled)
    assert_stats_close(ours, reference_stats(logits.double().numpy(), targets.numpy()), atol=2e-6)
    assert ours["rank"].dtype == torch.int64 and ours["ce"].dtype == torch.float32
    if compiled:
        assert "broken" not in stats_module._COMPILED, stats_module._COMPILED  # it really compiled


def test_stats_backend_falls_back_to_eager_when_compiling_fails(monkeypatch):
    """Beside the real compiled test above: a machine whose torch.compile fails (no C++ compiler) warns once and
    gets the eager statistics."""
    logits, targets = tied_logits(seed=2)
    monkeypatch.setattr(stats_module, "_COMPILED", {})

    def broken_compile(fn, **kw):
        def run(*a):
            raise RuntimeError("InvalidCxxCompiler: no working C++ compiler found")
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    with pytest.warns(UserWarning, match="torch.compile failed.*InvalidCxxCompiler"):
        ours = token_stats_from_logits(logits, targets, compiled=True)
    eager = token_stats_from_logits(logits, targets)
    for key in STAT_KEYS:
        torch.testing.assert_close(ours[key], eager[key], rtol=0, atol=0, msg=key)


def test_ties_count_against_the_expert_token():
    logits, targets = tied_logits()
    ours = token_stats_from_logits(logits, targets)
    n_vocab = logits.shape[1]
    # All-equal logits: every other token ties the expert, so nothing is "correct".
    for t in (2, 3):
        assert ours["rank"][t].item() == n_vocab - 1
        assert ours["top5"][t].item() == 0.0
        assert ours["entropy"][t].item() == pytest.approx(1.0, abs=1e-6)
        assert ours["wrong_conf"][t].item() == pytest.approx(1.0 / n_vocab, abs=1e-7)
        assert ours["margin"][t].item() == pytest.approx(0.0, abs=1e-7)
    # Expert tied with two others at the maximum: rank 2, top-1 and top-2 missed, top-3 hit.
    for t in range(0, logits.shape[0], 5):
        assert ours["rank"][t].item() == 2
        assert (ours["top2"][t].item(), ours["top3"][t].item()) == (0.0, 1.0)
        assert ours["wrong_conf"][t].item() == pytest.approx(ours["max_p"][t].item())


def test_statistics_of_bfloat16_logits_are_computed_in_float32():
    logits, targets = tied_logits(seed=1)
    low = logits.to(torch.bfloat16)
    ours = token_stats_from_logits(low, targets)
    assert ours["ce"].dtype == torch.float32
    assert_stats_close(ours, reference_stats(low.double().numpy(), targets.numpy()), atol=2e-6)


@pytest.mark.parametrize("chunk", [3, 7])
def test_chunked_head_equals_unchunked(chunk):
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(23, 8, generator=g)
    targets = torch.randint(0, 29, (23,), generator=g)
    linear = torch.nn.Linear(8, 29)
    rows_seen: list[int] = []

    def head(h: torch.Tensor) -> torch.Tensor:
        rows_seen.append(h.shape[0])
        return linear(h)

    whole = score_hidden_states(hidden, linear, targets, chunk_tokens=1000)
    chunked = score_hidden_states(hidden, head, targets, chunk_tokens=chunk)
    assert max(rows_seen) <= chunk and sum(rows_seen) == 23
    for key in STAT_KEYS:
        torch.testing.assert_close(chunked[key], whole[key], rtol=0, atol=1e-6, msg=key)
    with torch.no_grad():
        ref = reference_stats(linear(hidden).double().numpy(), targets.numpy())
    assert_stats_close(chunked, ref, atol=2e-6)


# --------------------------------------------------------------------------- weightings and aggregation
def hand_tokens() -> pd.DataFrame:
    """Three traces over two tasks; trace b1's entropies are all 0 (its entropy weights sum to 0)."""
    rows = [
        # trace, task, token_id, ce, p_expert, entropy, rank
        ("a1", "A", 0, 1.0, 0.50, 0.2, 0),
        ("a1", "A", 1, 3.0, 0.25, 0.6, 3),
        ("a2", "A", 1, 2.0, 0.40, 0.5, 1),
        ("b1", "B", 2, 0.5, 0.80, 0.0, 0),
        ("b1", "B", 0, 4.0, 0.10, 0.0, 6),
    ]
    frame = pd.DataFrame(rows, columns=["trace_id", "task", "token_id", "ce", "p_expert", "entropy", "rank"])
    for k in (1, 2, 3, 5):
        frame[f"top{k}"] = (frame["rank"] < k).astype(np.float32)
    frame["recip_rank"] = 1.0 / (frame["rank"] + 1)
    frame["max_p"] = [0.50, 0.40, 0.45, 0.80, 0.30]
    frame["margin"] = frame["max_p"] - frame["p_expert"]
    frame["wrong_conf"] = np.where(frame["rank"] >= 1, frame["max_p"], 0.0)
    return frame


HAND_CFG = ScoreConfig(inv_entropy_eps=0.05, nll_kernel_mu=2.0, nll_kernel_sigma=1.0)
HAND_FREQ = np.array([0.5, 0.3, 0.2])


def reference_weight(row, weighting: str) -> float:
    p, h, ce, f = row["p_expert"], row["entropy"], row["ce"], HAND_FREQ[int(row["token_id"])]
    return {
        "uniform": 1.0,
        "p_expert": p,
        "one_minus_p": 1.0 - p,
        "entropy": h,
        "inv_entropy": 1.0 / (h + HAND_CFG.inv_entropy_eps),
        "freq": f,
        "inv_freq": 1.0 / f,
        "nll_kernel": math.exp(-((ce - HAND_CFG.nll_kernel_mu) ** 2) / (2 * HAND_CFG.nll_kernel_sigma**2)),
    }[weighting]


def test_each_weighting_matches_its_formula():
    tokens = hand_tokens()
    weights = token_weights(tokens, HAND_CFG, HAND_FREQ)
    assert list(weights.columns) == list(WEIGHTINGS)
    for w in WEIGHTINGS:
        expected = [reference_weight(row, w) for _, row in tokens.iterrows()]
        np.testing.assert_allclose(weights[w].to_numpy(), expected, rtol=1e-12, err_msg=w)


def test_aggregation_weighted_means_per_trace_task_and_overall():
    tokens = hand_tokens()
    result = aggregate(tokens, HAND_CFG, HAND_FREQ)
    per_trace = result.per_trace.set_index("trace_id")
    assert list(per_trace.index) == ["a1", "a2", "b1"]
    assert per_trace.shape[1] == 1 + len(STATISTICS) * len(WEIGHTINGS)
    # Worked by hand: a1 ce/uniform = (1 + 3) / 2; ce/p_expert = (0.5*1 + 0.25*3) / 0.75.
    assert per_trace.loc["a1", "ce/uniform"] == pytest.approx(2.0)
    assert per_trace.loc["a1", "ce/p_expert"] == pytest.approx(1.25 / 0.75)
    # b1's entropies are all 0: entropy-weighted means are undefined there.
    assert np.isnan(per_trace.loc["b1", "ce/entropy"])
    # Task A = mean of a1 and a2; task B's entropy column has no defined trace.
    assert result.per_task.loc["A", "ce/uniform"] == pytest.approx((2.0 + 2.0) / 2)
    assert np.isnan(result.per_task.loc["B", "top1/entropy"])

    for (trace, task), group in tokens.groupby(["trace_id", "task"]):
        for s in STATISTICS:
            for w in WEIGHTINGS:
                num = den = 0.0
                for _, row in group.iterrows():
                    weight = reference_weight(row, w)
                    num += weight * float(row[s])
                    den += weight
                expected = num / den if den != 0 else float("nan")
                got = per_trace.loc[trace, f"{s}/{w}"]
                assert got == pytest.approx(expected, rel=1e-12, nan_ok=True), (trace, s, w)
                assert per_trace.loc[trace, "task"] == task
    def mean_defined(values: list[float]) -> float:
        defined = [v for v in values if not math.isnan(v)]
        return sum(defined) / len(defined) if defined else float("nan")

    for s in STATISTICS:
        for w in WEIGHTINGS:
            col = f"{s}/{w}"
            task_means = [mean_defined([per_trace.loc[t, col] for t in members]) for members in (["a1", "a2"], ["b1"])]
            np.testing.assert_allclose(result.per_task.loc[["A", "B"], col].to_numpy(), task_means, rtol=1e-12)
            assert result.overall[proxy_key(s, w)] == pytest.approx(mean_defined(task_means), rel=1e-12)
    assert len(result.overall) == 80


def test_aggregation_rejects_bad_inputs():
    tokens = hand_tokens()
    with pytest.raises(ValueError, match="freq_smoothing"):
        aggregate(tokens, HAND_CFG, np.array([0.5, 0.5, 0.0]))
    with pytest.raises(ValueError, match="lacks columns"):
        aggregate(tokens.drop(columns=["margin"]), HAND_CFG, HAND_FREQ)
    with pytest.raises(ValueError, match="outside the frequency table"):
        aggregate(tokens, HAND_CFG, HAND_FREQ[:2])


def test_token_frequencies():
    freq = token_frequencies([0, 0, 1], vocab_size=4, smoothing=1.0)
    np.testing.assert_allclose(freq, np.array([3, 2, 1, 1]) / 7)
    np.testing.assert_allclose(token_frequencies(np.array([2, 2, 3]), 4, 0.0), [0, 0, 2 / 3, 1 / 3])
    with pytest.raises(ValueError, match="vocab_size"):
        token_frequencies([5], vocab_size=4, smoothing=1.0)


# --------------------------------------------------------------------------- real tokenizer and models
def _source_text() -> str:
    return open(textwrap.__file__, encoding="utf-8").read() + open(json.decoder.__file__, encoding="utf-8").read()


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>", "<pad>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(_source_text().splitlines(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>", pad_token="<pad>"
    )


@pytest.fixture(scope="module")
def traces() -> list[dict]:
    """Prompt/solution pairs cut from real source text (prompts shorter than the context); the last two are longer
    than the context together, so their prompt is cut from the left."""
    lines = open(json.decoder.__file__, encoding="utf-8").read().splitlines()
    cuts = [(0, 2, 6), (10, 11, 13), (24, 25, 27), (30, 31, 40), (45, 48, 110)]
    return [
        {"id": f"t{i}", "task": "code" if i % 2 else "text", "prompt": "\n".join(lines[a:b]),
         "solution": "\n".join(lines[b:c]), "answer": ""}
        for i, (a, b, c) in enumerate(cuts)
    ]


def _build(arch: str, n_vocab: int, pad_id: int, bos_id: int):
    torch.manual_seed(0)
    if arch == "llama":
        config = LlamaConfig(vocab_size=n_vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=MAX_POS,
                             bos_token_id=bos_id, eos_token_id=bos_id, pad_token_id=pad_id)
        model = LlamaForCausalLM(config)
    else:
        config = GPT2Config(vocab_size=n_vocab, n_embd=32, n_layer=2, n_head=4, n_positions=MAX_POS,
                            bos_token_id=bos_id, eos_token_id=bos_id, pad_token_id=pad_id)
        model = GPT2LMHeadModel(config)
    return model.eval()


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def model(request, tokenizer):
    return _build(request.param, len(tokenizer), tokenizer.pad_token_id, tokenizer.bos_token_id)


def reference_rows(model, tokenizer, trace: dict, window: int) -> tuple[list[int], dict[str, np.ndarray], list[int]]:
    """Scored positions, their statistics from a plain full ``model(ids).logits`` pass, and their token ids."""
    prompt = tokenizer(trace["prompt"], add_special_tokens=False)["input_ids"]
    solution = tokenizer(trace["solution"], add_special_tokens=False)["input_ids"]
    ids = [tokenizer.bos_token_id] + prompt + solution
    cut = max(0, len(ids) - MAX_POS)
    kept = ids[cut:]
    with torch.no_grad():
        logits = model(torch.tensor([kept])).logits[0].double().numpy()
    positions, rows, targets = [], [], []
    for k in range(len(solution)):
        at = 1 + len(prompt) + k - cut  # index of solution token k in the kept ids
        if at >= 1 and (window == 0 or k >= len(solution) - window):
            positions.append(k)
            rows.append(logits[at - 1])
            targets.append(kept[at])
            assert kept[at] == solution[k]
    return positions, reference_stats(np.array(rows), np.array(targets)), targets


@pytest.mark.parametrize("window", [0, 20])
def test_score_traces_matches_full_logits_and_window(model, tokenizer, traces, window):
    cfg = ScoreConfig(window=window, chunk_tokens=7, batch_size=1)
    out = score_traces(model, tokenizer, traces, cfg, progress=False)
    assert out.n_traces == len(traces)
    assert list(out.tokens["trace_id"].unique()) == [t["id"] for t in traces]
    tokens_forward = 0
    for trace in traces:
        rows = out.tokens[out.tokens["trace_id"] == trace["id"]]
        positions, ref, targets = reference_rows(model, tokenizer, trace, window)
        n_sol = len(tokenizer(trace["solution"], add_special_tokens=False)["input_ids"])
        n_prompt = len(tokenizer(trace["prompt"], add_special_tokens=False)["input_ids"])
        tokens_forward += min(MAX_POS, 1 + n_prompt + n_sol)
        assert rows["position"].tolist() == positions
        assert rows["token_id"].tolist() == targets
        assert (rows["task"] == trace["task"]).all()
        if window and 1 + n_prompt + n_sol <= MAX_POS:  # untruncated: exactly the last `window` solution tokens
            assert positions == list(range(max(0, n_sol - window), n_sol))
        assert_stats_close({k: rows[k].to_numpy() for k in STAT_KEYS}, ref, atol=1e-5)
    assert out.tokens_forward == tokens_forward
    long = traces[-1]  # truncated: its whole prompt and the start of its solution fall off the left
    n_long = 1 + sum(len(tokenizer(long[k], add_special_tokens=False)["input_ids"]) for k in ("prompt", "solution"))
    assert n_long > MAX_POS
    if window == 0:
        rows = out.tokens[out.tokens["trace_id"] == long["id"]]
        assert len(rows) == MAX_POS - 1 and rows["position"].iloc[0] > 0


def test_a_prompt_as_long_as_the_context_and_a_solution_without_tokens_are_errors(model, tokenizer, traces):
    long_prompt = dict(traces[0], id="long", prompt=" ".join(["word"] * 200))
    with pytest.raises(ValueError, match=r"trace 'long' \(task 'text'\): its prompt is \d+ tokens, as long as the "
                                         r"model's context \(64 positions\) or longer.*shorten the prompt"):
        score_traces(model, tokenizer, [long_prompt], ScoreConfig(long_prompt="error"), progress=False)
    cut = score_traces(model, tokenizer, [long_prompt], ScoreConfig(window=0), progress=False)  # the default
    n_solution = len(tokenizer(long_prompt["solution"], add_special_tokens=False)["input_ids"])
    assert len(cut.tokens) == n_solution and cut.tokens_forward == MAX_POS  # the prompt cut from the left
    with pytest.raises(ValueError, match="trace 'blank' .* has an empty solution: there is nothing to score"):
        score_traces(model, tokenizer, [dict(traces[0], id="blank", solution="")], ScoreConfig(), progress=False)
    from tokenizers import normalizers

    stripping = copy.deepcopy(tokenizer)  # a tokenizer whose normaliser drops what this solution is made of
    stripping.backend_tokenizer.normalizer = normalizers.Replace("x", "")
    with pytest.raises(ValueError, match="trace 'spaces' .* a solution \\(3 characters\\) that this tokenizer turns "
                                         "into no tokens"):
        score_traces(model, stripping, [dict(traces[0], id="spaces", solution="xxx")], ScoreConfig(), progress=False)


def test_compiled_stats_backend_scores_the_same(model, tokenizer, traces):
    eager = score_traces(model, tokenizer, traces, ScoreConfig(window=30, stats_backend="eager"), progress=False)
    comp = score_traces(model, tokenizer, traces, ScoreConfig(window=30, stats_backend="compiled"), progress=False)
    pd.testing.assert_frame_equal(eager.tokens, comp.tokens, check_exact=False, rtol=0, atol=1e-5)
    assert (eager.tokens["rank"] == comp.tokens["rank"]).all()
    with pytest.raises(ValueError, match="score.stats_backend must be one of"):
        score_traces(model, tokenizer, traces, ScoreConfig(stats_backend="fast"), progress=False)


def test_packed_batches_score_like_padded_ones(model, tokenizer, traces):
    """Padding-free batches (traces concatenated into one row, position ids restarting at 0) give the padded
    batches' statistics, on Llama and GPT-2 under SDPA, and forward no padding tokens."""
    padded = score_traces(model, tokenizer, traces, ScoreConfig(batch_size=3, packing="padded"), progress=False)
    packed = score_traces(model, tokenizer, traces, ScoreConfig(batch_size=3, packing="packed"), progress=False)
    pd.testing.assert_frame_equal(padded.tokens, packed.tokens, check_exact=False, rtol=0, atol=1e-5)
    assert (padded.tokens["rank"] == packed.tokens["rank"]).all()
    seen = []
    body = model.get_decoder() if hasattr(model, "get_decoder") else model.base_model
    handle = body.register_forward_pre_hook(lambda m, a, kw: seen.append(tuple(kw.get("input_ids", a[0] if a else None).shape)), with_kwargs=True)
    try:
        score_traces(model, tokenizer, traces, ScoreConfig(batch_size=8, packing="packed"), progress=False)
    finally:
        handle.remove()
    assert seen[-1] == (1, packed.tokens_forward)  # one row holding exactly the traces' tokens
    # auto keeps SDPA models padded (a packed row would attend over its whole length)
    assert ScoreConfig().packing == "auto"
    with pytest.raises(ValueError, match="score.packing must be one of"):
        score_traces(model, tokenizer, traces, ScoreConfig(packing="pack"), progress=False)


def test_packing_refuses_a_model_that_mixes_packed_sequences(model, tokenizer, traces):
    """Beside the real test above: a body that drops the position ids (as an architecture that does not know
    the packed layout) lets the second trace attend to the first; the first batch's check catches it."""
    body = model.get_decoder() if hasattr(model, "get_decoder") else model.base_model

    def drop_positions(module, args, kwargs):
        kwargs.pop("position_ids", None)
        return args, kwargs

    handle = body.register_forward_pre_hook(drop_positions, with_kwargs=True)
    try:
        with pytest.raises(ValueError, match="does not keep packed sequences apart.*score.packing=padded"):
            score_traces(model, tokenizer, traces, ScoreConfig(batch_size=3, packing="packed"), progress=False)
    finally:
        handle.remove()


def test_batching_agrees_with_batch_size_one(model, tokenizer, traces):
    one = score_traces(model, tokenizer, traces, ScoreConfig(window=30, chunk_tokens=256, batch_size=1), progress=False)
    three = score_traces(model, tokenizer, traces, ScoreConfig(window=30, chunk_tokens=5, batch_size=3), progress=False)
    assert one.tokens_forward == three.tokens_forward
    pd.testing.assert_frame_equal(one.tokens, three.tokens, check_exact=False, rtol=0, atol=1e-5)
    assert one.tokens.dtypes["rank"] == np.int32 and one.tokens.dtypes["ce"] == np.float32


def test_auto_batch_halves_on_out_of_memory_and_gives_the_same_statistics(model, tokenizer, traces):
    """Fault injection: the model's body raises torch.OutOfMemoryError (the real exception type CUDA raises)
    for batches of more than 2 traces. auto_batch halves 8 -> 4 -> 2 and finishes; without it the error
    propagates. (A real out-of-memory needs a GPU: benchmarks/bench_scorer.py exercises it there.)"""
    seen = []

    def limit(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        seen.append(ids.shape[0])
        if ids.shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")

    body = model.get_decoder() if hasattr(model, "get_decoder") else model.base_model
    handle = body.register_forward_pre_hook(limit, with_kwargs=True)
    try:
        many = traces * 3  # 9+ traces, so several batches at the final size
        auto = score_traces(model, tokenizer, many, ScoreConfig(window=30, batch_size=8, auto_batch=True), progress=False)
        batches = [b for b in seen if b > 1]  # (the LM-head check runs one 1-row pass first)
        assert auto.batch_size == 2 and batches[:3] == [8, 4, 2] and max(batches[3:]) <= 2
        with pytest.raises(torch.OutOfMemoryError):
            score_traces(model, tokenizer, many, ScoreConfig(window=30, batch_size=8), progress=False)
    finally:
        handle.remove()
    one = score_traces(model, tokenizer, many, ScoreConfig(window=30, batch_size=1), progress=False)
    pd.testing.assert_frame_equal(one.tokens, auto.tokens, check_exact=False, rtol=0, atol=1e-5)


def test_final_hidden_states_and_head_reproduce_the_model(model):
    ids = torch.randint(0, model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        full = model(ids, attention_mask=mask, output_hidden_states=True)
        hidden = final_hidden_states(model, ids, mask)
        torch.testing.assert_close(hidden, full.hidden_states[-1], rtol=0, atol=1e-6)
        torch.testing.assert_close(lm_head_of(model)(hidden), full.logits, rtol=0, atol=1e-6)


def test_softcapping_is_applied_and_unknown_logit_transforms_are_caught():
    ids = torch.randint(0, 300, (1, 10), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    gemma = Gemma2ForCausalLM(Gemma2Config(
        vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, max_position_embeddings=MAX_POS, final_logit_softcapping=0.5,
        pad_token_id=0, bos_token_id=1, eos_token_id=1)).eval()
    with torch.no_grad():
        logits = gemma(ids).logits
        hidden = final_hidden_states(gemma, ids)
        torch.testing.assert_close(lm_head_of(gemma)(hidden), logits, rtol=0, atol=1e-6)
        assert (gemma.get_output_embeddings()(hidden) - logits).abs().max() > 1e-2  # the cap matters here
        check_lm_head(gemma, ids)
    granite = GraniteForCausalLM(GraniteConfig(
        vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=MAX_POS, logits_scaling=4.0,
        pad_token_id=0, bos_token_id=1, eos_token_id=1)).eval()
    with torch.no_grad(), pytest.raises(ValueError, match="lm_head_of"):
        check_lm_head(granite, ids)


def test_score_traces_rejects_bad_traces(model, tokenizer, traces):
    cfg = ScoreConfig(window=10)
    with pytest.raises(ValueError, match="no field 'solution'"):
        score_traces(model, tokenizer, [{"id": "x", "task": "t", "prompt": "p"}], cfg, progress=False)
    with pytest.raises(ValueError, match="empty solution"):
        score_traces(model, tokenizer, [dict(traces[0], solution="")], cfg, progress=False)
