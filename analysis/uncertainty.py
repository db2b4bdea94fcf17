"""Confidence intervals for a campaign's decisions: a percentile bootstrap over traces and seeds.

Each resample draws, with replacement,
- the traces **within each trace task** (so every task keeps its size; a proxy is the mean over tasks of
  the mean over the task's traces, as :mod:`proxy_exp.score.aggregate` computes it), the same traces for
  every corpus (the corpora are scored on one trace set, so the comparison stays paired);
- the proxy seeds (where there are at least 2) and the target seeds behind the truth (where there are at
  least 2).
For every proxy the decision accuracy (ranking by the resampled seed mean, ties in the prediction count
1/2, pairs tied in the truth are skipped: :func:`analysis.decisions.decision_accuracy`) and the Spearman rho
are recomputed; the interval is the ``alpha/2`` and ``1 - alpha/2`` percentiles. All 80 proxies are done at
once (numpy over a corpus x seed x trace x proxy array).
"""
from __future__ import annotations

import functools
import warnings
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from analysis.decisions import pairwise_decision_accuracy

CI_COLUMNS = ["da_lo", "da_hi", "spearman_lo", "spearman_hi"]


def percentile_interval(samples, alpha: float = 0.05, axis: int = 0):
    """The percentile bootstrap interval ``(alpha/2, 1 - alpha/2)`` of resampled values along ``axis``, NaN
    resamples (e.g. a correlation on a constant resample) skipped; NaN bounds where no resample is finite."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha={alpha} must lie in (0, 1)")
    values = np.asarray(samples, dtype=float)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices give NaN bounds
        lo, hi = np.nanpercentile(values, [100 * alpha / 2, 100 * (1 - alpha / 2)], axis=axis)
    return lo, hi


def _ranks(a: np.ndarray) -> np.ndarray:
    """``scipy.stats.rankdata(a, axis=0)`` (average ranks), from one stable argsort where no column holds a tie or a
    NaN (then every rank is its sorted position); scipy's own where one does."""
    order = np.argsort(a, axis=0, kind="stable")
    ordered = np.take_along_axis(a, order, axis=0)
    if a.shape[0] < 2 or np.isnan(ordered[-1]).any() or (ordered[1:] == ordered[:-1]).any():
        return rankdata(a, axis=0)
    out = np.empty(a.shape, dtype=float)
    positions = np.arange(1.0, a.shape[0] + 1).reshape((-1,) + (1,) * (a.ndim - 1))
    np.put_along_axis(out, order, np.broadcast_to(positions, a.shape), axis=0)
    return out


