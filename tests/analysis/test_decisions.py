"""Pairwise decision accuracy, rank correlations and ranks, with explicit metric directions."""
from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis.decisions import decision_accuracy, decision_accuracy_seeds, rank_correlations, ranks


# --------------------------------------------------------------------------- decisions
def test_decision_accuracy_hand_case_and_directions():
    pred = {"a": 1.0, "b": 2.0, "c": 3.0, "only_pred": 9.0}
    truth = {"a": 1.0, "b": 3.0, "c": 2.0}
    # Higher is better for both: (a,b) b wins in both, (a,c) c wins in both, (b,c) pred c, truth b.
    assert decision_accuracy(pred, truth, False, False) == pytest.approx(2 / 3)
    # Pred lower-is-better: a is predicted best; only (b,c) -> b agrees with truth.
    assert decision_accuracy(pred, truth, True, False) == pytest.approx(1 / 3)
    # Flipping both directions gives back the same decisions.
    assert decision_accuracy(pred, truth, True, True) == pytest.approx(2 / 3)
    # Negating the values and the direction together changes nothing.
    neg = {k: -v for k, v in pred.items()}
    assert decision_accuracy(neg, truth, True, False) == decision_accuracy(pred, truth, False, False)
    # pd.Series and Mapping give the same answer.
    assert decision_accuracy(pd.Series(pred), pd.Series(truth), False, False) == pytest.approx(2 / 3)


def test_decision_accuracy_ties():
    truth = {"a": 1.0, "b": 2.0, "c": 3.0}
    # (a,b) tied in pred -> 0.5; (a,c) and (b,c) right -> (0.5 + 1 + 1) / 3.
    assert decision_accuracy({"a": 1.0, "b": 1.0, "c": 3.0}, truth, False, False) == pytest.approx(2.5 / 3)
    # (a,b) tied in truth -> skipped; (a,c) right, (b,c) wrong -> 1 / 2.
    assert decision_accuracy({"a": 1.0, "b": 5.0, "c": 3.0}, {"a": 1.0, "b": 1.0, "c": 2.0},
                             False, False) == pytest.approx(0.5)
    # Everything tied in truth: no decision to score.
    assert np.isnan(decision_accuracy({"a": 1.0, "b": 2.0}, {"a": 0.0, "b": 0.0}, False, False))
    # A constant predictor scores exactly chance.
    assert decision_accuracy({k: 0.0 for k in truth}, truth, True, False) == pytest.approx(0.5)


