"""Decisions between candidate corpora: pairwise decision accuracy, rank correlations, ranks.

Every function takes the metric direction of the prediction and of the truth explicitly
(``*_lower_is_better``); nothing is inferred from a metric's name. DataDecide's released scripts
test the direction with a condition that never fires (see docs/style-models.md, section 8), so
proxy-exp carries it as an argument and tests both directions.

Inputs are ``Mapping[item, value]`` or ``pd.Series`` indexed by item (a corpus, a data recipe).
Only items present in both the prediction and the truth are compared.
"""
from __future__ import annotations

import warnings
from typing import Any, Mapping, Union

import numpy as np
import pandas as pd
from scipy import stats

Values = Union[Mapping[str, float], pd.Series]


def _as_series(values: Values, name: str) -> pd.Series:
    """``values`` as a float Series indexed by item; duplicated items or NaN raise ValueError."""
    s = values.copy() if isinstance(values, pd.Series) else pd.Series(dict(values), dtype=float)
    s = s.astype(float)
    dup = s.index[s.index.duplicated()].unique().tolist()
    if dup:
        raise ValueError(f"{name}: items {dup} appear more than once; give one value per item "
                         "(average seeds first)")
    nan = s.index[s.isna()].tolist()
    if nan:
        raise ValueError(f"{name}: items {nan} have NaN values; drop them or fill them before "
                         "comparing rankings")
    return s


def _oriented_pair(pred: Values, truth: Values, pred_lower_is_better: bool,
                   truth_lower_is_better: bool) -> tuple[pd.Index, np.ndarray, np.ndarray]:
    """Items common to both, and both value arrays oriented so that higher means better."""
    p = _as_series(pred, "pred")
    t = _as_series(truth, "truth")
    common = p.index.intersection(t.index, sort=False)
    if len(common) < 2:
        raise ValueError(f"pred and truth share {len(common)} item(s) ({list(common)}); at least two "
                         f"are needed to compare rankings (pred items: {list(p.index)}, truth items: "
                         f"{list(t.index)})")
    pv = p.loc[common].to_numpy(dtype=float)
    tv = t.loc[common].to_numpy(dtype=float)
    return common, (-pv if pred_lower_is_better else pv), (-tv if truth_lower_is_better else tv)


TIE_RULES = ("half", "datadecide")


def pairwise_decision_accuracy(pred: np.ndarray, truth: np.ndarray, ties: str = "half") -> np.ndarray:
    """Decision accuracy of each column of ``pred`` ``[item, method]`` against ``truth`` ``[item]``, both oriented
    so that higher is better.

    ``ties="half"`` (proxy-exp's rule): the share of item pairs decided in the truth whose predicted winner is the
    true one, a pair tied in the prediction counting 1/2; NaN where every pair is tied in the truth.
    ``ties="datadecide"``: DataDecide's rule (``compute_2_class`` of allenai/DataDecide): every pair counts, and it is
    right when the two rankings, each a stable sort of the items (best first), put it in the same order; so a tie
    goes to the item listed first, on each side. Without ties the two rules agree."""
    if ties not in TIE_RULES:
        raise ValueError(f"ties={ties!r}: use one of {', '.join(TIE_RULES)}")
    pred = np.asarray(pred, dtype=float)
    truth = np.asarray(truth, dtype=float)
    i, j = np.triu_indices(pred.shape[0], k=1)
    sign_p = np.sign(pred[i] - pred[j])
    sign_t = np.sign(truth[i] - truth[j])
    if ties == "datadecide":
        if not len(i):
            return np.full(pred.shape[1], np.nan)
        first_p, first_t = sign_p >= 0, sign_t >= 0  # i (listed first) ranked above j, a tie included
        return (first_p == first_t[:, None]).mean(axis=0)
    decided = sign_t != 0
    if not decided.any():
        return np.full(pred.shape[1], np.nan)
    score = np.where(sign_p == 0, 0.5, (sign_p == sign_t[:, None]).astype(float))
    return score[decided].mean(axis=0)


def decision_accuracy(pred: Values, truth: Values, pred_lower_is_better: bool,
                      truth_lower_is_better: bool, ties: str = "half") -> float:
    """Share of unordered item pairs whose predicted winner is the true winner.

    Pairs are all unordered pairs of items present in both ``pred`` and ``truth``.
    - A pair tied in the truth has no winner to predict: it is skipped (not in the denominator).
    - A pair tied in the prediction is a coin flip: it counts 0.5 (the expected score of breaking
      the tie at random), so ties neither reward nor punish a constant predictor beyond chance.
    Returns NaN when every pair is tied in the truth. Vectorised over the upper triangle of the
    pairwise difference matrices (O(n^2) memory, fine for hundreds of items). ``ties="datadecide"``: DataDecide's
    rule instead (:func:`pairwise_decision_accuracy`).
    """
    _, p, t = _oriented_pair(pred, truth, pred_lower_is_better, truth_lower_is_better)
    return float(pairwise_decision_accuracy(p[:, None], t, ties)[0])


