"""Out-of-sample proxy selection for data decisions (analysis/held_out.py): the choice never sees the held-out pair."""
import numpy as np
import pandas as pd
import pytest

from analysis.held_out import choose, held_out_selection

CORPORA = [f"r{i}" for i in range(8)]
TRUTH = pd.Series(np.arange(8, 0, -1, dtype=float), index=CORPORA)  # r0 best ... r7 worst (higher better)


def _proxies(rng, **planted):
    """Noisy proxies (higher better) that track the truth loosely, plus planted columns."""
    cols = {f"noisy{j}": TRUTH.to_numpy() + rng.normal(0, 3.0, len(CORPORA)) for j in range(12)}
    cols |= {name: np.asarray(v, dtype=float) for name, v in planted.items()}
    return pd.DataFrame(cols, index=CORPORA)


def test_a_proxy_perfect_only_on_the_held_out_pair_is_not_chosen():
    """'leak' orders the held-out pair (r0, r1) perfectly and the held-in corpora backwards: a selection that peeked
    at the held-out pair would take it; the held-out selection must not, and judges its choice on (r0, r1) only."""
    rng = np.random.default_rng(0)
    leak = -TRUTH.to_numpy().copy()
    leak[0], leak[1] = 100.0, 99.0  # right on the held-out pair, wrong on every held-in pair
    honest = TRUTH.to_numpy() + np.r_[0, 0, rng.normal(0, 0.01, 6)]  # right held-in, and on the held-out pair
    x = _proxies(rng, leak=leak, honest=honest)
    res = held_out_selection(x, TRUTH, splits=[("r0", "r1")], n_boot=50)
    chosen = set(res.decisions["chosen"].str.split("+").explode())
    assert "leak" not in chosen and "honest" in chosen
    single = res.decisions[res.decisions["method"] == "single best (held out)"].iloc[0]
    assert single["chosen"] == "honest" and single["correct"] == 1.0
    assert choose(x.drop(index=["r0", "r1"]), TRUTH.drop(index=["r0", "r1"]), 1).proxies == ("honest",)


def test_a_proxy_perfect_in_sample_is_judged_on_the_pair_it_never_saw():
    """'overfit' is perfect on the held-in corpora and wrong on the held-out pair: it is chosen, and the reported
    out-of-sample decision is wrong, not the in-sample 1.0."""
    rng = np.random.default_rng(1)
    overfit = TRUTH.to_numpy().copy()
    overfit[2], overfit[5] = overfit[5], overfit[2]  # held out: r2, r5, decided backwards
    x = _proxies(rng, overfit=overfit)
    res = held_out_selection(x, TRUTH, splits=[("r2", "r5")], n_boot=50)
    single = res.decisions[res.decisions["method"] == "single best (held out)"].iloc[0]
    assert single["chosen"] == "overfit" and single["held_in_da"] == 1.0 and single["correct"] == 0.0


def test_every_pair_is_held_out_once_and_noise_stays_near_chance():
    rng = np.random.default_rng(2)
    noise = pd.DataFrame(rng.normal(size=(8, 40)), index=CORPORA, columns=[f"n{j}" for j in range(40)])
    res = held_out_selection(noise, TRUTH, k=3, n_boot=200)
    assert set(res.table["method"]) == {"single best (held out)", "3-sparse (held out)"}
    assert (res.table["n_pairs"] == 28).all()
    assert res.decisions.groupby("method")["held_out"].nunique().eq(28).all()
    for r in res.table.itertuples():  # pure noise: in-sample selection would look good, held out it is chance
        assert 0.2 < r.decision_accuracy < 0.8 and r.da_lo <= r.decision_accuracy <= r.da_hi
    good = _proxies(rng, good=TRUTH.to_numpy())  # a perfect proxy is found in every split
    res = held_out_selection(good, TRUTH, n_boot=50)
    assert res.table.set_index("method").loc["single best (held out)", "decision_accuracy"] == 1.0
    with pytest.raises(ValueError, match=">= 4 corpora"):
        held_out_selection(noise.iloc[:3], TRUTH)
