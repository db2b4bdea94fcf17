"""Compute-vs-decision-accuracy Pareto frontiers (DataDecide's figure of merit)."""
from __future__ import annotations

import numpy as np
import pandas as pd


def pareto_frontier(df: pd.DataFrame, x: str = "compute", y: str = "decision_accuracy") -> pd.DataFrame:
    """The non-dominated rows of ``df`` (lower ``x`` is better, higher ``y`` is better), sorted by ``x``.

    A row is dominated when another row has ``x`` <= and ``y`` >= with at least one strict. Of
    several identical (x, y) points only the first (in ``df`` order) is kept. Rows with NaN in ``x``
    or ``y`` cannot be placed and are left out. All columns of the kept rows are returned.
    """
    missing = [c for c in (x, y) if c not in df.columns]
    if missing:
        raise ValueError(f"pareto_frontier: columns {missing} not in the frame (columns: {list(df.columns)})")
    pts = df.dropna(subset=[x, y])
    if pts.empty:
        return pts.copy()
    # Sort by x ascending, then y descending; stable, so ties keep df order.
    order = np.lexsort((-pts[y].to_numpy(dtype=float), pts[x].to_numpy(dtype=float)))
    pts = pts.iloc[order]
    yv = pts[y].to_numpy(dtype=float)
    best_before = np.concatenate(([-np.inf], np.maximum.accumulate(yv)[:-1]))
    return pts[yv > best_before].reset_index(drop=True)
