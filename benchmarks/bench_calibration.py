"""How often the analysis layer's 95% intervals cover what they are about (issue 21, item 1): campaigns drawn from a
known generative model, every interval the campaign report prints checked against its estimand.

The model, per draw (``--reps`` draws per cell of the grid):

- ``K`` corpora whose expected target values are evenly spaced ``gap`` apart (shuffled): the target's expected
  ranking. The proxy's expected value (unlimited traces and seeds) is the target's plus a per-corpus disagreement of
  standard deviation ``--disagree`` x gap, so a proxy is imperfect in a known way. **Estimand**: the decision
  accuracy of the proxy's expected values against the target's expected values (every pair; pairs tied in the truth
  cannot occur, ties in the proxy have probability 0).
- observed: ``n_seeds`` proxy seeds and ``n_target`` target seeds, each corpus x seed shifted by seed noise
  (``noise`` x gap); per-trace proxy values over 2 tasks x ``traces`` traces, each trace a shared difficulty (the same
  trace for every corpus: the comparison is paired) plus an idiosyncratic term of ``noise`` x gap x sqrt(traces), so
  that the trace mean's noise is ``noise`` x gap.

Intervals checked (the functions the campaign report calls, with its default ``n_boot``):

- ``seed_bootstrap`` (direct evaluation; proxies without per-trace tables): over corpus x seed means;
- ``trace_seed_bootstrap`` (proxies with per-trace tables): over traces within tasks and seeds.

Not yet here: the held-out selection's interval and the forecast band (issue 21 names them too). Prints coverage
per cell and over the grid, and the share of cells inside the 90-98% target band. It measures the intervals as they
are; the fixed ones, and a seeded test with loose bounds, are still to come.

  python benchmarks/bench_calibration.py                 # the grid, 100 draws a cell
  python benchmarks/bench_calibration.py --reps 30 --quick
"""
from __future__ import annotations

import argparse
import itertools
import os
import sys
import time

import numpy as np
import pandas as pd

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from analysis.decisions import pairwise_decision_accuracy  # noqa: E402
from analysis.uncertainty import seed_bootstrap, trace_seed_bootstrap  # noqa: E402

PROXY = "p/x"
TASKS = ("t0", "t1")


def draw(rng: np.random.Generator, k: int, n_seeds: int, n_target: int, traces: int, noise: float,
         disagree: float) -> dict:
    """One synthetic campaign: its estimand and what the analysis sees."""
    gap = 1.0
    truth_mean = rng.permutation(np.arange(k) * gap)
    proxy_mean = truth_mean + rng.normal(0.0, disagree * gap, k)
    corpora = [f"c{i:02d}" for i in range(k)]
    estimand = float(pairwise_decision_accuracy(proxy_mean[:, None], truth_mean)[0])
    target = truth_mean[:, None] + rng.normal(0.0, noise * gap, (k, n_target))
    seed_shift = rng.normal(0.0, noise * gap, (k, n_seeds))
    n_tr = traces * len(TASKS)
    difficulty = rng.normal(0.0, 3.0 * gap, n_tr)  # shared by every corpus
    idio = rng.normal(0.0, noise * gap * np.sqrt(traces), (k, n_seeds, n_tr))
    per_trace_values = proxy_mean[:, None, None] + seed_shift[:, :, None] + difficulty[None, None, :] + idio
    tasks = np.repeat(TASKS, traces)
    per_trace = {(c, s): pd.DataFrame({"trace_id": np.arange(n_tr), "task": tasks, PROXY: per_trace_values[i, s]})
                 for i, c in enumerate(corpora) for s in range(n_seeds)}
    by_seed = pd.DataFrame(per_trace_values.mean(axis=2), index=corpora)  # the seed's proxy: mean over traces
    return {"estimand": estimand, "by_seed": by_seed, "per_trace": per_trace,
            "truth_by_seed": pd.DataFrame(target, index=corpora)}


