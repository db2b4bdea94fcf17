"""Model selection over a population of models from proxy metrics (the paper's setting 1).

Data (long format, one row per value):

- ``proxies``: columns ``model, task, proxy, value``; ``proxy`` is ``"<statistic>/<weighting>"``
  (e.g. ``"ce/uniform"``), the MLflow key without its ``proxy/`` prefix.
- ``truth``: columns ``model, task, score``: the downstream score of a model on a task, **higher is
  better**.

Orientation: every proxy is multiplied by -1 when its statistic is lower-is-better
(:data:`proxy_exp.config.LOWER_IS_BETTER`), so after :func:`orient`, for every proxy a **higher
oriented value means a better model**. All methods below work on oriented values and predict a
score per model where higher = better.

Methods (each fitted on held-in tasks only, then predicting a score per model on a held-out task
from that task's proxies; no downstream score of a held-out task is ever passed to ``fit``):

- :func:`ce_baseline`: oriented ``ce/uniform``, no fitting.
- :func:`single_best`: the proxy with the highest mean Spearman rho vs truth over held-in tasks.
- :func:`k_sparse`: greedy forward selection of k proxies; the prediction is the mean of the chosen
  proxies, each z-scored across models **within the task** (this uses only proxy values, never
  the truth, so it is legitimate on a held-out task). Each step adds the proxy that maximises the
  mean held-in Spearman rho of that mean. Chosen over an L1/Lasso path: it is rank-based like the
  evaluation, has no regularisation constant to tune, and yields exactly k proxies.
- :func:`ranksvm`: RankSVM on pairwise preferences. Features = oriented proxies, standardised with a
  :class:`sklearn.preprocessing.StandardScaler` fitted on the pooled held-in rows (models x held-in
  tasks). For each held-in task and each pair of models with different scores, the pair feature is
  the difference ``x_i - x_j`` with label ``sign(score_i - score_j)``, in both orders (so classes
  are balanced and the learnt function is close to antisymmetric). Pairs are only formed within a
  task, so task-level offsets of the proxies cancel. Solver: :class:`sklearn.svm.SVC` (libsvm, hinge
  loss). ``kernel="linear"`` scores a model by ``w . x`` (the decision function without its
  intercept, which is a constant shift and does not change a ranking). ``kernel="rbf"`` scores a
  model by its wins against every other model of the task, where model i beats j when
  ``f(x_i - x_j) > f(x_j - x_i)`` (an antisymmetrised comparison: every pair has exactly one
  winner; an exact tie counts half a win to each).

Evaluation: :func:`leave_k_tasks_out` (all C(n_tasks, k) splits, Spearman rho per held-out task,
averaged over the split's held-out tasks), :func:`summarise_cv`, :func:`model_selection_table`.
Uncertainty: :func:`analysis.population.model_selection_report` bootstraps the models of a population.
"""
from __future__ import annotations

import copy
import itertools
import warnings
from typing import Hashable, Mapping, Optional, Sequence

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from proxy_exp.config import LOWER_IS_BETTER, STATISTICS

PROXY_COLUMNS = ["model", "task", "proxy", "value"]
TRUTH_COLUMNS = ["model", "task", "score"]
CE_PROXY = "ce/uniform"
CV_COLUMNS = ["method", "split", "held_out", "spearman", "spearman_by_task", "chosen"]
TABLE_COLUMNS = ["method", "spearman_mean", "spearman_std", "n_splits"]

Features = Mapping[Hashable, pd.DataFrame]  # task -> models x proxies (oriented)
Scores = Mapping[Hashable, pd.Series]  # task -> score per model


# --------------------------------------------------------------------------- data
def proxy_lower_is_better(proxy: str) -> bool:
    """Direction of a proxy named ``"<statistic>/<weighting>"``, from its statistic."""
    statistic = str(proxy).split("/", 1)[0]
    if "/" not in str(proxy) or statistic not in LOWER_IS_BETTER:
        raise ValueError(f"proxy {proxy!r}: expected '<statistic>/<weighting>' with statistic one of "
                         f"{list(STATISTICS)} (e.g. 'ce/uniform'); strip any 'proxy/' prefix of the "
                         "MLflow key")
    return LOWER_IS_BETTER[statistic]


