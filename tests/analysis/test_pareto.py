"""Compute-vs-decision-accuracy Pareto frontiers."""
from __future__ import annotations


import numpy as np
import pandas as pd
import pytest

from analysis.pareto import pareto_frontier


def test_pareto_frontier_hand_case():
    df = pd.DataFrame({"method": ["p1", "dominated_y", "p2", "dominated_x", "p3", "nan", "dup"],
                       "compute": [1.0, 2.0, 2.0, 3.0, 4.0, 0.5, 4.0],
                       "decision_accuracy": [0.5, 0.4, 0.7, 0.7, 0.9, np.nan, 0.9]})
    front = pareto_frontier(df)
    assert front["method"].tolist() == ["p1", "p2", "p3"]
    assert front["compute"].is_monotonic_increasing
    with pytest.raises(ValueError, match="columns"):
        pareto_frontier(df, x="flops")
