"""Proxy selection out of sample for data decisions (setting 2), as the paper does it: which proxy (or k-sparse
combination) to trust is chosen on **held-in** corpora and judged only on **held-out** ones.

Splits are leave-two-corpora-out: each split holds out one pair of corpora, chooses on the pairs among the other
corpora, and then decides the held-out pair. With n corpora that gives C(n, 2) splits, and every pair is decided
exactly once by a choice that never saw it: the out-of-sample decision accuracy is the share of those held-out
decisions that are right (a tie in the prediction counts 1/2, a tie in the truth is skipped, as in
:func:`analysis.decisions.pairwise_decision_accuracy`).

- **single best**: the proxy with the highest decision accuracy on the held-in pairs (ties: higher Spearman rho, then
  the proxies named in ``prefer``, the campaign's a-priori primary proxy, then the name), applied to the held-out
  pair. With few held-in corpora many proxies tie at a perfect fit; the a-priori choice is the honest tie-break.
- **k-sparse**: greedy forward selection of up to ``k`` proxies whose mean z-score (z-scored over the held-in corpora,
  oriented so higher is better) has the highest held-in decision accuracy (ties: fewer proxies, then rho); the
  held-out corpora are z-scored with the held-in mean and spread.

The choice sees only the held-in rows: :func:`choose` is given the held-in slice, never the held-out one
(tests/analysis/test_held_out.py plants a proxy that is perfect on a held-out pair and wrong on the held-in ones,
and one that is perfect held-in and wrong held-out). The 95% interval is a percentile bootstrap over the held-out
decisions (they share corpora, so it is optimistic about independence; the note says so).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from itertools import combinations
from typing import Sequence

import numpy as np
import pandas as pd

from analysis.decisions import pairwise_decision_accuracy
from analysis.uncertainty import _da_and_rho, percentile_interval

@dataclass
class Choice:
    """What one split chose: the proxies (one for single best) and how they combine (z-scored over held-in)."""

    proxies: tuple[str, ...]
    mean: np.ndarray  # held-in mean of each chosen proxy (oriented)
    std: np.ndarray  # held-in standard deviation (1 where constant)
    held_in_da: float

    def predict(self, oriented: pd.DataFrame) -> np.ndarray:
        """The combined score of each row of ``oriented`` (corpora x proxies, higher better)."""
        return _combined(oriented[list(self.proxies)].to_numpy(dtype=float), self.mean, self.std)


def _combined(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """The mean z-score of each row of ``x`` (its columns: the chosen proxies, oriented), z-scored with the held-in
    ``mean`` and ``std``."""
    return ((x - mean) / std).mean(axis=1)


def _zstats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = x.mean(axis=0)
    std = x.std(axis=0)
    return mean, np.where(std > 0, std, 1.0)


def choose(held_in: pd.DataFrame, truth: pd.Series, k: int, prefer: Sequence[str] = ()) -> Choice:
    """The single best proxy (``k=1``) or a greedy k-sparse combination, chosen on ``held_in`` (corpora x proxies,
    oriented so higher is better) against ``truth`` (the same corpora, higher better); ties go to ``prefer`` (in
    order), then to the alphabetically first name. Nothing else is seen."""
    return _greedy(held_in, truth, k, prefer)[-1]


@functools.lru_cache(maxsize=16)
def _tie_ranks(names: tuple[str, ...], prefer: tuple[str, ...]) -> np.ndarray:
    """Each name's place in the tie order: the names of ``prefer`` (in its order), then the others by name."""
    order = sorted(names, key=lambda n: (n not in prefer, prefer.index(n) if n in prefer else 0, n))
    rank_of = {name: i for i, name in enumerate(order)}
    out = np.array([rank_of[n] for n in names])
    out.flags.writeable = False
    return out


def _greedy(held_in: pd.DataFrame, truth: pd.Series, k: int, prefer: Sequence[str]) -> list[Choice]:
    """The choice after each step of :func:`choose`'s greedy search (the first is the single best proxy)."""
    names = list(held_in.columns)
    steps = _greedy_arrays(held_in.to_numpy(dtype=float), truth.loc[held_in.index].to_numpy(dtype=float), k,
                           _tie_ranks(tuple(names), tuple(prefer)))
    return [Choice(tuple(names[j] for j in chosen), mean, std, da) for chosen, mean, std, da in steps]


