"""Unit identity and completion: a unit's id derives from the config that determines its result.

Identical units are shared across campaigns and reruns; a unit is done only when its completion
marker exists (written last, after every output was renamed into place).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any

from proxy_exp.config import (CorpusConfig, EvaluateConfig, ModelConfig, PretrainConfig, ScoreConfig,
                              TokenizerConfig, TracesConfig, to_dict)

DONE = "DONE.json"
# Fields that change how a unit runs, not what it computes.
_OPERATIONAL = {"checkpoint_every", "keep_checkpoints", "stop_after_steps", "num_threads", "nodes",
                "gpus_per_node", "tasks_per_node", "preempt_signal", "batch_size", "auto_batch", "kernel", "stats_backend",
                "packing", "compile", "name", "licence", "citation"}


@dataclass
class Unit:
    """One unit of a campaign's work: its stable id, kind (train | score | evaluate), place in the campaign
    (role, corpus, size, seed), the job config it runs, and the ids of the units it needs first."""

    id: str
    kind: str  # train | score | evaluate
    role: str  # proxy | target
    corpus: str
    size: str
    seed: int
    config: Any  # TrainJobConfig | ScoreJobConfig | EvaluateJobConfig
    depends_on: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.kind:8s} {self.role:6s} {self.corpus:12s} {self.size:4s} seed {self.seed}"


def _result_fields(obj: Any) -> Any:
    d = to_dict(obj)
    if isinstance(d, dict):
        return {k: _result_fields(v) for k, v in d.items() if k not in _OPERATIONAL}
    return d


def stable_id(kind: str, payload: Any) -> str:
    blob = json.dumps(payload, sort_keys=True, default=str)
    return f"{kind}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def train_unit_id(model: ModelConfig, tokenizer: TokenizerConfig, tokenizer_corpora: dict[str, CorpusConfig],
                  corpus: CorpusConfig, pretrain: PretrainConfig, seed: int) -> str:
    tok_corpora = {k: _result_fields(v) for k, v in sorted(tokenizer_corpora.items())}
    return stable_id("train", {
        "model": _result_fields(model), "tokenizer": _result_fields(tokenizer), "tokenizer_corpora": tok_corpora,
        "corpus": _result_fields(corpus) | {"name": corpus.name}, "pretrain": _result_fields(pretrain), "seed": seed,
    })


def score_unit_id(model_ref: str, traces: TracesConfig, score: ScoreConfig) -> str:
    return stable_id("score", {"model": model_ref, "traces": to_dict(traces), "score": _result_fields(score)})


def eval_unit_id(model_ref: str, evaluate: EvaluateConfig) -> str:
    return stable_id("evaluate", {"model": model_ref, "evaluate": _result_fields(evaluate)})


def unit_dir(root: str, unit_id: str) -> str:
    return os.path.join(root, "units", unit_id)


def read_done(root: str, unit_id: str) -> dict | None:
    path = os.path.join(unit_dir(root, unit_id), DONE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def write_done(root: str, unit_id: str, result: Any) -> None:
    """Atomically write the completion marker (tmp + rename)."""
    d = unit_dir(root, unit_id)
    os.makedirs(d, exist_ok=True)
    data = dataclasses.asdict(result) if dataclasses.is_dataclass(result) else result
    tmp = os.path.join(d, f"{DONE}.tmp{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, default=str)
    os.replace(tmp, os.path.join(d, DONE))
