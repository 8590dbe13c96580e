"""The percentile bootstrap (Efron & Tibshirani 1993, chapter 13): the one resampling scheme behind every
interval of easyhard.metrics and the experiments.

A statistic of n data points, or of G strata of n_1, ..., n_G points resampled independently (e.g. the
runs at each dimension d), is recomputed on B replicates. Each replicate draws its indices uniformly with
replacement from one ``numpy.random.Generator`` seeded by ``seed`` (an int or a sequence of ints, as
``numpy.random.default_rng`` takes them), replicate after replicate and, within a replicate, stratum after
stratum: the random stream is consumed in that order whatever the block size, so the replicates depend only
on (seed, sizes, B). The interval at ``level`` is the pair of percentiles

    q_lo = 50 (1 - level),    q_hi = 100 - q_lo

of the replicates (numpy's linear interpolation).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from easyhard._validate import ConfigError, check_int_at_least

#: resampled indices held at once (int64: 32 MiB)
_BLOCK = 2**22

Seed = int | Sequence[int]


def check_level(level: float) -> float:
    """The confidence level, in (0, 1)."""
    if not 0 < level < 1:
        raise ConfigError(f"level must lie in (0, 1) (got {level})")
    return level


def _draw(rng: np.random.Generator, sizes: list[int], count: int) -> list[np.ndarray]:
    """Indices of ``count`` replicates: one (count, n_g) array per stratum, drawn replicate by replicate."""
    if len(sizes) == 1:  # one draw of count * n values consumes the stream as count draws of n do
        return [rng.integers(0, sizes[0], (count, sizes[0]))]
    draws = [[rng.integers(0, n, n) for n in sizes] for _ in range(count)]
    return [np.stack([row[g] for row in draws]) for g in range(len(sizes))]


def bootstrap_replicates(statistic: Callable[..., object], sizes: int | Sequence[int], n_boot: int = 1000,
                         seed: Seed = 0, vectorized: bool = False) -> np.ndarray:
    """Replicates (n_boot, ...) of ``statistic`` on bootstrap resamples (module docstring).

    sizes: n (one sample) or (n_1, ..., n_G) (strata). ``statistic`` takes one index array per stratum:
    (n_g,) for one replicate, or with ``vectorized`` (B, n_g) for a block of B replicates, returning (B, ...).
    A statistic undefined on some resample should return NaN there (callers drop those replicates).
    """
    n_boot = check_int_at_least("n_boot", n_boot, 1)
    sizes = [sizes] if isinstance(sizes, (int, np.integer)) else list(sizes)
    for n in sizes:
        check_int_at_least("bootstrap sample size", int(n), 1)
    rng = np.random.default_rng(seed)
    block = max(1, _BLOCK // sum(sizes))
    out = []
    for start in range(0, n_boot, block):
        idx = _draw(rng, sizes, min(block, n_boot - start))
        if vectorized:
            out.append(np.asarray(statistic(*idx)))
        else:
            out.append(np.array([statistic(*(i[r] for i in idx)) for r in range(len(idx[0]))]))
    return np.concatenate(out)


def percentile_interval(replicates: np.ndarray, level: float = 0.95) -> np.ndarray:
    """(q_lo, q_hi) percentiles of ``replicates`` along the first axis (module docstring): (2, ...)."""
    tail = 50 * (1 - check_level(level))
    return np.percentile(np.asarray(replicates), [tail, 100 - tail], axis=0)


@dataclass(frozen=True)
class BootstrapMean:
    """A sample mean with its bootstrap: value, the percentile interval, se (the standard deviation of the
    replicates, ddof = 1) and boot_mean (their mean)."""

    value: float
    interval: tuple[float, float]
    se: float
    boot_mean: float

    def to_dict(self) -> dict:
        return asdict(self)


def bootstrap_mean(values: np.ndarray, n_boot: int = 1000, level: float = 0.95, seed: Seed = 0) -> BootstrapMean:
    """Mean of per-sample ``values`` (m,) with the percentile bootstrap over samples (:func:`bootstrap`)."""
    check_level(level)
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or len(values) == 0:
        raise ConfigError(f"values must have shape (m,) with m >= 1 (got {values.shape})")
    boot = bootstrap_replicates(lambda idx: values[idx].mean(1), len(values), n_boot, seed, vectorized=True)
    lo, hi = percentile_interval(boot, level)
    return BootstrapMean(float(values.mean()), (float(lo), float(hi)), float(boot.std(ddof=1)), float(boot.mean()))
