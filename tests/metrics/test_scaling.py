"""Censored medians and exponent fits (metrics/scaling.py)."""

from __future__ import annotations

import numpy as np
import pytest

from easyhard._validate import ConfigError
from easyhard.metrics import bootstrap_scaling, fit_power_law, km_median, km_quantile, log_log_fit


def test_km_median_textbook_example():
    # at risk 5: event at 1 (S = 0.8); 2 censored; at risk 3: event at 3 (S = 0.533); at risk 2: event at 4 (0.267)
    times = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    observed = np.array([True, False, True, True, False])
    assert km_median(times, observed) == 4.0
    assert km_quantile(times, 0.2, observed) == 1.0


def test_km_median_without_censoring_is_the_lower_median():
    x = np.random.default_rng(0).permutation(np.arange(1, 12))
    assert km_median(x) == 6
    assert km_median(np.arange(1, 11)) == 5  # ceil(10/2)-th order statistic
    assert km_quantile(np.arange(1, 101), 0.25) == 25


def test_km_median_with_runs_that_never_recover():
    times = np.array([5, 3, -1, 8, -1, 1, 9])  # -1: censored at +inf; S drops by 1/7 per event
    assert km_median(times) == 8  # 4th event: S = 3/7 <= 1/2
    assert km_median(np.array([5, -1, -1, -1])) == float("inf")


def test_fit_power_law_recovers_exact_laws():
    d = np.array([32, 64, 128, 256])
    assert fit_power_law(d, 0.02 * d**3.0) == pytest.approx((3.0, 0.02))
    assert fit_power_law(d, 6.3 * d * np.log(d), log_factor=True) == pytest.approx((1.0, 6.3))
    with pytest.raises(ConfigError):
        fit_power_law(d[:1], np.ones(1))


def test_bootstrap_interval_covers_the_true_exponent():
    """tau = 0.02 d^3 Exp(1): the median law has exponent 3; the 95% interval covers it in most repetitions."""
    rng = np.random.default_rng(1)
    dims = (32, 64, 128, 256)
    covered = 0
    reps = 20
    for r in range(reps):
        times = {d: np.rint(0.02 * d**3 * rng.exponential(size=200)) for d in dims}
        fit = bootstrap_scaling(times, n_boot=300, seed=r)
        lo, hi = fit.interval
        covered += lo <= 3.0 <= hi
        assert lo < fit.kappa < hi and hi - lo < 0.5
    assert covered >= 16  # nominal 95%: 19 of 20 expected


def test_bootstrap_refuses_unreached_medians():
    with pytest.raises(ConfigError, match="fewer than half"):
        bootstrap_scaling({32: np.array([10, -1, -1]), 64: np.array([20, 30, 40])})


def test_log_log_fit_recovers_an_exact_power_law():
    x = np.geomspace(0.01, 300.0, 9)
    slope, intercept = log_log_fit(x, 3.7 * x**-1.25)
    assert slope == pytest.approx(-1.25, abs=1e-12) and intercept == pytest.approx(np.log(3.7), abs=1e-12)
    assert log_log_fit(np.array([2.0, 2.0, 8.0]), np.array([1.0, 3.0, 9.0]))[0] == pytest.approx(
        np.log(9.0 / np.sqrt(3.0)) / np.log(4.0))  # repeated x: the line through the mean log y at each x
    for x, y, text in ((x, -x, "positive"), (np.ones(3), np.ones(3), "two distinct x"), (x[:2], x, "equal length")):
        with pytest.raises(ConfigError, match=text):
            log_log_fit(x, y)


def test_km_quantile_refuses_nan_times():
    """A NaN time is not a censored run (NaN >= 0 is False): it is refused instead of read as 'never'."""
    with pytest.raises(ConfigError, match="times must not hold NaN"):
        km_quantile(np.array([1.0, np.nan, 3.0]), 0.5)


def test_bootstrap_scaling_predicts_a_larger_size_with_an_interval():
    """Exact power law tau = 3 d^1.5: the prediction at d = 256 is 3 * 256^1.5 (a point interval); with spread
    runs the interval covers the law's median there and widens."""
    exact = {d: np.full(5, 3.0 * d**1.5) for d in (16, 32, 64)}
    fit = bootstrap_scaling(exact, n_boot=50, predict=[256])
    size, value, lo, hi = fit.predictions[0]
    assert size == 256 and value == pytest.approx(3 * 256**1.5, rel=1e-9)
    assert lo == pytest.approx(value, rel=1e-9) and hi == pytest.approx(value, rel=1e-9)
    rng = np.random.default_rng(0)
    spread = {d: 3.0 * d**1.5 * rng.lognormal(0.0, 0.3, size=41) for d in (16, 32, 64)}
    fit = bootstrap_scaling(spread, n_boot=300, predict=[256])
    _, value, lo, hi = fit.predictions[0]
    assert lo < 3 * 256**1.5 < hi and lo < value < hi and hi / lo > 1.1
