"""Scoring end to end on an in-memory model: per-token statistics -> token frequencies -> the 80 proxies.

:func:`score_model` is what the score job, the in-loop scorer of a training run and a research team's own loop
all call: one function, so a proxy means the same thing wherever it is computed.
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from proxy_exp.config import FreqSource, ScoreConfig
from proxy_exp.score.aggregate import AggregateResult, aggregate
from proxy_exp.score.scorer import score_traces, token_frequencies


@dataclass
class ModelScores:
    """The proxies of one model over a trace set.

    ``tokens``: one row per scored token (:data:`proxy_exp.score.scorer.TOKEN_COLUMNS`); ``proxies``: the 80
    ``proxy/<statistic>/<weighting>`` values (macro average over trace tasks); ``aggregate``: the same per trace
    and per task; ``tokens_forward``: tokens that went through the model (FLOPs = 2 x params x tokens_forward);
    ``n_traces``: traces scored.
    """

    tokens: pd.DataFrame
    aggregate: AggregateResult
    tokens_forward: int
    n_traces: int
    kernel: str = "torch"  # the kernel that ran (proxy_exp/score/lm_head.py:resolve_kernel)
    batch_size: int = 1  # the batch size of the last batch

    @property
    def proxies(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.aggregate.overall.items()}


def score_model(model, tokenizer, traces: list[dict], cfg: ScoreConfig, progress: bool = False) -> ModelScores:
    """The 80 proxies of ``model`` (any HF causal LM, in memory) over ``traces`` (dicts with id, task, prompt,
    solution), under the score settings ``cfg``. The model's train/eval mode is restored afterwards."""
    if cfg.freq_source != FreqSource.traces:
        raise ValueError(f"score.freq_source={cfg.freq_source!r}: use 'traces' (token frequencies counted over "
                         "the scored solution tokens)")
    out = score_traces(model, tokenizer, traces, cfg, progress=progress)
    freq = token_frequencies(out.tokens["token_id"].to_numpy(), len(tokenizer), cfg.freq_smoothing)
    return ModelScores(out.tokens, aggregate(out.tokens, cfg, freq), out.tokens_forward, out.n_traces, out.kernel,
                       out.batch_size)
