"""Figures: the compute-vs-decision-accuracy frontier and a proxy-vs-truth ranking plot.

Matplotlib with the non-interactive Agg backend; each figure is written to a temporary name in the
target folder and renamed when complete, and the final path is returned.
"""
from __future__ import annotations

import os
import tempfile

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402


def _save(fig: "plt.Figure", path: str) -> str:
    path = os.path.abspath(path)
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    suffix = os.path.splitext(path)[1] or ".png"
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=suffix)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=150, bbox_inches="tight", format=suffix.lstrip("."))
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def _families(df: pd.DataFrame, family_col: str, label_col: str) -> pd.Series:
    if family_col in df.columns:
        return df[family_col].astype(str)
    return df[label_col].astype(str).str.split(" @ ").str[0].str.split("/").str[0]


def plot_frontier(points_df: pd.DataFrame, frontier_df: pd.DataFrame, path: str, label_col: str = "method",
                  title: str = "Decision accuracy vs compute", x: str = "compute", y: str = "decision_accuracy",
                  family_col: str = "family") -> str:
    """Scatter every method (coloured by ``family_col``, or by the label's first word when absent),
    draw the Pareto frontier as a step line and label its points; log x axis. Returns ``path``."""
    for name, df in (("points_df", points_df), ("frontier_df", frontier_df)):
        missing = [c for c in (x, y, label_col) if c not in df.columns]
        if missing:
            raise ValueError(f"plot_frontier: {name} lacks columns {missing} (has {list(df.columns)})")
    pts = points_df.dropna(subset=[x, y])
    if (pts[x] <= 0).any():
        raise ValueError(f"plot_frontier: {x} must be > 0 on a log axis; rows "
                         f"{pts.loc[pts[x] <= 0, label_col].tolist()} are not")
    fig, ax = plt.subplots(figsize=(7.5, 5))
    fam = _families(pts, family_col, label_col)
    colours = {f: f"C{i}" for i, f in enumerate(sorted(fam.unique()))}
    for f in fam.value_counts().index:  # the largest family first, so small ones stay visible on top
        sel = pts[fam == f]
        ax.scatter(sel[x], sel[y], s=18, alpha=0.6, color=colours[f], label=f"{f} ({len(sel)})")
    front = frontier_df.dropna(subset=[x, y]).sort_values(x)
    if not front.empty:
        ax.step(front[x], front[y], where="post", color="black", lw=1.5, label="Pareto frontier")
        ax.scatter(front[x], front[y], s=36, facecolors="none", edgecolors="black")
        for r in front.itertuples(index=False):
            ax.annotate(str(getattr(r, label_col)), (getattr(r, x), getattr(r, y)), fontsize=7,
                        xytext=(4, -10), textcoords="offset points")
    ax.set_xscale("log")
    lo, hi = float(pts[x].min()), float(pts[x].max())
    pad = max(1.5, (10.0 * lo / hi) ** 0.5)  # show at least one decade so that major ticks appear
    ax.set_xlim(lo / pad, hi * pad)
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel(f"{x} (relative to one target training run)" if x == "compute" else x)
    ax.set_ylabel(y.replace("_", " "))
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)


def plot_ranking(table_df: pd.DataFrame, path: str, title: str = "Corpus ranking: proxy and ce vs truth",
                 corpus_col: str = "corpus", truth_rank_col: str = "truth_rank",
                 rank_cols: tuple[str, ...] = ("proxy_rank", "ce_rank")) -> str:
    """Each corpus's predicted rank (one marker per column of ``rank_cols``) against its true rank,
    with the diagonal where a perfect predictor lies (1 = best). Returns ``path``."""
    missing = [c for c in (corpus_col, truth_rank_col, *rank_cols) if c not in table_df.columns]
    if missing:
        raise ValueError(f"plot_ranking: table lacks columns {missing} (has {list(table_df.columns)})")
    n = len(table_df)
    fig, ax = plt.subplots(figsize=(6, 6))
    ax.plot([1, n], [1, n], color="grey", lw=1, ls="--", label="same as truth")
    markers = "osD^v"
    for i, col in enumerate(rank_cols):
        offset = (i - (len(rank_cols) - 1) / 2) * 0.08
        ax.scatter(table_df[truth_rank_col] + offset, table_df[col], marker=markers[i % len(markers)],
                   color=f"C{i}", label=col.replace("_rank", ""), s=40)
    ax.set_xticks(range(1, n + 1))
    ax.set_xticklabels([f"{k}\n{c}" for k, c in sorted(zip(table_df[truth_rank_col], table_df[corpus_col]))],
                       fontsize=8)
    ax.set_xlabel("true rank (1 = best) and corpus")
    ax.set_ylabel("predicted rank (1 = best)")
    ax.set_yticks(range(1, n + 1))
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_model_selection(table: pd.DataFrame, path: str, title: str = "Model selection: held-out Spearman rho") -> str:
    """Bars of mean held-out Spearman rho per method, with the bootstrap CI (``ci_lo``/``ci_hi``) as error bars
    and the CV standard deviation as dots. Returns ``path``."""
    missing = [c for c in ("method", "spearman_mean", "ci_lo", "ci_hi") if c not in table.columns]
    if missing:
        raise ValueError(f"plot_model_selection: table lacks columns {missing}")
    fig, ax = plt.subplots(figsize=(7, 4))
    x = range(len(table))
    mean = table["spearman_mean"].astype(float)
    err = [(mean - table["ci_lo"]).clip(lower=0).fillna(0), (table["ci_hi"] - mean).clip(lower=0).fillna(0)]
    ax.bar(x, mean, color=[f"C{i}" for i in x], alpha=0.8, yerr=err, capsize=4)
    if "spearman_std" in table.columns:
        ax.scatter(x, mean + table["spearman_std"].fillna(0), marker="_", color="k", s=80, label="mean + CV std")
        ax.scatter(x, mean - table["spearman_std"].fillna(0), marker="_", color="k", s=80)
        ax.legend(loc="lower right", fontsize=8)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xticks(list(x), table["method"], rotation=20, ha="right")
    ax.set_ylim(-1.05, 1.05)
    ax.set_ylabel("Spearman rho on held-out tasks")
    ax.set_title(title)
    return _save(fig, path)


def plot_forecast(history: pd.DataFrame, predictions: pd.DataFrame, accuracy: str, fit_until_step: float,
                  path: str, title: str = "Training-time forecast", ylabel: str = "") -> str:
    """Measured accuracy per checkpoint, each method's forecast with a +-1 stderr band, and the end of the fit
    window. Returns ``path``."""
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    ax.plot(history["step"], history[accuracy], "k.", ms=5, label=f"measured {ylabel or accuracy}")
    for i, (name, part) in enumerate(predictions.groupby("method", sort=False)):
        ax.plot(part["step"], part["predicted"], color=f"C{i}", label=name)
        ax.fill_between(part["step"].astype(float), (part["predicted"] - part["stderr"]).astype(float),
                        (part["predicted"] + part["stderr"]).astype(float), color=f"C{i}", alpha=0.15)
    ax.axvline(fit_until_step, color="grey", ls="--", lw=1, label="end of fit window")
    ax.set_xscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel or accuracy)
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _save(fig, path)