def _greedy_arrays(x: np.ndarray, t: np.ndarray, k: int, rank: np.ndarray) -> list[tuple]:
    """:func:`_greedy` on arrays: ``x`` [corpus, proxy] oriented, ``t`` [corpus], ``rank`` each proxy's tie rank;
    each step as (chosen columns, their held-in mean, std, held-in decision accuracy)."""
    mean, std = _zstats(x)
    z = (x - mean) / std
    chosen: list[int] = []
    steps = []
    best_key: tuple = (-np.inf,)
    for _ in range(k):
        candidates = np.array([j for j in range(x.shape[1]) if j not in chosen], dtype=int)
        if not len(candidates):
            break
        # the mean z-score of the chosen proxies and each candidate, all candidates at once (summed in the order
        # chosen..., candidate: the same floats as z[:, chosen + [j]].mean(axis=1))
        combos = ((z[:, chosen].sum(axis=1, keepdims=True) if chosen else 0.0) + z[:, candidates]) / (len(chosen) + 1)
        da, rho = _da_and_rho(combos, t)
        da, rho = np.nan_to_num(da, nan=-1.0), np.nan_to_num(rho, nan=-2.0)
        i = int(np.lexsort((rank[candidates], -rho, -da))[0])  # highest da, then rho, then the tie rank
        key = (float(da[i]), float(rho[i]))
        if chosen and key <= best_key:  # adding a proxy must improve the held-in fit
            break
        chosen.append(int(candidates[i]))
        best_key = key
        steps.append((list(chosen), mean[chosen], std[chosen], float(best_key[0])))
    return steps or [([], mean[[]], std[[]], float(best_key[0]))]


@dataclass
class HeldOutResult:
    """Per method: decision accuracy over the held-out pairs with its interval; which proxies the splits chose."""

    table: pd.DataFrame  # method, decision_accuracy, da_lo, da_hi, n_pairs, chosen (most frequent), chosen_share
    decisions: pd.DataFrame  # method, held_out (a|b), correct (0, 0.5, 1), chosen, held_in_da


def held_out_selection(oriented: pd.DataFrame, truth: pd.Series, k: int = 3, n_boot: int = 1000,
                       seed: int = 0, splits: Sequence[tuple[str, str]] | None = None,
                       prefer: Sequence[str] = ()) -> HeldOutResult:
    """Leave-two-corpora-out selection of the single best proxy and a ``k``-sparse combination.

    ``oriented``: corpora x proxies (seed means, oriented so higher is better); ``truth``: per corpus, higher better.
    ``splits``: the held-out pairs (default every pair); ``prefer``: proxies that win ties (:func:`choose`). Needs at
    least 4 corpora (so that the held-in part has pairs to choose on)."""
    corpora = list(oriented.index.intersection(truth.index))
    if len(corpora) < 4:
        raise ValueError(f"held-out proxy selection needs >= 4 corpora (held-in pairs to choose on); got "
                         f"{len(corpora)}: {corpora}")
    names = list(oriented.columns)
    x = oriented.loc[corpora].to_numpy(dtype=float)
    t = truth.loc[corpora].to_numpy(dtype=float)
    rank = _tie_ranks(tuple(names), tuple(prefer))
    where = {c: i for i, c in enumerate(corpora)}
    rows = []
    for a, b in (splits if splits is not None else combinations(corpora, 2)):
        ia, ib = where[a], where[b]
        if t[ia] == t[ib]:
            continue  # no winner to predict
        held_in = np.ones(len(corpora), dtype=bool)
        held_in[[ia, ib]] = False
        steps = _greedy_arrays(x[held_in], t[held_in], k, rank)  # the choice sees the held-in rows only
        for method, (chosen, mean, std, held_in_da) in (("single best (held out)", steps[0]),
                                                        (f"{k}-sparse (held out)", steps[-1])):
            pred = _combined(x[[ia, ib]][:, chosen], mean, std)  # Choice.predict on the held-out pair
            score = float(pairwise_decision_accuracy(pred[:, None], t[[ia, ib]])[0])
            rows.append({"method": method, "held_out": f"{a}|{b}", "correct": score,
                         "chosen": "+".join(names[j] for j in chosen), "held_in_da": held_in_da})
    decisions = pd.DataFrame(rows, columns=["method", "held_out", "correct", "chosen", "held_in_da"])
    rng = np.random.default_rng(seed)
    table = []
    for method, sub in decisions.groupby("method", sort=False):
        c = sub["correct"].to_numpy()
        boots = c[rng.integers(0, len(c), size=(n_boot, len(c)))].mean(axis=1) if len(c) else np.array([np.nan])
        lo, hi = percentile_interval(boots)
        top = sub["chosen"].value_counts()
        table.append({"method": method, "decision_accuracy": float(c.mean()) if len(c) else np.nan,
                      "da_lo": float(lo), "da_hi": float(hi), "n_pairs": len(c),
                      "chosen": top.index[0] if len(top) else "", "chosen_share": float(top.iloc[0] / len(sub))
                      if len(top) else np.nan})
    return HeldOutResult(pd.DataFrame(table), decisions)