def decision_accuracy_seeds(pred_by_seed: pd.DataFrame, truth: Values, pred_lower_is_better: bool,
                            truth_lower_is_better: bool, ties: str = "half") -> dict[str, Any]:
    """Decision accuracy with several seeds, as DataDecide reports it.

    ``pred_by_seed``: index = item, one column per seed. Returns
    ``decision_accuracy`` (the ranking by the seed mean, NaN-free rows only),
    ``decision_accuracy_per_seed_mean`` (mean over seeds of each seed's own ranking) and
    ``per_seed`` ({seed: decision accuracy}).
    """
    if not isinstance(pred_by_seed, pd.DataFrame) or pred_by_seed.shape[1] == 0:
        raise ValueError("pred_by_seed must be a DataFrame with items as index and one column per seed")
    nan_rows = pred_by_seed.index[pred_by_seed.isna().any(axis=1)].tolist()
    if nan_rows:
        raise ValueError(f"pred_by_seed: items {nan_rows} lack a value for some seed; every item needs "
                         "every seed (drop the item or the seed)")
    # the items common to the seed mean and the truth are those of every seed (no NaN rows): one alignment, and
    # every seed's ranking and the mean's at once (a campaign's analysis calls this for each checkpoint and proxy)
    common, mean, t = _oriented_pair(pred_by_seed.mean(axis=1), truth, pred_lower_is_better, truth_lower_is_better)
    by_seed = pred_by_seed.loc[common].to_numpy(dtype=float) * (-1.0 if pred_lower_is_better else 1.0)
    scores = mean_and_seed_accuracies(mean[:, None], by_seed[:, :, None], t, ties)[0]
    per_seed = {seed: float(v) for seed, v in zip(pred_by_seed.columns, scores[1:])}
    mean_rank = float(scores[0])
    return {"decision_accuracy": mean_rank,
            "decision_accuracy_per_seed_mean": float(np.mean(list(per_seed.values()))),
            "per_seed": per_seed}


def mean_and_seed_accuracies(mean: np.ndarray, by_seed: np.ndarray, truth: np.ndarray,
                             ties: str = "half") -> np.ndarray:
    """Decision accuracy of each method's seed mean and of each of its seeds, all methods at once: ``mean``
    ``[item, method]``, ``by_seed`` ``[item, seed, method]``, ``truth`` ``[item]``, all oriented (higher better);
    returns ``[method, 1 + seed]`` (column 0 the seed mean's)."""
    n_items, n_seeds, n_methods = by_seed.shape
    stacked = np.concatenate([mean[:, None, :], by_seed], axis=1).reshape(n_items, -1, order="F")
    return pairwise_decision_accuracy(stacked, truth, ties).reshape(n_methods, n_seeds + 1)


def rank_correlations(pred: Values, truth: Values, pred_lower_is_better: bool,
                      truth_lower_is_better: bool) -> dict[str, float]:
    """Spearman rho and Kendall tau (scipy.stats) between prediction and truth, with p-values.

    Both are sign-adjusted (values oriented so higher = better first), so +1 means "orders the
    items exactly as the truth does" whatever the two metrics' directions. A constant input gives NaN.
    """
    _, p, t = _oriented_pair(pred, truth, pred_lower_is_better, truth_lower_is_better)
    return oriented_rank_correlations(p, t)


def oriented_rank_correlations(p: np.ndarray, t: np.ndarray) -> dict[str, float]:
    """:func:`rank_correlations` of two aligned arrays already oriented so that higher is better."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        sp = stats.spearmanr(p, t)
        kt = stats.kendalltau(p, t)
    return {"spearman": float(sp.statistic), "kendall": float(kt.statistic),
            "spearman_p": float(sp.pvalue), "kendall_p": float(kt.pvalue)}


def ranks(values: Values, lower_is_better: bool) -> pd.Series:
    """Rank of each item, 1 = best; tied items share the best (smallest) rank of their group."""
    s = _as_series(values, "values")
    return s.rank(ascending=lower_is_better, method="min").astype(int)
