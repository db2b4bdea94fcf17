"""Training-time forecasting (the paper's setting 3): from the early checkpoints of one run,
predict the downstream accuracy of later checkpoints.

Two-step forecast (as the OLMo model ladder maps task loss to accuracy):

1. step -> proxy: a saturating power law ``f(t) = a - b * t**(-c)`` (:func:`fit_power_law`) fitted
   on the checkpoints with ``step <= fit_until_step``. ``c > 0``; ``b > 0`` gives a rising curve
   (e.g. top-1 accuracy), ``b < 0`` a falling one (e.g. cross-entropy), so either direction fits.
2. proxy -> accuracy: a sigmoid ``lo + (hi - lo) / (1 + exp(-k (x - x0)))`` (:func:`fit_sigmoid`) on
   the same early checkpoints; ``k < 0`` when accuracy falls as the proxy rises (e.g. ce).

:func:`forecast` composes them on the held-out checkpoints (``fit_until_step < step <=
horizon_multiple * fit_until_step``); :func:`compute_only_forecast` is the baseline that fits the
power law to accuracy vs step directly. Standard errors use the delta method with analytic
gradients and curve_fit's covariance (scaled by the residual variance: ``absolute_sigma=False``).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import pandas as pd
from scipy.optimize import OptimizeWarning, curve_fit

MIN_POINTS = 4  # three or four parameters: fewer points leave no residual degrees of freedom
POWER_LAW_C_STARTS = (0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.0)
POWER_LAW_C_BOUNDS = (1e-4, 5.0)
FORECAST_COLUMNS = ["step", "predicted", "stderr", "measured", "proxy_predicted", "proxy_stderr"]


def _arrays(x: Sequence[float], y: Sequence[float], xname: str, yname: str, what: str) -> tuple[np.ndarray, np.ndarray]:
    xa = np.asarray(x, dtype=float).ravel()
    ya = np.asarray(y, dtype=float).ravel()
    if xa.shape != ya.shape:
        raise ValueError(f"{what}: {xname} has {xa.size} values but {yname} has {ya.size}; give one "
                         f"{yname} per {xname}")
    bad = ~(np.isfinite(xa) & np.isfinite(ya))
    if bad.any():
        raise ValueError(f"{what}: {int(bad.sum())} point(s) hold NaN or inf (first at index "
                         f"{int(np.argmax(bad))}); drop them before fitting")
    if xa.size < MIN_POINTS:
        raise ValueError(f"{what}: {xa.size} point(s); at least {MIN_POINTS} are needed to fit and "
                         "estimate a covariance (fit on more checkpoints: raise fit_until_step)")
    if np.unique(xa).size < MIN_POINTS:
        raise ValueError(f"{what}: only {np.unique(xa).size} distinct {xname} value(s); at least "
                         f"{MIN_POINTS} are needed")
    return xa, ya


def _quadratic_form_sd(grad: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """sqrt(g^T Cov g) for each row g of ``grad`` (n x p)."""
    var = np.einsum("ni,ij,nj->n", grad, cov, grad)
    return np.sqrt(np.clip(var, 0.0, None))


# --------------------------------------------------------------------------- power law
def power_law(t: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
    """``a - b * t**(-c)``."""
    return a - b * np.power(t, -c)


@dataclass
class PowerLawFit:
    """``f(t) = a - b * t**(-c)``: params (a, b, c) in the caller's units of t, their covariance
    (3 x 3, curve_fit's, scaled by the residual variance), the residual RMSE and the fit size."""

    a: float
    b: float
    c: float
    cov: np.ndarray
    rmse: float
    n_points: int

    @property
    def params(self) -> np.ndarray:
        return np.array([self.a, self.b, self.c])

    def gradient(self, t: np.ndarray) -> np.ndarray:
        """d f / d(a, b, c) at each t (n x 3): (1, -t^-c, b t^-c ln t)."""
        t = np.asarray(t, dtype=float).ravel()
        tc = np.power(t, -self.c)
        return np.column_stack([np.ones_like(t), -tc, self.b * tc * np.log(t)])

    def predict(self, t: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
        """(mean, stderr) at ``t``; stderr by the delta method, sqrt(g^T Cov g)."""
        t = np.asarray(t, dtype=float).ravel()
        if (t <= 0).any():
            raise ValueError("PowerLawFit.predict: t must be > 0")
        return power_law(t, self.a, self.b, self.c), _quadratic_form_sd(self.gradient(t), self.cov)


def fit_power_law(t: Sequence[float], y: Sequence[float]) -> PowerLawFit:
    """Least-squares fit of ``y = a - b * t**(-c)`` with ``scipy.optimize.curve_fit`` (trf, bounds).

    t is divided by its largest value before fitting (so ``t**(-c)`` stays O(1) whatever the
    units) and the parameters and covariance are mapped back exactly (b = b' * s**c, Jacobian
    of (a, b', c) -> (a, b, c)). Multi-start: for each ``c`` in POWER_LAW_C_STARTS the model is
    linear in (a, b), so their least-squares values are the start; c is bounded to
    POWER_LAW_C_BOUNDS, a and b are free (b's sign gives the direction). The start with the
    lowest residual sum of squares wins. The analytic Jacobian is passed to curve_fit.
    """
    ta, ya = _arrays(t, y, "t", "y", "fit_power_law")
    if (ta <= 0).any():
        raise ValueError("fit_power_law: every t (step) must be > 0; t**(-c) is undefined at 0")
    scale = float(ta.max())
    ts = ta / scale

    def jac(tt, a, b, c):
        tc = np.power(tt, -c)
        return np.column_stack([np.ones_like(tt), -tc, b * tc * np.log(tt)])

    best = None
    for c0 in POWER_LAW_C_STARTS:
        design = np.column_stack([np.ones_like(ts), -np.power(ts, -c0)])
        (a0, b0), *_ = np.linalg.lstsq(design, ya, rcond=None)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", OptimizeWarning)
                popt, pcov = curve_fit(power_law, ts, ya, p0=[a0, b0, c0], jac=jac, method="trf",
                                       bounds=([-np.inf, -np.inf, POWER_LAW_C_BOUNDS[0]],
                                               [np.inf, np.inf, POWER_LAW_C_BOUNDS[1]]),
                                       max_nfev=20000)
        except RuntimeError:
            continue
        sse = float(np.sum((power_law(ts, *popt) - ya) ** 2))
        if best is None or sse < best[0]:
            best = (sse, popt, pcov)
    if best is None:
        raise ValueError("fit_power_law: curve_fit did not converge from any start; check that y "
                         "follows a saturating curve in t")
    sse, (a, bs, c), pcov_s = best
    # back to the caller's units: a - b' (t/s)^-c = a - (b' s^c) t^-c
    b = bs * scale ** c
    jacobian = np.array([[1.0, 0.0, 0.0], [0.0, scale ** c, bs * scale ** c * np.log(scale)], [0.0, 0.0, 1.0]])
    cov = jacobian @ pcov_s @ jacobian.T
    return PowerLawFit(a=float(a), b=float(b), c=float(c), cov=cov, rmse=float(np.sqrt(sse / ta.size)),
                       n_points=int(ta.size))


# --------------------------------------------------------------------------- sigmoid
def sigmoid(x: np.ndarray, lo: float, hi: float, k: float, x0: float) -> np.ndarray:
    """``lo + (hi - lo) / (1 + exp(-k (x - x0)))``."""
    z = np.clip(-k * (x - x0), -700.0, 700.0)
    return lo + (hi - lo) / (1.0 + np.exp(z))


@dataclass
class SigmoidFit:
    """``y = lo + (hi - lo) / (1 + exp(-k (x - x0)))`` with ``lo <= hi``; ``k < 0`` means y falls
    as x rises (a lower-is-better proxy such as ce). cov: 4 x 4 in the order (lo, hi, k, x0)."""

    lo: float
    hi: float
    k: float
    x0: float
    cov: np.ndarray
    rmse: float
    n_points: int

    @property
    def params(self) -> np.ndarray:
        return np.array([self.lo, self.hi, self.k, self.x0])

    def _s(self, x: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(np.clip(-self.k * (x - self.x0), -700.0, 700.0)))

    def gradient(self, x: np.ndarray) -> np.ndarray:
        """d y / d(lo, hi, k, x0) at each x (n x 4)."""
        x = np.asarray(x, dtype=float).ravel()
        s = self._s(x)
        ds = (self.hi - self.lo) * s * (1.0 - s)
        return np.column_stack([1.0 - s, s, ds * (x - self.x0), -ds * self.k])

    def slope(self, x: np.ndarray) -> np.ndarray:
        """d y / d x at each x."""
        x = np.asarray(x, dtype=float).ravel()
        s = self._s(x)
        return (self.hi - self.lo) * s * (1.0 - s) * self.k

    def predict(self, x: Sequence[float], x_stderr: Optional[Sequence[float]] = None) -> tuple[np.ndarray, np.ndarray]:
        """(mean, stderr) at ``x``. With ``x_stderr`` (uncertainty of x itself, e.g. an extrapolated
        proxy) the variance adds ``slope(x)^2 * x_stderr^2`` (errors of x and of the sigmoid's
        parameters treated as independent)."""
        x = np.asarray(x, dtype=float).ravel()
        var = _quadratic_form_sd(self.gradient(x), self.cov) ** 2
        if x_stderr is not None:
            var = var + (self.slope(x) * np.asarray(x_stderr, dtype=float).ravel()) ** 2
        return sigmoid(x, self.lo, self.hi, self.k, self.x0), np.sqrt(var)


def fit_sigmoid(x: Sequence[float], y: Sequence[float],
                y_bounds: tuple[float, float] = (-np.inf, np.inf)) -> SigmoidFit:
    """Least-squares sigmoid fit (``curve_fit``, trf) of y against x.

    ``lo`` and ``hi`` are each bounded to ``y_bounds`` (e.g. (0, 1) for an accuracy); ``k`` and
    ``x0`` are free. Multi-start over x0 in the 25/50/75% quantiles of x and k = +-{2, 6} / range(x),
    with lo, hi started at min(y), max(y). The result is put in canonical form ``lo <= hi`` (the
    parametrisation (lo, hi, k, x0) equals (hi, lo, -k, x0)), so ``sign(k)`` is the direction.
    """
    xa, ya = _arrays(x, y, "x", "y", "fit_sigmoid")
    lo_b, hi_b = float(y_bounds[0]), float(y_bounds[1])
    if not lo_b < hi_b:
        raise ValueError(f"fit_sigmoid: y_bounds={y_bounds} must be (lower, upper) with lower < upper")
    span = float(xa.max() - xa.min())
    if span <= 0:
        raise ValueError("fit_sigmoid: x is constant; a sigmoid needs x to vary")
    y_lo = float(np.clip(ya.min(), lo_b, hi_b))
    y_hi = float(np.clip(ya.max(), lo_b, hi_b))
    bounds = ([lo_b, lo_b, -np.inf, -np.inf], [hi_b, hi_b, np.inf, np.inf])

    def jac(xx, lo, hi, k, x0):
        s = 1.0 / (1.0 + np.exp(np.clip(-k * (xx - x0), -700.0, 700.0)))
        ds = (hi - lo) * s * (1.0 - s)
        return np.column_stack([1.0 - s, s, ds * (xx - x0), -ds * k])

    best = None
    for x0 in np.quantile(xa, [0.25, 0.5, 0.75]):
        for k0 in (2.0, 6.0, -2.0, -6.0):
            p0 = [y_lo, y_hi, k0 / span, float(x0)]
            p0[0] = min(max(p0[0], lo_b), hi_b)
            p0[1] = min(max(p0[1], lo_b), hi_b)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", OptimizeWarning)
                    popt, pcov = curve_fit(sigmoid, xa, ya, p0=p0, jac=jac, method="trf", bounds=bounds,
                                           max_nfev=20000)
            except (RuntimeError, ValueError):
                continue
            sse = float(np.sum((sigmoid(xa, *popt) - ya) ** 2))
            if best is None or sse < best[0]:
                best = (sse, popt, pcov)
    if best is None:
        raise ValueError("fit_sigmoid: curve_fit did not converge from any start")
    sse, popt, pcov = best
    lo, hi, k, x0 = popt
    if lo > hi:  # canonical form: swap lo and hi, flip k
        perm = np.array([[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, -1, 0], [0, 0, 0, 1]], dtype=float)
        lo, hi, k = hi, lo, -k
        pcov = perm @ pcov @ perm.T
    return SigmoidFit(lo=float(lo), hi=float(hi), k=float(k), x0=float(x0), cov=pcov,
                      rmse=float(np.sqrt(sse / xa.size)), n_points=int(xa.size))


# --------------------------------------------------------------------------- forecasts
@dataclass
class ForecastResult:
    """``table``: one row per held-out checkpoint, columns FORECAST_COLUMNS (proxy columns NaN for
    the compute-only baseline); ``rmse``: root mean squared error of predicted vs measured
    accuracy over those rows; the fitted curves."""

    table: pd.DataFrame
    rmse: float
    method: str
    fit_until_step: float
    n_fit: int
    proxy_fit: Optional[PowerLawFit] = None
    accuracy_fit: Optional[SigmoidFit] = None
    compute_fit: Optional[PowerLawFit] = None
    notes: list[str] = field(default_factory=list)


def _split(steps: Sequence[float], columns: dict[str, Sequence[float]], fit_until_step: float,
           horizon_multiple: float, what: str) -> tuple[np.ndarray, np.ndarray, dict, dict]:
    s = np.asarray(steps, dtype=float).ravel()
    data = {}
    for name, values in columns.items():
        v = np.asarray(values, dtype=float).ravel()
        if v.shape != s.shape:
            raise ValueError(f"{what}: steps has {s.size} values but {name} has {v.size}; give one {name} "
                             "per checkpoint step")
        data[name] = v
    if not fit_until_step > 0:
        raise ValueError(f"{what}: fit_until_step={fit_until_step} must be > 0")
    if not horizon_multiple > 1:
        raise ValueError(f"{what}: horizon_multiple={horizon_multiple} must be > 1")
    fit = (s > 0) & (s <= fit_until_step)
    held = (s > fit_until_step) & (s <= horizon_multiple * fit_until_step)
    if fit.sum() < MIN_POINTS:
        raise ValueError(f"{what}: {int(fit.sum())} checkpoint(s) with 0 < step <= fit_until_step="
                         f"{fit_until_step}; at least {MIN_POINTS} are needed to fit (raise fit_until_step)")
    if not held.any():
        raise ValueError(f"{what}: no checkpoint with {fit_until_step} < step <= "
                         f"{horizon_multiple * fit_until_step}; nothing to forecast")
    return s[fit], s[held], {k: v[fit] for k, v in data.items()}, {k: v[held] for k, v in data.items()}


def _rmse(pred: np.ndarray, measured: np.ndarray) -> float:
    return float(np.sqrt(np.mean((pred - measured) ** 2)))


def rmse_stderr(pred: Sequence[float], measured: Sequence[float], n_boot: int = 1000, seed: int = 0) -> float:
    """Standard error of the RMSE over the held-out checkpoints: the sd of the RMSE over bootstrap resamples of the
    checkpoints (neighbouring checkpoints are correlated, so this is a lower bound on the uncertainty)."""
    err = (np.asarray(pred, dtype=float) - np.asarray(measured, dtype=float)) ** 2
    err = err[np.isfinite(err)]
    if err.size < 2:
        return float("nan")
    idx = np.random.default_rng(seed).integers(0, err.size, size=(n_boot, err.size))
    return float(np.sqrt(err[idx].mean(axis=1)).std(ddof=1))


def forecast(steps: Sequence[float], proxy: Sequence[float], accuracy: Sequence[float], fit_until_step: float,
             horizon_multiple: float = 18.0,
             accuracy_bounds: tuple[float, float] = (0.0, 1.0)) -> ForecastResult:
    """Two-step forecast: power law step -> proxy and sigmoid proxy -> accuracy, both fitted on the
    checkpoints with ``step <= fit_until_step``, composed on the held-out checkpoints
    ``fit_until_step < step <= horizon_multiple * fit_until_step``. The stderr combines the power
    law's delta-method stderr (through the sigmoid's slope) and the sigmoid's own (treated as
    independent). ``accuracy_bounds`` bounds the sigmoid's lo and hi ((0, 1) for an accuracy)."""
    s_fit, s_held, fit, held = _split(steps, {"proxy": proxy, "accuracy": accuracy}, fit_until_step,
                                      horizon_multiple, "forecast")
    proxy_fit = fit_power_law(s_fit, fit["proxy"])
    accuracy_fit = fit_sigmoid(fit["proxy"], fit["accuracy"], y_bounds=accuracy_bounds)
    proxy_mean, proxy_se = proxy_fit.predict(s_held)
    acc_mean, acc_se = accuracy_fit.predict(proxy_mean, x_stderr=proxy_se)
    table = pd.DataFrame({"step": s_held, "predicted": acc_mean, "stderr": acc_se, "measured": held["accuracy"],
                          "proxy_predicted": proxy_mean, "proxy_stderr": proxy_se}, columns=FORECAST_COLUMNS)
    rmse = _rmse(acc_mean, held["accuracy"])
    table.attrs["rmse"] = rmse
    return ForecastResult(table=table, rmse=rmse, method="two-step (power law -> sigmoid)",
                          fit_until_step=float(fit_until_step), n_fit=int(s_fit.size), proxy_fit=proxy_fit,
                          accuracy_fit=accuracy_fit)


def compute_only_forecast(steps: Sequence[float], accuracy: Sequence[float], fit_until_step: float,
                          horizon_multiple: float = 18.0) -> ForecastResult:
    """Compute-only baseline: the power law fitted to accuracy vs step directly on the early
    checkpoints, evaluated on the same held-out checkpoints as :func:`forecast`."""
    s_fit, s_held, fit, held = _split(steps, {"accuracy": accuracy}, fit_until_step, horizon_multiple,
                                      "compute_only_forecast")
    compute_fit = fit_power_law(s_fit, fit["accuracy"])
    mean, se = compute_fit.predict(s_held)
    table = pd.DataFrame({"step": s_held, "predicted": mean, "stderr": se, "measured": held["accuracy"],
                          "proxy_predicted": np.nan, "proxy_stderr": np.nan}, columns=FORECAST_COLUMNS)
    rmse = _rmse(mean, held["accuracy"])
    table.attrs["rmse"] = rmse
    return ForecastResult(table=table, rmse=rmse, method="compute-only power law",
                          fit_until_step=float(fit_until_step), n_fit=int(s_fit.size), compute_fit=compute_fit)


def accuracy_bounds(values: Sequence[float], configured: Sequence[float] = ()) -> tuple[float, float]:
    """The ``[lo, hi]`` bounds of the sigmoid's asymptotes (``analysis.accuracy_bounds``): the configured pair, or,
    when none is given, ``[0, 1]`` if every value lies there (an accuracy), else unbounded (a continuous metric such
    as ``eval/mean/logprob_per_char``)."""
    if configured:
        if len(configured) != 2 or not configured[0] < configured[1]:
            raise ValueError(f"analysis.accuracy_bounds={list(configured)}: give [lo, hi] with lo < hi, or [] for "
                             "automatic")
        return float(configured[0]), float(configured[1])
    v = np.asarray(values, dtype=float)
    return (0.0, 1.0) if bool(np.all((v >= 0) & (v <= 1))) else (float("-inf"), float("inf"))


# --------------------------------------------------------------------------- one run's report
REPORT_COLUMNS = ["method", "rmse", "rmse_stderr", "mean_stderr", "n_fit", "n_held_out", "fit_until_step", "horizon_step", "note"]


def forecast_report(history: pd.DataFrame, proxy: str, ce: str, accuracy: str, horizon_multiple: float = 18.0,
                    fit_until_step: Optional[float] = None,
                    accuracy_bounds: tuple[float, float] = (0.0, 1.0)) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Setting 3 on one run's checkpoints: the two-step forecast from ``proxy``, the same from ``ce``
    (cross-entropy) and the compute-only fit, all fitted on ``step <= fit_until_step`` (default: the last
    step / ``horizon_multiple``) and scored by RMSE on the later checkpoints up to the horizon.

    ``history``: one row per checkpoint, columns ``step``, ``proxy``, ``ce`` and ``accuracy`` (names as
    given). Returns (one row per method, columns REPORT_COLUMNS; every method's per-checkpoint
    predictions with a ``method`` column). A method whose fit fails is reported with NaN RMSE and the
    reason in ``note`` rather than dropped.
    """
    missing = [c for c in ("step", proxy, ce, accuracy) if c not in history.columns]
    if missing:
        raise ValueError(f"forecast_report: history lacks columns {missing} (has {list(history.columns)}); "
                         "were in_loop.score_every and in_loop.eval_every set on the same steps?")
    h = history.dropna(subset=["step", proxy, ce, accuracy]).sort_values("step")
    if h.empty:
        raise ValueError("forecast_report: no checkpoint has the proxy, ce and accuracy all logged")
    last = float(h["step"].max())
    until = float(fit_until_step) if fit_until_step else last / float(horizon_multiple)
    rows, tables = [], []
    specs = [(f"two-step from {proxy}", lambda: forecast(h["step"], h[proxy], h[accuracy], until, horizon_multiple,
                                                         accuracy_bounds)),
             (f"two-step from {ce} (loss)", lambda: forecast(h["step"], h[ce], h[accuracy], until, horizon_multiple,
                                                             accuracy_bounds)),
             ("compute-only", lambda: compute_only_forecast(h["step"], h[accuracy], until, horizon_multiple))]
    for name, fn in specs:
        try:
            res = fn()
        except (ValueError, RuntimeError) as e:  # curve_fit's RuntimeError: no convergence
            rows.append({"method": name, "rmse": np.nan, "rmse_stderr": np.nan, "mean_stderr": np.nan, "n_fit": 0,
                         "n_held_out": 0,
                         "fit_until_step": until, "horizon_step": until * horizon_multiple, "note": str(e)[:200]})
            continue
        se = res.table["stderr"].to_numpy(float)
        se = se[np.isfinite(se)]
        rows.append({"method": name, "rmse": res.rmse,
                     "rmse_stderr": rmse_stderr(res.table["predicted"], res.table["measured"]),
                     "mean_stderr": float(se.mean()) if se.size else float("nan"),
                     "n_fit": res.n_fit, "n_held_out": len(res.table), "fit_until_step": until,
                     "horizon_step": until * horizon_multiple,
                     "note": "; ".join(res.notes + (["stderr undefined at some checkpoints (no residual degrees of "
                                                     "freedom: add early checkpoints)"] if se.size < len(res.table)
                                                    else []))})
        tables.append(res.table.assign(method=name))
    preds = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=FORECAST_COLUMNS + ["method"])
    return pd.DataFrame(rows, columns=REPORT_COLUMNS), preds