def intervals(d: dict, n_boot: int, seed: int) -> dict[str, tuple[float, float]]:
    """Each interval the report prints for this proxy: name -> (lo, hi); NaN bounds where none is printed."""
    out = {}
    s = seed_bootstrap(d["by_seed"], False, d["truth_by_seed"], False, n_boot=n_boot, seed=seed)
    out["seed_bootstrap"] = (s["da_lo"], s["da_hi"])
    t = trace_seed_bootstrap(d["per_trace"], [PROXY], [False], d["truth_by_seed"], False, n_boot=n_boot, seed=seed)
    out["trace_seed_bootstrap"] = (float(t.loc[PROXY, "da_lo"]), float(t.loc[PROXY, "da_hi"]))
    return out


def run_grid(grid: dict[str, list], reps: int, n_boot: int, disagree: float, seed: int = 0,
             progress: bool = True) -> pd.DataFrame:
    """Coverage of every interval in every cell of ``grid`` (keys k, n_seeds, n_target, traces, noise)."""
    rows = []
    cells = list(itertools.product(*grid.values()))
    t0 = time.perf_counter()
    for c, values in enumerate(cells):
        cell = dict(zip(grid, values))
        rng = np.random.default_rng([seed, c])
        hits: dict[str, list[float]] = {}
        widths: dict[str, list[float]] = {}
        for r in range(reps):
            d = draw(rng, disagree=disagree, **cell)
            for name, (lo, hi) in intervals(d, n_boot, seed=r).items():
                if np.isnan(lo) or np.isnan(hi):
                    continue  # not printed: the report says why
                hits.setdefault(name, []).append(float(lo - 1e-12 <= d["estimand"] <= hi + 1e-12))
                widths.setdefault(name, []).append(hi - lo)
        for name in hits:
            rows.append({**cell, "interval": name, "printed": len(hits[name]), "coverage": np.mean(hits[name]),
                         "mean_width": np.mean(widths[name])})
        if progress:
            print(f"  cell {c + 1}/{len(cells)} {cell} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr,
                  flush=True)
    return pd.DataFrame(rows)


GRID = {"k": [8, 25], "n_seeds": [1, 2, 3, 5], "n_target": [2, 3, 5], "traces": [8, 64], "noise": [0.05, 0.5, 1.0, 2.0]}
QUICK = {"k": [8, 25], "n_seeds": [1, 2, 3, 5], "n_target": [2, 5], "traces": [16], "noise": [0.05, 1.0, 2.0]}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=100, help="draws per cell")
    p.add_argument("--n-boot", type=int, default=500, help="bootstrap resamples (the report's default)")
    p.add_argument("--disagree", type=float, default=0.5, help="proxy vs truth disagreement, x gap")
    p.add_argument("--quick", action="store_true", help="a smaller grid")
    p.add_argument("--csv", default="", help="write the per-cell table here")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    table = run_grid(QUICK if args.quick else GRID, args.reps, args.n_boot, args.disagree)
    if args.csv:
        table.to_csv(args.csv, index=False)
    band = table["coverage"].between(0.90, 0.98)
    summary = (table.groupby("interval")
               .agg(cells=("coverage", "size"), min=("coverage", "min"), median=("coverage", "median"),
                    max=("coverage", "max"), in_band=("coverage", lambda c: float(c.between(0.90, 0.98).mean()))))
    with pd.option_context("display.width", 200, "display.max_rows", 400, "display.float_format", "{:.3f}".format):
        print(f"coverage of nominal 95% intervals ({args.reps} draws a cell, n_boot {args.n_boot}, proxy disagreement "
              f"{args.disagree} x gap; {time.perf_counter() - t0:.0f} s)")
        for name, sub in table.groupby("interval"):
            print(f"\n{name}: coverage by proxy seeds x noise (mean over the other settings)")
            print(sub.pivot_table(index="n_seeds", columns="noise", values="coverage", aggfunc="mean").to_string())
        print("\nover the grid (target: every cell in 90-98%):")
        print(summary.to_string())
        print(f"\ncells in the band: {int(band.sum())} of {len(table)}")


if __name__ == "__main__":
    main()