def test_decision_accuracy_matches_brute_force():
    rng = np.random.default_rng(0)
    items = [f"r{i}" for i in range(12)]
    for trial in range(5):
        pred = dict(zip(items, rng.integers(0, 5, len(items)).astype(float)))  # many ties
        truth = dict(zip(items, rng.integers(0, 6, len(items)).astype(float)))
        lower_p, lower_t = bool(trial % 2), bool(trial // 2 % 2)
        scores = []
        for x, y in itertools.combinations(items, 2):
            if truth[x] == truth[y]:
                continue
            true_winner = x if (truth[x] < truth[y]) == lower_t else y
            if pred[x] == pred[y]:
                scores.append(0.5)
            else:
                pred_winner = x if (pred[x] < pred[y]) == lower_p else y
                scores.append(float(pred_winner == true_winner))
        assert decision_accuracy(pred, truth, lower_p, lower_t) == pytest.approx(np.mean(scores))


def test_decision_accuracy_bad_input():
    with pytest.raises(ValueError, match="share 1 item"):
        decision_accuracy({"a": 1.0, "b": 2.0}, {"a": 1.0, "c": 2.0}, False, False)
    with pytest.raises(ValueError, match="NaN"):
        decision_accuracy({"a": 1.0, "b": float("nan")}, {"a": 1.0, "b": 2.0}, False, False)
    with pytest.raises(ValueError, match="more than once"):
        decision_accuracy(pd.Series([1.0, 2.0], index=["a", "a"]), {"a": 1.0}, False, False)


def test_decision_accuracy_seeds():
    truth = {"a": 3.0, "b": 2.0, "c": 1.0}  # higher is better: a > b > c
    by_seed = pd.DataFrame({0: {"a": 1.0, "b": 2.0, "c": 3.0},   # lower better: a > b > c, 3/3
                            1: {"a": 2.5, "b": 2.0, "c": 3.0}},  # b > a > c: 2/3
                           )
    out = decision_accuracy_seeds(by_seed, truth, True, False)
    assert out["per_seed"] == {0: pytest.approx(1.0), 1: pytest.approx(2 / 3)}
    assert out["decision_accuracy_per_seed_mean"] == pytest.approx(5 / 6)
    # Seed mean: a 1.75, b 2.0, c 3.0 -> a > b > c.
    assert out["decision_accuracy"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="every seed"):
        decision_accuracy_seeds(by_seed.assign(**{"2": [1.0, np.nan, 2.0]}), truth, True, False)


def test_rank_correlations_against_scipy():
    rng = np.random.default_rng(1)
    items = [f"r{i}" for i in range(9)]
    p = pd.Series(rng.normal(size=9), index=items)
    t = pd.Series(rng.normal(size=9), index=items)
    sp, kt = stats.spearmanr(p, t), stats.kendalltau(p, t)
    same = rank_correlations(p, t, False, False)
    assert same["spearman"] == pytest.approx(sp.statistic) and same["kendall"] == pytest.approx(kt.statistic)
    assert same["spearman_p"] == pytest.approx(sp.pvalue) and same["kendall_p"] == pytest.approx(kt.pvalue)
    assert rank_correlations(p, t, True, True)["spearman"] == pytest.approx(sp.statistic)
    flipped = rank_correlations(p, t, True, False)
    assert flipped["spearman"] == pytest.approx(-sp.statistic) and flipped["kendall"] == pytest.approx(-kt.statistic)
    assert flipped["spearman_p"] == pytest.approx(sp.pvalue)
    # A lower-is-better prediction that orders exactly as the truth scores +1.
    assert rank_correlations(-t, t, True, False)["spearman"] == pytest.approx(1.0)


def test_ranks():
    v = {"a": 3.0, "b": 1.0, "c": 3.0}
    assert ranks(v, lower_is_better=True).to_dict() == {"a": 2, "b": 1, "c": 2}
    assert ranks(v, lower_is_better=False).to_dict() == {"a": 1, "b": 3, "c": 1}


def test_datadecide_tie_rule_counts_every_pair_in_sorted_order():
    """DataDecide's compute_2_class: both sides ranked by a stable sort (best first), every pair counted, right when
    the rankings agree; proxy-exp's rule skips pairs tied in the truth and counts a tied prediction 1/2."""
    import itertools

    import numpy as np

    from analysis.decisions import pairwise_decision_accuracy

    def compute_2_class(pred, truth):  # DataDecide's definition, written out on rankings
        a = sorted(range(len(truth)), key=lambda k: -truth[k])
        b = sorted(range(len(pred)), key=lambda k: -pred[k])
        pairs = list(itertools.combinations(range(len(a)), 2))
        return sum((b.index(a[x]) < b.index(a[y])) for x, y in pairs) / len(pairs)

    rng = np.random.default_rng(1)
    for _ in range(50):
        truth = rng.integers(0, 3, 7).astype(float)  # many ties on both sides
        pred = rng.integers(0, 3, 7).astype(float)
        got = pairwise_decision_accuracy(pred[:, None], truth, ties="datadecide")[0]
        assert got == pytest.approx(compute_2_class(pred, truth))
    truth, pred = np.array([1.0, 1.0, 2.0]), np.array([5.0, 5.0, 9.0])
    assert pairwise_decision_accuracy(pred[:, None], truth)[0] == 1.0  # the tied pair skipped
    assert pairwise_decision_accuracy(pred[:, None], truth, ties="datadecide")[0] == 1.0  # same order on both sides
    assert pairwise_decision_accuracy(np.array([[5.0], [6.0], [9.0]]), truth)[0] == 1.0
    assert pairwise_decision_accuracy(np.array([[5.0], [6.0], [9.0]]), truth, ties="datadecide")[0] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="ties="):
        pairwise_decision_accuracy(pred[:, None], truth, ties="skip")