def _da_and_rho(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """pred [corpus, proxy] oriented (higher better), truth [corpus] oriented -> (da [proxy], rho [proxy])."""
    da = pairwise_decision_accuracy(pred, truth)
    rp = _ranks(pred)
    rt = _ranks(truth)
    rp = rp - rp.mean(axis=0)
    rt = rt - rt.mean()
    denom = np.sqrt((rp ** 2).sum(axis=0) * (rt ** 2).sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = np.where(denom > 0, (rp * rt[:, None]).sum(axis=0) / denom, np.nan)
    return da, rho


@functools.lru_cache(maxsize=64)
def _seed_picks(n_pred: int, n_truth: int, n_boot: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The seeds :func:`seed_bootstrap` resamples ([resample, seed] for the method, [resample, seed] for the
    target), drawn in the order of a loop over resamples (method, then target); the same for every method of a
    campaign, so drawn once."""
    rng = np.random.default_rng(seed)
    picks = [(rng.integers(0, n_pred, n_pred), rng.integers(0, n_truth, n_truth)) for _ in range(n_boot)]
    s_idx, t_idx = np.stack([p for p, _ in picks]), np.stack([t for _, t in picks])
    s_idx.flags.writeable = t_idx.flags.writeable = False
    return s_idx, t_idx


class _ResampledTruth:
    """The target's resampled rankings [corpus, resample], with what every method compared against them shares:
    the sign of each corpus pair in each resample, the number of decided pairs, and the centred ranks."""

    def __init__(self, t_res: np.ndarray):
        self.i, self.j = np.triu_indices(t_res.shape[0], k=1)
        self.sign = np.sign(t_res[self.i] - t_res[self.j])  # [pair, resample]; 0: tied in the truth
        self.decided = (self.sign != 0).sum(axis=0)  # [resample]
        rt = _ranks(t_res)
        self.rank = rt - rt.mean(axis=0)
        self.rank_ss = (self.rank ** 2).sum(axis=0)

    def da_and_rho(self, p_res: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:func:`_da_and_rho` of ``p_res`` [corpus, resample, method] against the truth of the same resample:
        (da, rho), each [resample, method]. Decision accuracy as
        :func:`analysis.decisions.pairwise_decision_accuracy` (pairs tied in the truth skipped, ties in the
        prediction 1/2, NaN where no pair is decided): with signs in {-1, 0, 1}, a decided pair scores
        (1 + sign_p * sign_t) / 2, an undecided one has sign_t = 0, so the accuracy is (n + sum sign_p * sign_t) / 2n."""
        sign_p = np.sign(p_res[self.i] - p_res[self.j])  # [pair, resample, method]
        agree = np.einsum("prm,pr->rm", sign_p, self.sign)
        n = self.decided[:, None]
        with np.errstate(invalid="ignore", divide="ignore"):
            da = np.where(n > 0, (agree + n) / (2 * np.maximum(n, 1)), np.nan)
        rp = _ranks(p_res)
        rp = rp - rp.mean(axis=0)
        denom = np.sqrt((rp ** 2).sum(axis=0) * self.rank_ss[:, None])
        with np.errstate(invalid="ignore", divide="ignore"):
            rho = np.where(denom > 0, np.einsum("crm,cr->rm", rp, self.rank) / denom, np.nan)
        return da, rho


def _intervals(das: list, rhos: list, alpha: float) -> dict[str, np.ndarray]:
    """The ``alpha/2`` and ``1 - alpha/2`` percentiles (NaN-skipping) of the resampled values, keys CI_COLUMNS."""
    da_lo, da_hi = percentile_interval(das, alpha)
    rho_lo, rho_hi = percentile_interval(rhos, alpha)
    return {"da_lo": da_lo, "da_hi": da_hi, "spearman_lo": rho_lo, "spearman_hi": rho_hi}


def trace_seed_bootstrap(per_trace: Mapping[tuple, pd.DataFrame], proxies: Sequence[str],
                         lower_is_better: Sequence[bool], truth_by_seed: pd.DataFrame, truth_lower_is_better: bool,
                         n_boot: int = 500, seed: int = 0, alpha: float = 0.05) -> pd.DataFrame:
    """CIs of decision accuracy and Spearman rho for each proxy: index ``proxies``, columns CI_COLUMNS.

    ``per_trace``: ``{(corpus, seed): frame}`` with columns ``trace_id``, ``task`` and one column per proxy
    (``<statistic>/<weighting>``, the per_trace.parquet a score run logs). ``truth_by_seed``: corpus x target
    seed. Only corpora present in both, the proxy seeds every such corpus has, and the traces every frame
    has are used; fewer than 2 corpora raises ValueError.
    """
    if n_boot < 1:
        raise ValueError(f"trace_seed_bootstrap: n_boot={n_boot} must be >= 1")
    corpora = sorted({c for c, _ in per_trace} & set(truth_by_seed.dropna().index))
    if len(corpora) < 2:
        raise ValueError(f"trace_seed_bootstrap: {len(corpora)} corpus with both per-trace proxies and a truth; "
                         "need >= 2")
    seeds = sorted(set.intersection(*({s for c2, s in per_trace if c2 == c} for c in corpora)))
    if not seeds:
        raise ValueError("trace_seed_bootstrap: no proxy seed is shared by every corpus")
    frames = {(c, s): per_trace[(c, s)].set_index("trace_id") for c in corpora for s in seeds}
    missing = sorted({p for f in frames.values() for p in proxies if p not in f.columns})
    if missing:
        raise ValueError(f"trace_seed_bootstrap: per-trace frames lack proxies {missing[:5]}")
    ids = sorted(set.intersection(*(set(f.index) for f in frames.values())))
    if len(ids) < 2:
        raise ValueError("trace_seed_bootstrap: the corpora share fewer than 2 scored traces")
    first = frames[(corpora[0], seeds[0])]
    tasks = first.loc[ids, "task"].to_numpy()
    groups = [np.flatnonzero(tasks == t) for t in sorted(set(tasks))]
    values = np.stack([np.stack([frames[(c, s)].loc[ids, list(proxies)].to_numpy(float) for s in seeds])
                       for c in corpora])  # [corpus, seed, trace, proxy]
    values = values * np.where(np.asarray(lower_is_better), -1.0, 1.0)
    truth = truth_by_seed.loc[corpora].to_numpy(float) * (-1.0 if truth_lower_is_better else 1.0)

    rng = np.random.default_rng(seed)
    das, rhos = [], []
    for _ in range(int(n_boot)):
        per_task = [np.nanmean(values[:, :, g[rng.integers(0, len(g), len(g))], :], axis=2) for g in groups]
        proxy = np.nanmean(np.stack(per_task), axis=0)  # [corpus, seed, proxy]
        sidx = rng.integers(0, len(seeds), len(seeds)) if len(seeds) > 1 else np.arange(1)
        tidx = rng.integers(0, truth.shape[1], truth.shape[1]) if truth.shape[1] > 1 else np.arange(1)
        da, rho = _da_and_rho(proxy[:, sidx, :].mean(axis=1), truth[:, tidx].mean(axis=1))
        das.append(da)
        rhos.append(rho)
    return pd.DataFrame(_intervals(das, rhos, alpha), index=list(proxies))


def seed_bootstrap(pred_by_seed: pd.DataFrame, lower_is_better: bool, truth_by_seed: pd.DataFrame,
                   truth_lower_is_better: bool, n_boot: int = 500, seed: int = 0,
                   alpha: float = 0.05) -> dict[str, float]:
    """CIs for one method known per corpus and seed only (direct evaluation): resample its seeds and the
    target seeds. With a single seed on both sides there is nothing to resample: NaN bounds."""
    return seed_bootstrap_many([pred_by_seed], [lower_is_better], truth_by_seed, truth_lower_is_better, n_boot, seed,
                               alpha)[0]


def seed_bootstrap_many(preds: Sequence[pd.DataFrame], lower_is_better: Sequence[bool], truth_by_seed: pd.DataFrame,
                        truth_lower_is_better: bool, n_boot: int = 500, seed: int = 0, alpha: float = 0.05,
                        chunk: int = 16) -> list[dict[str, float]]:
    """:func:`seed_bootstrap` of each method of ``preds`` (corpus x seed frames), the same for each as one call
    would give: methods over the same corpora and number of seeds share the resampled seeds, so they are resampled
    together (a campaign's analysis has 80 proxies at each checkpoint of each size), ``chunk`` at a time."""
    nan = {k: float("nan") for k in CI_COLUMNS}
    out: list[dict[str, float]] = [nan] * len(preds)
    truth_ok = set(truth_by_seed.dropna().index)
    groups: dict[tuple, list[int]] = {}
    for i, p in enumerate(preds):
        corpora = tuple(sorted(set(p.dropna().index) & truth_ok))
        if len(corpora) >= 2 and not (p.shape[1] < 2 and truth_by_seed.shape[1] < 2):
            groups.setdefault((corpora, p.shape[1]), []).append(i)
    for (corpora, n_seeds), members in groups.items():
        truth = truth_by_seed.loc[list(corpora)].to_numpy(float) * (-1.0 if truth_lower_is_better else 1.0)
        s_idx, t_idx = _seed_picks(n_seeds, truth.shape[1], int(n_boot), seed)
        resampled = _ResampledTruth(truth[:, t_idx].mean(axis=2))  # [corpus, resample]
        for lo in range(0, len(members), chunk):
            part = members[lo:lo + chunk]
            pred = np.stack([preds[i].loc[list(corpora)].to_numpy(float) * (-1.0 if lower_is_better[i] else 1.0)
                             for i in part], axis=2)  # [corpus, seed, method]
            p_res = pred[:, s_idx, :].mean(axis=2)  # [corpus, resample, method]
            da, rho = resampled.da_and_rho(p_res)
            bounds = _intervals(da, rho, alpha)
            for j, i in enumerate(part):
                out[i] = {k: float(v[j]) for k, v in bounds.items()}
    return out
