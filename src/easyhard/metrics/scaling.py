"""Censored recovery times and sample-complexity exponents (issue 5, items 3 and 6).

Recovery times are right-censored: a run that has not recovered within its budget only tells us
tau > budget. Medians are therefore Kaplan-Meier medians, never means. The scaling law

    tau_med(d) = C d^kappa            (or C d^kappa log d with ``log_factor``)

is fitted by least squares on log tau_med against log d (:func:`log_log_fit`, the power-law fit of every
metric), and its uncertainty by a percentile bootstrap over runs (:mod:`easyhard.metrics.bootstrap`: runs
resampled with replacement within each d, medians and fit recomputed).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from easyhard._validate import ConfigError, check_int_at_least
from easyhard.metrics.bootstrap import bootstrap_replicates, check_level, percentile_interval


def km_quantile(times: np.ndarray, q: float, observed: np.ndarray | None = None) -> float:
    """Kaplan-Meier q-quantile of right-censored times: the smallest t with 1 - S(t) >= q (inf if never).

    times (n,); observed (n,) bool, False for a run censored at its time. By default a negative
    time means "never recovered" and is censored at +inf. Without censoring this is the
    ceil(q n)-th order statistic (q = 1/2: the lower median).
    """
    if not 0 < q < 1:
        raise ConfigError(f"q must lie in (0, 1) (got {q})")
    times = np.asarray(times, dtype=float)
    if np.isnan(times).any():
        raise ConfigError("times must not hold NaN (a recovery time is a step, or negative for 'never')")
    if observed is None:
        observed = times >= 0
        times = np.where(observed, times, np.inf)
    observed = np.asarray(observed, dtype=bool)
    if times.size == 0:
        raise ConfigError("times must hold at least one run")
    order = np.lexsort((~observed, times))  # at equal times, events before censorings
    t, ev = times[order], observed[order]
    at_risk = t.size - np.arange(t.size)
    survival = np.cumprod(np.where(ev, 1.0 - 1.0 / at_risk, 1.0))
    below = np.flatnonzero(ev & (survival <= 1 - q + 1e-12))
    return float(t[below[0]]) if below.size else float("inf")


def km_median(times: np.ndarray, observed: np.ndarray | None = None) -> float:
    """Kaplan-Meier median (:func:`km_quantile` at q = 1/2)."""
    return km_quantile(times, 0.5, observed)


def log_log_fit(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(slope, intercept) of the least-squares line log y = intercept + slope log x (``numpy.polyfit`` of
    degree 1 on the logs): the one power-law fit y = e^intercept x^slope of easyhard.metrics.

    x, y (n,) finite and > 0, with at least two distinct x.
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ConfigError(f"x and y must be 1-d of equal length (got {x.shape} and {y.shape})")
    if not (np.isfinite(x).all() and np.isfinite(y).all() and (x > 0).all() and (y > 0).all()):
        raise ConfigError("a log-log fit needs finite positive x and y")
    if len(np.unique(x)) < 2:
        raise ConfigError(f"a log-log fit needs at least two distinct x (got {len(np.unique(x))})")
    slope, intercept = np.polyfit(np.log(x), np.log(y), 1)
    return float(slope), float(intercept)


def fit_power_law(ds: np.ndarray, medians: np.ndarray, log_factor: bool = False) -> tuple[float, float]:
    """(kappa, C) of tau = C d^kappa [log d] by least squares on logs (:func:`log_log_fit` of tau [/ log d]
    against d); needs >= 2 finite medians."""
    ds, medians = np.asarray(ds, dtype=float), np.asarray(medians, dtype=float)
    if ds.size < 2 or not np.isfinite(medians).all() or (medians <= 0).any():
        raise ConfigError("fit_power_law needs at least two dimensions with finite positive medians")
    kappa, log_c = log_log_fit(ds, medians / np.log(ds) if log_factor else medians)
    return kappa, float(np.exp(log_c))


@dataclass(frozen=True)
class ScalingFit:
    """A fitted exponent with its bootstrap interval.

    medians and median intervals are per d (same order as ``dims``); ``failed`` counts bootstrap
    replicates in which some median was not reached (dropped from the interval). ``predictions``: for each size
    asked for, (size, C size^kappa [log size], lower, upper) with the percentile interval of the bootstrap fits'
    predictions.
    """

    dims: tuple[int, ...]
    medians: tuple[float, ...]
    median_intervals: tuple[tuple[float, float], ...]
    recovered_fraction: tuple[float, ...]
    kappa: float
    prefactor: float
    interval: tuple[float, float]
    log_factor: bool
    n_boot: int
    failed: int
    predictions: tuple[tuple[float, float, float, float], ...] = ()

    def predict(self, d) -> np.ndarray:
        d = np.asarray(d, dtype=float)
        return self.prefactor * d**self.kappa * (np.log(d) if self.log_factor else 1.0)

    def to_dict(self) -> dict:
        return asdict(self)


def bootstrap_scaling(times_by_d: Mapping[int, np.ndarray], log_factor: bool = False, n_boot: int = 1000,
                      level: float = 0.95, seed: int = 0, predict: Sequence[float] = ()) -> ScalingFit:
    """Fit tau_med(d) = C d^kappa [log d] to censored recovery times with a bootstrap interval over runs.

    times_by_d: {d: (n_d,) recovery steps, -1 for runs that never recovered}. ``predict``: sizes at which to
    extrapolate tau_med, each with the percentile interval of the bootstrap fits' predictions (with one run per
    size the runs cannot be resampled and the interval is the point).
    """
    check_int_at_least("n_boot", n_boot, 10)
    check_level(level)
    dims = tuple(sorted(int(d) for d in times_by_d))
    samples = [np.asarray(times_by_d[d], dtype=float) for d in dims]
    medians = np.array([km_median(s) for s in samples])
    if not np.isfinite(medians).all():
        missing = [d for d, m in zip(dims, medians) if not np.isfinite(m)]
        raise ConfigError(f"fewer than half of the runs reached their event (recovery, onset) at size = {missing}: "
                          "raise the step budget")
    kappa, prefactor = fit_power_law(np.array(dims), medians, log_factor)
    boot_medians = bootstrap_replicates(lambda *idx: [km_median(s[i]) for s, i in zip(samples, idx)],
                             [s.size for s in samples], n_boot, seed)  # (n_boot, n_dims), runs resampled per d
    ok = np.isfinite(boot_medians).all(1)
    fits = np.array([fit_power_law(np.array(dims), m, log_factor) for m in boot_medians[ok]]).reshape(-1, 2)
    interval = tuple(float(x) for x in percentile_interval(fits[:, 0], level))
    predictions = []
    for size in predict:
        factor = np.log(size) if log_factor else 1.0
        boot = fits[:, 1] * float(size) ** fits[:, 0] * factor
        lo, hi = percentile_interval(boot, level)
        predictions.append((float(size), float(prefactor * float(size) ** kappa * factor), float(lo), float(hi)))
    med_int = tuple(tuple(float(x) for x in col) for col in percentile_interval(boot_medians[ok], level).T)
    frac = tuple(float((s >= 0).mean()) for s in samples)
    return ScalingFit(dims, tuple(float(m) for m in medians), med_int, frac, kappa, prefactor, interval, log_factor,
                      n_boot, int((~ok).sum()), tuple(predictions))
