"""The job of each unit kind: a plain, picklable function of its config that runs in-process, under submitit's
local executor or on Slurm alike (``bpe`` -> :func:`proxy_exp.data.job.train_tokenizer`, ``tokenize`` ->
:func:`proxy_exp.data.job.tokenize`, ``train`` -> :func:`proxy_exp.train.job.train`, ``score`` ->
:func:`proxy_exp.score.job.score`, ``evaluate`` -> :func:`proxy_exp.evaluate.job.evaluate`)."""
from __future__ import annotations

import importlib
from typing import Any, Callable

JOBS: dict[str, str] = {
    "bpe": "proxy_exp.data.job:train_tokenizer",
    "tokenize": "proxy_exp.data.job:tokenize",
    "train": "proxy_exp.train.job:train",
    "score": "proxy_exp.score.job:score",
    "evaluate": "proxy_exp.evaluate.job:evaluate",
}


def job_function(kind: str) -> Callable[..., Any]:
    """The job function of unit kind ``kind`` (imported on use: importing this module stays cheap)."""
    if kind not in JOBS:
        raise ValueError(f"unknown unit kind {kind!r}; kinds: {', '.join(JOBS)}")
    module, name = JOBS[kind].split(":")
    return getattr(importlib.import_module(module), name)