def validate_inputs(proxies: pd.DataFrame, truth: pd.DataFrame) -> None:
    """Raise ValueError naming the problem: missing columns, NaN values, duplicated keys, unknown
    proxy names, (model, task) pairs present in one frame only, or a model lacking a proxy."""
    for name, df, cols in (("proxies", proxies, PROXY_COLUMNS), ("truth", truth, TRUTH_COLUMNS)):
        if not isinstance(df, pd.DataFrame):
            raise ValueError(f"{name} must be a pandas DataFrame with columns {cols}, got {type(df).__name__}")
        missing = [c for c in cols if c not in df.columns]
        if missing:
            raise ValueError(f"{name}: missing columns {missing}; expected columns {cols} (long format, "
                             "one row per value)")
        if df.empty:
            raise ValueError(f"{name} is empty; it needs one row per value")
        nan = df[df[cols].isna().any(axis=1)]
        if not nan.empty:
            raise ValueError(f"{name}: {len(nan)} row(s) hold NaN, first: {nan.iloc[0][cols].to_dict()}; "
                             "drop or fill them before model selection")
        key = cols[:-1]
        dup = df[df.duplicated(key, keep=False)]
        if not dup.empty:
            raise ValueError(f"{name}: {len(dup)} row(s) repeat the key {key}, first: "
                             f"{dup.iloc[0][key].to_dict()}; give one value per key (average seeds first)")
    for proxy in proxies["proxy"].unique():
        proxy_lower_is_better(proxy)
    p_pairs = set(map(tuple, proxies[["model", "task"]].drop_duplicates().to_numpy().tolist()))
    t_pairs = set(map(tuple, truth[["model", "task"]].to_numpy().tolist()))
    if p_pairs != t_pairs:
        only_p = sorted(p_pairs - t_pairs, key=str)[:5]
        only_t = sorted(t_pairs - p_pairs, key=str)[:5]
        raise ValueError(f"proxies and truth cover different (model, task) pairs: only in proxies "
                         f"{only_p}, only in truth {only_t} (first 5 each); every scored model needs a "
                         "downstream score on the same task and vice versa")
    n_proxies = proxies["proxy"].nunique()
    counts = proxies.groupby(["model", "task"])["proxy"].nunique()
    short = counts[counts < n_proxies]
    if not short.empty:
        model, task = short.index[0]
        have = set(proxies.loc[(proxies["model"] == model) & (proxies["task"] == task), "proxy"])
        lacking = sorted(set(proxies["proxy"]) - have)[:5]
        raise ValueError(f"proxies: {len(short)} (model, task) pair(s) lack some proxy, first "
                         f"({model!r}, {task!r}) lacks {lacking}; every model needs every proxy on every "
                         "task (drop the proxy or the model)")
    small = truth.groupby("task")["model"].nunique()
    small = small[small < 3]
    if not small.empty:
        raise ValueError(f"truth: task(s) {small.index.tolist()} have fewer than 3 models; ranking "
                         "correlations need at least 3")


def orient(proxies: pd.DataFrame) -> pd.DataFrame:
    """Copy of ``proxies`` with ``value`` negated for lower-is-better statistics: higher = better."""
    sign = proxies["proxy"].map(lambda p: -1.0 if proxy_lower_is_better(p) else 1.0)
    out = proxies.copy()
    out["value"] = out["value"].astype(float) * sign
    return out


def task_tables(proxies: pd.DataFrame, truth: pd.DataFrame) -> tuple[dict, dict]:
    """Validate, orient and split by task: ({task: models x proxies}, {task: score per model}).

    Columns (proxies) are sorted by name and models by label, so results do not depend on row order.
    """
    validate_inputs(proxies, truth)
    oriented = orient(proxies)
    features: dict = {}
    scores: dict = {}
    for task, part in oriented.groupby("task", sort=True):
        features[task] = part.pivot(index="model", columns="proxy", values="value").sort_index().sort_index(axis=1)
    for task, part in truth.groupby("task", sort=True):
        scores[task] = part.set_index("model")["score"].astype(float).loc[features[task].index]
    return features, scores


