"""DataDecide's published results: the 150M reproduction and input validation."""
from __future__ import annotations

import itertools
from pathlib import Path

import pandas as pd
import pytest

import analysis
from analysis import datadecide


# --------------------------------------------------------------------------- DataDecide
DATA = Path(analysis.__file__).parent / "data" / "datadecide"


def test_datadecide_150m_reproduction():
    nll = pd.read_csv(DATA / "olmes10_nll_by_recipe_size_seed.csv")
    acc = pd.read_csv(DATA / "olmes10_accuracy_1b.csv").set_index("data")["one_b_three_seed_mean"]
    mean_nll = nll[nll["params"] == "150M"].groupby("data")["olmes10_mean_neg_ln_correct_prob_per_char"].mean()
    pairs = list(itertools.combinations(sorted(mean_nll.index), 2))
    assert len(pairs) == 300
    agree = [(mean_nll[x] < mean_nll[y]) == (acc[x] > acc[y]) for x, y in pairs]
    expected = sum(agree) / len(pairs)

    for ties in ("half", "datadecide"):  # the released table has no ties: both rules give DataDecide's figure
        table = datadecide.datadecide_decision_accuracy(ties)
        assert len(table) == 13 and "1B" not in set(table["size"])
        row = table.set_index("size").loc["150M"]
        print(f"DataDecide decision accuracy at 150M ({ties}): {row.decision_accuracy:.4f} "
              f"(independent: {expected:.4f})")
        assert row.decision_accuracy == pytest.approx(expected)
    assert 0.7 <= row.decision_accuracy <= 0.9
    assert row.compute == pytest.approx((150e6 / 1e9) ** 2)  # 6 N 100 N / (6 N_1B 100 N_1B)
    assert table["params"].is_monotonic_increasing and table["compute"].is_monotonic_increasing


def test_datadecide_validation(tmp_path, monkeypatch):
    for f in DATA.glob("*.csv"):
        (tmp_path / f.name).write_bytes(f.read_bytes())
    monkeypatch.setattr(datadecide, "_data_dir", lambda: tmp_path)
    nll, acc = datadecide.load_datadecide()
    assert nll["data"].nunique() == 25 and len(acc) == 25

    acc_path = tmp_path / "olmes10_accuracy_1b.csv"
    acc.assign(data=acc["data"].replace({"DCLM-Baseline": "DCLM-baseline"})).to_csv(acc_path, index=False)
    with pytest.raises(ValueError, match=r"only in the second: \['DCLM-baseline'\]"):
        datadecide.load_datadecide()
    acc.to_csv(acc_path, index=False)

    nll.drop(index=nll.index[0]).to_csv(tmp_path / "olmes10_nll_by_recipe_size_seed.csv", index=False)
    with pytest.raises(ValueError, match="needs seeds"):
        datadecide.load_datadecide()
