"""Censored recovery times and sample-complexity exponents (issue 5, items 3 and 6).

Recovery times are right-censored: a run that has not recovered within its budget only tells us
tau > budget. Medians are therefore Kaplan-Meier medians, never means. The scaling law

    tau_med(d) = C d^kappa            (or C d^kappa log d with ``log_factor``)

is fitted by least squares on log tau_med against log d, and its uncertainty by a bootstrap over
runs (runs resampled with replacement within each d, medians and fit recomputed).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np

from easyhard._validate import ConfigError, check_int_at_least


def km_quantile(times: np.ndarray, q: float, observed: np.ndarray | None = None) -> float:
    """Kaplan-Meier q-quantile of right-censored times: the smallest t with 1 - S(t) >= q (inf if never).

    times (n,); observed (n,) bool, False for a run censored at its time. By default a negative
    time means "never recovered" and is censored at +inf. Without censoring this is the
    ceil(q n)-th order statistic (q = 1/2: the lower median).
    """
    if not 0 < q < 1:
        raise ConfigError(f"q must lie in (0, 1) (got {q})")
    times = np.asarray(times, dtype=float)
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


def fit_power_law(ds: np.ndarray, medians: np.ndarray, log_factor: bool = False) -> tuple[float, float]:
    """(kappa, C) of tau = C d^kappa [log d] by least squares on logs; needs >= 2 finite medians."""
    ds, medians = np.asarray(ds, dtype=float), np.asarray(medians, dtype=float)
    if ds.size < 2 or not np.isfinite(medians).all() or (medians <= 0).any():
        raise ConfigError("fit_power_law needs at least two dimensions with finite positive medians")
    y = np.log(medians / np.log(ds)) if log_factor else np.log(medians)
    kappa, log_c = np.polyfit(np.log(ds), y, 1)
    return float(kappa), float(np.exp(log_c))


@dataclass(frozen=True)
class ScalingFit:
    """A fitted exponent with its bootstrap interval.

    medians and median intervals are per d (same order as ``dims``); ``failed`` counts bootstrap
    replicates in which some median was not reached (dropped from the interval).
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

    def predict(self, d) -> np.ndarray:
        d = np.asarray(d, dtype=float)
        return self.prefactor * d**self.kappa * (np.log(d) if self.log_factor else 1.0)

    def to_dict(self) -> dict:
        return asdict(self)


def bootstrap_scaling(times_by_d: Mapping[int, np.ndarray], log_factor: bool = False, n_boot: int = 1000,
                      level: float = 0.95, seed: int = 0) -> ScalingFit:
    """Fit tau_med(d) = C d^kappa [log d] to censored recovery times with a bootstrap interval over runs.

    times_by_d: {d: (n_d,) recovery steps, -1 for runs that never recovered}.
    """
    check_int_at_least("n_boot", n_boot, 10)
    if not 0 < level < 1:
        raise ConfigError(f"level must lie in (0, 1) (got {level})")
    dims = tuple(sorted(int(d) for d in times_by_d))
    samples = [np.asarray(times_by_d[d], dtype=float) for d in dims]
    medians = np.array([km_median(s) for s in samples])
    if not np.isfinite(medians).all():
        missing = [d for d, m in zip(dims, medians) if not np.isfinite(m)]
        raise ConfigError(f"fewer than half of the runs reached their event (recovery, onset) at size = {missing}: "
                          "raise the step budget")
    kappa, prefactor = fit_power_law(np.array(dims), medians, log_factor)
    rng = np.random.default_rng(seed)
    boot_medians = np.array([[km_median(s[rng.integers(0, s.size, s.size)]) for s in samples]
                             for _ in range(n_boot)])  # (n_boot, n_dims)
    ok = np.isfinite(boot_medians).all(1)
    slopes = np.array([fit_power_law(np.array(dims), m, log_factor)[0] for m in boot_medians[ok]])
    tail = 50 * (1 - level)
    interval = tuple(float(x) for x in np.percentile(slopes, [tail, 100 - tail]))
    med_int = tuple(tuple(float(x) for x in np.percentile(boot_medians[ok][:, i], [tail, 100 - tail]))
                    for i in range(len(dims)))
    frac = tuple(float((s >= 0).mean()) for s in samples)
    return ScalingFit(dims, tuple(float(m) for m in medians), med_int, frac, kappa, prefactor, interval, log_factor,
                      n_boot, int((~ok).sum()))
