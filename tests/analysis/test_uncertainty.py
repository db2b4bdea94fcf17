"""Bootstrap CIs of a campaign's decisions over traces and seeds (analysis/uncertainty.py)."""
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis.decisions import decision_accuracy
from analysis.uncertainty import _da_and_rho, percentile_interval, seed_bootstrap, trace_seed_bootstrap


def test_vectorised_statistics_match_decision_accuracy_and_scipy():
    rng = np.random.default_rng(0)
    pred = rng.integers(0, 4, size=(7, 30)).astype(float)  # ties in the prediction on purpose
    truth = rng.normal(size=7)
    da, rho = _da_and_rho(pred, truth)
    for p in range(pred.shape[1]):
        assert da[p] == pytest.approx(decision_accuracy(pd.Series(pred[:, p]), pd.Series(truth), False, False))
        expected = stats.spearmanr(pred[:, p], truth).statistic
        assert (np.isnan(rho[p]) and np.isnan(expected)) or rho[p] == pytest.approx(expected)


def _per_trace(corpora, seeds, n_per_task, gaps, noise, rng):
    """Per-trace proxies: corpus c has mean -c * gap for each proxy (truth: corpus 0 best), plus trace noise."""
    frames = {}
    tasks = np.repeat(["a", "b", "c"], n_per_task)
    for ci, c in enumerate(corpora):
        for s in seeds:
            cols = {name: -ci * gap + rng.normal(0, noise, tasks.size) for name, gap in gaps.items()}
            frames[(c, s)] = pd.DataFrame({"trace_id": [f"t{i}" for i in range(tasks.size)], "task": tasks, **cols})
    return frames


def test_trace_bootstrap_is_tight_for_a_clear_proxy_and_wide_for_a_noisy_one():
    rng = np.random.default_rng(1)
    corpora = ["c0", "c1", "c2", "c3"]
    frames = _per_trace(corpora, [0, 1], 20, {"top1/uniform": 1.0, "top5/uniform": 0.01}, 0.3, rng)
    truth = pd.DataFrame({0: [4.0, 3.0, 2.0, 1.0], 1: [4.1, 2.9, 2.1, 0.9]}, index=corpora)
    ci = trace_seed_bootstrap(frames, ["top1/uniform", "top5/uniform"], [False, False], truth, False, n_boot=300)
    assert ci.loc["top1/uniform", "da_lo"] == 1.0 and ci.loc["top1/uniform", "spearman_lo"] == 1.0
    assert ci.loc["top5/uniform", "da_hi"] - ci.loc["top5/uniform", "da_lo"] >= 0.5
    # a lower-is-better proxy with the same values is reversed: the clear proxy now always decides wrong
    rev = trace_seed_bootstrap(frames, ["top1/uniform"], [True], truth, False, n_boot=100)
    assert rev.loc["top1/uniform", "da_hi"] == 0.0
    # reproducible with a seed
    again = trace_seed_bootstrap(frames, ["top1/uniform", "top5/uniform"], [False, False], truth, False, n_boot=300)
    pd.testing.assert_frame_equal(ci, again)


def test_trace_bootstrap_needs_two_corpora_and_shared_traces():
    rng = np.random.default_rng(2)
    frames = _per_trace(["c0"], [0], 5, {"ce/uniform": 1.0}, 0.1, rng)
    with pytest.raises(ValueError, match="need >= 2"):
        trace_seed_bootstrap(frames, ["ce/uniform"], [True], pd.DataFrame({0: [1.0]}, index=["c0"]), False)
    frames = _per_trace(["c0", "c1"], [0], 5, {"ce/uniform": 1.0}, 0.1, rng)
    with pytest.raises(ValueError, match="lack proxies"):
        trace_seed_bootstrap(frames, ["top2/freq"], [False], pd.DataFrame({0: [1.0, 0.0]}, index=["c0", "c1"]), False)


def test_seed_bootstrap_needs_seeds():
    pred = pd.DataFrame({0: [3.0, 2.0, 1.0]}, index=["a", "b", "c"])
    truth = pd.DataFrame({0: [3.0, 2.0, 1.0]}, index=["a", "b", "c"])
    assert np.isnan(seed_bootstrap(pred, False, truth, False)["da_lo"])
    pred2 = pd.DataFrame({0: [3.0, 2.0, 1.0], 1: [1.0, 2.0, 3.0]}, index=["a", "b", "c"])  # seeds disagree
    ci = seed_bootstrap(pred2, False, truth, False, n_boot=400)
    assert ci["da_lo"] == 0.0 and ci["da_hi"] == 1.0


def test_percentile_interval_of_a_mean_is_the_normal_one_and_skips_nan():
    rng = np.random.default_rng(6)
    large = rng.normal(1.0, 1.0, 500)
    means = np.array([large[rng.integers(0, 500, 500)].mean() for _ in range(500)])
    lo, hi = percentile_interval(means)
    assert lo < large.mean() < hi
    # the percentile interval of a mean is close to the normal one: mean +- 1.96 * sd / sqrt(n)
    assert hi - lo == pytest.approx(2 * 1.96 * large.std(ddof=1) / np.sqrt(len(large)), rel=0.2)
    assert percentile_interval(np.append(means, np.nan)) == (lo, hi)  # NaN resamples are dropped
    cols = percentile_interval(np.stack([means, np.full(500, np.nan)], axis=1))  # per column; all-NaN -> NaN
    assert cols[0][0] == lo and np.isnan(cols[0][1]) and np.isnan(cols[1][1])
    with pytest.raises(ValueError, match="alpha"):
        percentile_interval(means, alpha=1.5)



def test_ranks_are_scipys_average_ranks():
    from scipy.stats import rankdata

    from analysis.uncertainty import _ranks

    rng = np.random.default_rng(0)
    distinct = rng.normal(size=(25, 40, 6))
    tied = rng.integers(0, 4, size=(9, 30)).astype(float)
    with_nan = distinct[:, :, 0].copy()
    with_nan[3, 7] = np.nan
    for a in (distinct, tied, with_nan, distinct[:, 0, 0], np.array([[1.0, 2.0]])):
        assert np.array_equal(_ranks(a), rankdata(a, axis=0), equal_nan=True)
