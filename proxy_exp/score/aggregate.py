"""Token weightings and the aggregation of per-token statistics into the 10 x 8 = 80 proxies.

Per trace: the weighted mean ``sum_t w_t s_t / sum_t w_t`` of each statistic under each weighting;
per task: the mean over traces; overall: the mean over tasks (macro average, so every task counts
the same whatever its number of traces).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from proxy_exp.config import STATISTICS, WEIGHTINGS, ScoreConfig
from proxy_exp.tracking.keys import proxy_key, proxy_task_key

# Columns of the per-token table that the weightings and the aggregation read.
REQUIRED_COLUMNS: tuple[str, ...] = ("trace_id", "task", "token_id", "p_expert") + STATISTICS


def proxy_columns() -> list[str]:
    """The 80 ``<statistic>/<weighting>`` column names, statistic-major."""
    return [f"{s}/{w}" for s in STATISTICS for w in WEIGHTINGS]


def _check_columns(tokens: pd.DataFrame) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in tokens.columns]
    if missing:
        raise ValueError(f"the per-token table lacks columns {missing}; it must come from score_traces (ScoreOutput.tokens)")


def token_weights(tokens: pd.DataFrame, cfg: ScoreConfig, freq: np.ndarray) -> pd.DataFrame:
    """One float64 column per weighting (:data:`proxy_exp.config.WEIGHTINGS`), aligned with ``tokens``.

    method.md names the weightings but not their exact forms; these are ours, set by config:

    - ``uniform``: 1.
    - ``p_expert``: ``p(y_t)``; ``one_minus_p``: ``1 - p(y_t)``.
    - ``entropy``: the normalized entropy ``H(p_t) / log V`` (the ``entropy`` statistic).
    - ``inv_entropy``: ``1 / (entropy + score.inv_entropy_eps)``; eps > 0 bounds the weight of
      near-deterministic positions by ``1 / eps``.
    - ``freq``: ``freq[y_t]``, the relative frequency of the expert token (from ``token_frequencies``
      over ``score.freq_source``); ``inv_freq``: ``1 / freq[y_t]``.
    - ``nll_kernel``: ``exp(-(ce_t - mu)^2 / (2 sigma^2))`` with ``score.nll_kernel_mu`` and
      ``score.nll_kernel_sigma``: a Gaussian bump that favours tokens of moderate difficulty.
    """
    _check_columns(tokens)
    if cfg.inv_entropy_eps <= 0:
        raise ValueError(f"score.inv_entropy_eps must be > 0 (it bounds 1/entropy), got {cfg.inv_entropy_eps}")
    if cfg.nll_kernel_sigma <= 0:
        raise ValueError(f"score.nll_kernel_sigma must be > 0, got {cfg.nll_kernel_sigma}")
    freq = np.asarray(freq, dtype=np.float64)
    token_id = tokens["token_id"].to_numpy(np.int64)
    if token_id.size and token_id.max() >= freq.shape[0]:
        raise ValueError(
            f"token id {token_id.max()} is outside the frequency table of {freq.shape[0]} tokens; "
            "count frequencies with the model's vocab_size"
        )
    f = freq[token_id]
    if np.any(f <= 0):
        raise ValueError("some scored tokens have frequency 0, so inv_freq is infinite; set score.freq_smoothing > 0")
    p = tokens["p_expert"].to_numpy(np.float64)
    entropy = tokens["entropy"].to_numpy(np.float64)
    ce = tokens["ce"].to_numpy(np.float64)
    mu, sigma = cfg.nll_kernel_mu, cfg.nll_kernel_sigma
    columns = {
        "uniform": np.ones_like(p),
        "p_expert": p,
        "one_minus_p": 1.0 - p,
        "entropy": entropy,
        "inv_entropy": 1.0 / (entropy + cfg.inv_entropy_eps),
        "freq": f,
        "inv_freq": 1.0 / f,
        "nll_kernel": np.exp(-((ce - mu) ** 2) / (2.0 * sigma**2)),
    }
    return pd.DataFrame({w: columns[w] for w in WEIGHTINGS}, index=tokens.index)


@dataclass
class AggregateResult:
    """The 80 proxies per trace, per task and overall.

    ``per_trace``: columns trace_id, task and the 80 ``<statistic>/<weighting>`` values (NaN where a
    trace's weights sum to 0). ``per_task``: index task, the mean over its traces (NaN traces skipped).
    ``overall``: ``proxy_key(statistic, weighting) -> mean over tasks``.
    """

    per_trace: pd.DataFrame
    per_task: pd.DataFrame
    overall: dict[str, float]

    def per_task_metrics(self) -> dict[str, float]:
        """``per_task`` as metrics: ``proxy_task_key(task, statistic, weighting) -> value`` (NaN kept)."""
        return {proxy_task_key(task, *name.split("/")): float(v)
                for task, row in self.per_task.iterrows() for name, v in row.items()}


def aggregate(tokens: pd.DataFrame, cfg: ScoreConfig, freq: np.ndarray) -> AggregateResult:
    """Weighted means of every statistic under every weighting, per trace, per task and overall."""
    _check_columns(tokens)
    if tokens.empty:
        raise ValueError("the per-token table is empty: no tokens were scored, so there is nothing to aggregate")
    weights = token_weights(tokens, cfg, freq)
    stats = tokens[list(STATISTICS)].to_numpy(np.float64)
    keys = [tokens["trace_id"].rename("trace_id"), tokens["task"].rename("task")]
    blocks = []
    for w in WEIGHTINGS:
        weight = weights[w].to_numpy()
        weighted = pd.DataFrame(stats * weight[:, None], index=tokens.index, columns=[f"{s}/{w}" for s in STATISTICS])
        numerator = weighted.groupby(keys, sort=False).sum()
        denominator = weights[w].groupby(keys, sort=False).sum()
        blocks.append(numerator.div(denominator.where(denominator != 0), axis=0))
    per_trace = pd.concat(blocks, axis=1)[proxy_columns()].reset_index()
    per_task = per_trace.groupby("task", sort=True)[proxy_columns()].mean()
    overall = {proxy_key(s, w): float(per_task[f"{s}/{w}"].mean()) for s in STATISTICS for w in WEIGHTINGS}
    return AggregateResult(per_trace=per_trace, per_task=per_task, overall=overall)