def _spearman(pred: pd.Series, truth: pd.Series) -> float:
    """Spearman rho (scipy) of two Series over their common index; NaN for a constant input."""
    common = pred.index.intersection(truth.index, sort=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        return float(stats.spearmanr(pred.loc[common].to_numpy(float), truth.loc[common].to_numpy(float)).statistic)


def _zscore_within_task(x: pd.DataFrame) -> pd.DataFrame:
    """Each column z-scored across the models of one task (a constant column becomes 0)."""
    std = x.std(axis=0, ddof=0).replace(0.0, 1.0)
    return (x - x.mean(axis=0)) / std


# --------------------------------------------------------------------------- methods
class SelectionMethod:
    """A model-selection method: ``fit`` on held-in tasks, ``predict`` a score per model on one task.

    ``fit(features, scores)``: {task: models x oriented proxies}, {task: score per model} of the
    held-in tasks only. ``predict(x)``: x = models x oriented proxies of one task -> Series of
    predicted scores indexed by model (higher = better). ``chosen``: what the fit picked (text).
    """

    name: str = "method"

    def fit(self, features: Features, scores: Scores) -> "SelectionMethod":
        return self

    def predict(self, x: pd.DataFrame) -> pd.Series:
        raise NotImplementedError

    @property
    def chosen(self) -> str:
        return ""


def _require(x: pd.DataFrame, columns: Sequence[str], method: str) -> None:
    missing = [c for c in columns if c not in x.columns]
    if missing:
        raise ValueError(f"{method}: proxies {missing} are missing from the features; available: "
                         f"{list(x.columns)[:10]}...")


class CeBaseline(SelectionMethod):
    """Oriented cross-entropy (``ce/uniform``): no fitting."""

    name = "ce baseline"

    def __init__(self, proxy: str = CE_PROXY) -> None:
        self.proxy = proxy

    def predict(self, x: pd.DataFrame) -> pd.Series:
        _require(x, [self.proxy], self.name)
        return x[self.proxy].rename("pred")

    @property
    def chosen(self) -> str:
        return self.proxy


class SingleBest(SelectionMethod):
    """The proxy with the highest mean held-in Spearman rho (ties: first proxy name in sort order)."""

    name = "single best"

    def __init__(self) -> None:
        self.proxy_: Optional[str] = None
        self.held_in_spearman_: Optional[pd.Series] = None

    def fit(self, features: Features, scores: Scores) -> "SingleBest":
        per_task = pd.DataFrame({task: {p: _spearman(x[p], scores[task]) for p in x.columns}
                                 for task, x in features.items()})
        mean = per_task.mean(axis=1, skipna=True).fillna(-np.inf).sort_index()
        self.held_in_spearman_ = mean
        self.proxy_ = str(mean.idxmax())
        return self

    def predict(self, x: pd.DataFrame) -> pd.Series:
        if self.proxy_ is None:
            raise ValueError("single best: call fit before predict")
        _require(x, [self.proxy_], self.name)
        return x[self.proxy_].rename("pred")

    @property
    def chosen(self) -> str:
        return self.proxy_ or ""


class KSparse(SelectionMethod):
    """Greedy forward selection of ``k`` within-task z-scored proxies; predicts their mean."""

    def __init__(self, k: int = 3) -> None:
        if int(k) < 1:
            raise ValueError(f"k_sparse: k={k}; k must be >= 1")
        self.k = int(k)
        self.name = f"{self.k}-sparse"
        self.proxies_: list[str] = []

    def fit(self, features: Features, scores: Scores) -> "KSparse":
        z = {task: _zscore_within_task(x) for task, x in features.items()}
        columns = sorted(next(iter(z.values())).columns)
        if self.k > len(columns):
            raise ValueError(f"k_sparse: k={self.k} exceeds the {len(columns)} available proxies")
        chosen: list[str] = []
        for _ in range(self.k):
            best, best_rho = None, -np.inf
            for p in columns:
                if p in chosen:
                    continue
                rhos = [_spearman(zt[chosen + [p]].mean(axis=1), scores[t]) for t, zt in z.items()]
                rho = float(np.nanmean(rhos)) if np.isfinite(rhos).any() else -np.inf
                if rho > best_rho:
                    best, best_rho = p, rho
            chosen.append(best if best is not None else next(p for p in columns if p not in chosen))
        self.proxies_ = chosen
        return self

    def predict(self, x: pd.DataFrame) -> pd.Series:
        if not self.proxies_:
            raise ValueError(f"{self.name}: call fit before predict")
        _require(x, self.proxies_, self.name)
        return _zscore_within_task(x[self.proxies_]).mean(axis=1).rename("pred")

    @property
    def chosen(self) -> str:
        return ",".join(self.proxies_)


class RankSVM(SelectionMethod):
    """RankSVM on within-task pairwise differences (see the module docstring)."""

    def __init__(self, kernel: str = "linear", C: float = 1.0, gamma: str | float = "scale") -> None:
        if kernel not in ("linear", "rbf"):
            raise ValueError(f"ranksvm: kernel={kernel!r}; use 'linear' or 'rbf'")
        self.kernel = kernel
        self.C = float(C)
        self.gamma = gamma
        self.name = f"RankSVM {kernel}"
        self.scaler_: Optional[StandardScaler] = None
        self.svc_: Optional[SVC] = None
        self.columns_: list = []

    def fit(self, features: Features, scores: Scores) -> "RankSVM":
        self.columns_ = sorted(next(iter(features.values())).columns)
        pooled = pd.concat([x[self.columns_] for x in features.values()], axis=0)
        self.scaler_ = StandardScaler().fit(pooled.to_numpy(float))
        diffs, labels = [], []
        for task, x in features.items():
            xs = self.scaler_.transform(x[self.columns_].to_numpy(float))
            y = scores[task].loc[x.index].to_numpy(float)
            i, j = np.triu_indices(len(y), k=1)
            sign = np.sign(y[i] - y[j])
            keep = sign != 0
            i, j, sign = i[keep], j[keep], sign[keep]
            diffs += [xs[i] - xs[j], xs[j] - xs[i]]
            labels += [sign, -sign]
        X = np.concatenate(diffs, axis=0)
        y = np.concatenate(labels)
        if len(np.unique(y)) < 2:
            raise ValueError(f"{self.name}: the held-in tasks give no pair of models with different "
                             "scores; nothing to learn a ranking from")
        self.svc_ = SVC(kernel=self.kernel, C=self.C, gamma=self.gamma).fit(X, y)
        return self

    def predict(self, x: pd.DataFrame) -> pd.Series:
        if self.svc_ is None or self.scaler_ is None:
            raise ValueError(f"{self.name}: call fit before predict")
        _require(x, self.columns_, self.name)
        xs = self.scaler_.transform(x[self.columns_].to_numpy(float))
        if self.kernel == "linear":
            return pd.Series(xs @ self.svc_.coef_.ravel(), index=x.index, name="pred")
        n = len(xs)
        i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
        f = self.svc_.decision_function((xs[i.ravel()] - xs[j.ravel()])).reshape(n, n)
        margin = f - f.T  # model i vs j, antisymmetric
        wins = (margin > 0).sum(axis=1) + 0.5 * ((margin == 0).sum(axis=1) - 1)  # minus the diagonal
        return pd.Series(wins.astype(float), index=x.index, name="pred")

    @property
    def chosen(self) -> str:
        if self.svc_ is None:
            return ""
        if self.kernel == "linear":
            w = pd.Series(self.svc_.coef_.ravel(), index=self.columns_)
            top = w.abs().sort_values(ascending=False).index[:3]
            return ",".join(f"{p}:{w[p]:+.3g}" for p in top)
        return f"{len(self.svc_.support_)} support pairs"


def ce_baseline(proxy: str = CE_PROXY) -> CeBaseline:
    """Oriented cross-entropy baseline (no fitting)."""
    return CeBaseline(proxy)


def single_best() -> SingleBest:
    """The single proxy with the best mean held-in Spearman rho."""
    return SingleBest()


def k_sparse(k: int = 3) -> KSparse:
    """Greedy forward selection of k z-scored proxies (their mean is the prediction)."""
    return KSparse(k)


def ranksvm(kernel: str = "linear", C: float = 1.0, gamma: str | float = "scale") -> RankSVM:
    """RankSVM (sklearn SVC on pairwise differences), ``kernel`` 'linear' or 'rbf'."""
    return RankSVM(kernel=kernel, C=C, gamma=gamma)


# --------------------------------------------------------------------------- evaluation
def leave_k_tasks_out(proxies: pd.DataFrame, truth: pd.DataFrame, method: SelectionMethod,
                      k: int = 2, keep_predictions: bool = False) -> pd.DataFrame:
    """Cross-validation over all C(n_tasks, k) splits of the tasks.

    For each split a fresh copy of ``method`` is fitted on the held-in tasks (their proxies and
    scores only), then predicts each held-out task from that task's proxies; Spearman rho vs the
    task's truth is computed per held-out task and averaged (NaN-skipping) over the split's
    held-out tasks. Returns one row per split, columns CV_COLUMNS: method, split (0-based),
    held_out (tuple of tasks), spearman (mean), spearman_by_task ({task: rho}), chosen (what the
    fit picked). A constant prediction on a task gives NaN rho for that task. With
    ``keep_predictions`` a last column ``predictions`` holds {held-out task: predicted Series}.
    """
    features, scores = task_tables(proxies, truth)
    tasks = list(features)
    if not 1 <= int(k) < len(tasks):
        raise ValueError(f"leave_k_tasks_out: k={k} with {len(tasks)} task(s) {tasks}; need 1 <= k < "
                         "n_tasks so that some tasks remain to fit on")
    rows = []
    for split, held_out in enumerate(itertools.combinations(tasks, int(k))):
        held_in = [t for t in tasks if t not in held_out]
        fitted = copy.deepcopy(method).fit({t: features[t] for t in held_in}, {t: scores[t] for t in held_in})
        predictions = {t: fitted.predict(features[t]) for t in held_out}
        by_task = {t: _spearman(predictions[t], scores[t]) for t in held_out}
        vals = np.array(list(by_task.values()), dtype=float)
        rows.append({"method": method.name, "split": split, "held_out": tuple(held_out),
                     "spearman": float(np.nanmean(vals)) if np.isfinite(vals).any() else float("nan"),
                     "spearman_by_task": by_task, "chosen": fitted.chosen, "predictions": predictions})
    columns = CV_COLUMNS + (["predictions"] if keep_predictions else [])
    return pd.DataFrame(rows, columns=columns)


def summarise_cv(df: pd.DataFrame) -> dict[str, float]:
    """Mean and standard deviation (ddof=1, across splits) of the per-split Spearman rho.

    NaN splits (constant predictions) are left out; ``n_splits`` counts the splits used.
    """
    if "spearman" not in df.columns:
        raise ValueError(f"summarise_cv: expected a leave_k_tasks_out frame with a 'spearman' column, "
                         f"got columns {list(df.columns)}")
    vals = df["spearman"].astype(float).dropna()
    return {"spearman_mean": float(vals.mean()) if len(vals) else float("nan"),
            "spearman_std": float(vals.std(ddof=1)) if len(vals) > 1 else float("nan"),
            "n_splits": int(len(vals))}


def model_selection_table(proxies: pd.DataFrame, truth: pd.DataFrame, k: int = 3, seed: int = 0,
                          n_held_out: int = 2) -> pd.DataFrame:
    """The paper's model-selection table: leave-``n_held_out``-tasks-out Spearman rho of the ce
    baseline, the single best proxy, the ``k``-sparse mean and RankSVM (linear, RBF).

    ``seed`` seeds numpy's global generator around the fits for reproducibility (the methods
    themselves are deterministic: libsvm without probability estimates draws no random numbers).
    Columns TABLE_COLUMNS.
    """
    methods = [ce_baseline(), single_best(), k_sparse(k), ranksvm("linear"), ranksvm("rbf")]
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        rows = [{"method": m.name, **summarise_cv(leave_k_tasks_out(proxies, truth, m, k=n_held_out))}
                for m in methods]
    finally:
        np.random.set_state(state)
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)
