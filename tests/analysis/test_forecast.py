"""Training-time forecasting: power-law and sigmoid fits, delta-method errors, the two-step forecast."""
from __future__ import annotations

import numpy as np
import pytest

from analysis.forecast import (FORECAST_COLUMNS, compute_only_forecast, fit_power_law, fit_sigmoid, forecast,
                               power_law, sigmoid)


@pytest.mark.parametrize("a, b, c", [(0.8, 2.0, 0.4),     # rising, e.g. top-1 accuracy
                                     (2.0, -30.0, 0.35)])  # falling, e.g. cross-entropy (b < 0)
def test_power_law_recovers_planted_parameters(a, b, c):
    rng = np.random.default_rng(0)
    t = np.geomspace(100, 1e5, 30)
    y = power_law(t, a, b, c) + rng.normal(0, 0.003, t.size)
    fit = fit_power_law(t, y)
    assert fit.a == pytest.approx(a, abs=0.02)
    assert fit.b == pytest.approx(b, rel=0.15)
    assert fit.c == pytest.approx(c, abs=0.04)
    assert fit.rmse == pytest.approx(0.003, rel=0.4)  # the residuals are the planted noise
    # the truth lies within 3 standard errors of each parameter
    se = np.sqrt(np.diag(fit.cov))
    assert np.all(np.abs(fit.params - [a, b, c]) < 3 * se)


def test_power_law_delta_method_matches_monte_carlo():
    rng = np.random.default_rng(1)
    t = np.geomspace(100, 8e4, 25)
    fit = fit_power_law(t, power_law(t, 0.7, 1.5, 0.45) + rng.normal(0, 0.004, t.size))
    at = np.array([150.0, 5e3, 8e4, 4e5, 1.4e6])  # inside the fit range and out to 18x beyond it
    mean, stderr = fit.predict(at)
    draws = rng.multivariate_normal(fit.params, fit.cov, size=20000)
    mc = power_law(at[None, :], draws[:, [0]], draws[:, [1]], draws[:, [2]])
    np.testing.assert_allclose(stderr, mc.std(axis=0), rtol=0.2)
    np.testing.assert_allclose(mean, power_law(at, *fit.params))
    assert stderr[-1] > stderr[2]  # extrapolating further is less certain


@pytest.mark.parametrize("lo, hi, k, x0", [(0.25, 0.85, -3.0, 3.2),   # accuracy falls as ce rises
                                           (0.1, 0.7, 12.0, 0.45)])   # accuracy rises with top-1
def test_sigmoid_recovers_planted_parameters(lo, hi, k, x0):
    rng = np.random.default_rng(2)
    x = np.linspace(x0 - 4 / abs(k), x0 + 4 / abs(k), 30)
    y = sigmoid(x, lo, hi, k, x0) + rng.normal(0, 0.005, x.size)
    fit = fit_sigmoid(x, y, y_bounds=(0.0, 1.0))
    assert fit.lo <= fit.hi
    np.testing.assert_allclose(fit.params, [lo, hi, k, x0], rtol=0.1, atol=0.02)
    mean, stderr = fit.predict(x)
    assert np.all(stderr > 0) and np.sqrt(np.mean((mean - y) ** 2)) < 0.01
    draws = rng.multivariate_normal(fit.params, fit.cov, size=20000)
    mc = sigmoid(x[None, ::5], draws[:, [0]], draws[:, [1]], draws[:, [2]], draws[:, [3]])
    np.testing.assert_allclose(stderr[::5], mc.std(axis=0), rtol=0.2)


def emergent_run(seed: int):
    """One synthetic pretraining run following the planted two-step model: ce(step) is a power law,
    accuracy a sigmoid of ce that turns up late (emergent), plus measurement noise."""
    rng = np.random.default_rng(seed)
    steps = np.unique(np.geomspace(1000, 1.4e6, 50).round())
    ce_clean = power_law(steps, 2.0, -30.0, 0.35)
    ce = ce_clean + rng.normal(0, 0.005, steps.size)
    accuracy = sigmoid(ce_clean, 0.25, 0.9, -6.0, 2.8) + rng.normal(0, 0.005, steps.size)
    return steps, ce, accuracy


def test_two_step_forecast_beats_compute_only_on_an_emergent_curve():
    steps, ce, accuracy = emergent_run(3)
    fit_until = 8e4  # the paper's 80K of 1.4M steps (18x)
    two_step = forecast(steps, ce, accuracy, fit_until_step=fit_until, horizon_multiple=18)
    baseline = compute_only_forecast(steps, accuracy, fit_until_step=fit_until, horizon_multiple=18)
    table = two_step.table
    assert list(table.columns) == FORECAST_COLUMNS
    held = steps[(steps > fit_until) & (steps <= 18 * fit_until)]
    np.testing.assert_array_equal(table["step"], held)
    np.testing.assert_array_equal(baseline.table["step"], held)
    assert two_step.n_fit == int((steps <= fit_until).sum())
    rmse = float(np.sqrt(np.mean((table["predicted"] - table["measured"]) ** 2)))
    assert two_step.rmse == pytest.approx(rmse) and table.attrs["rmse"] == pytest.approx(rmse)
    assert two_step.rmse < 0.03  # measurement noise is 0.005; the baseline misses by ~0.075
    assert baseline.rmse > 2 * two_step.rmse
    # the composed fits recover the planted direction: ce falls with steps, accuracy falls with ce
    assert two_step.proxy_fit.b < 0 and two_step.accuracy_fit.k < 0
    assert (table["stderr"] > 0).all() and table["stderr"].iloc[-1] > table["stderr"].iloc[0]


def test_too_few_points_and_bad_inputs_raise():
    t = np.array([10.0, 100.0, 1000.0])
    with pytest.raises(ValueError, match="at least 4"):
        fit_power_law(t, [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="at least 4"):
        fit_sigmoid(t, [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="must be > 0"):
        fit_power_law([0.0, 1.0, 2.0, 3.0], [0.1, 0.2, 0.3, 0.4])
    with pytest.raises(ValueError, match="one y per t"):
        fit_power_law([1.0, 2.0, 3.0, 4.0], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="NaN"):
        fit_power_law([1.0, 2.0, 3.0, 4.0], [0.1, np.nan, 0.3, 0.4])
    steps, ce, accuracy = emergent_run(4)
    with pytest.raises(ValueError, match="at least 4 are needed to fit"):
        forecast(steps, ce, accuracy, fit_until_step=steps[2])
    with pytest.raises(ValueError, match="at least 4 are needed to fit"):
        compute_only_forecast(steps, accuracy, fit_until_step=steps[2])
    with pytest.raises(ValueError, match="nothing to forecast"):
        forecast(steps, ce, accuracy, fit_until_step=steps[-1])
    with pytest.raises(ValueError, match="one proxy per checkpoint"):
        forecast(steps, ce[:-1], accuracy, fit_until_step=8e4)


def test_rmse_stderr_shrinks_with_more_checkpoints():
    from analysis.forecast import rmse_stderr

    rng = np.random.default_rng(0)
    few, many = rng.normal(0, 0.1, 8), rng.normal(0, 0.1, 200)
    se_few, se_many = rmse_stderr(few, np.zeros(8)), rmse_stderr(many, np.zeros(200))
    assert 0 < se_many < se_few < 0.1
    assert np.isnan(rmse_stderr([1.0], [0.0]))  # one checkpoint: no spread to estimate
