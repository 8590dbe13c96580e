"""Weak-recovery times and aligned fractions of online-SGD runs (docs/theory/mcm.md section 8.1).

A run recovers a direction at n_hit, the first step with |alpha| >= threshold, counted only if
|alpha| >= threshold at >= ``sustain`` (default 80%) of the later logged points: a transient
excursion is not recovery. The aligned fraction over the last 20% of the budget is reported
alongside, as docs/theory/mcm.md section 8.1 asks.
"""

from __future__ import annotations

import numpy as np

from easyhard._validate import ConfigError


def sustained_recovery(first_hit: np.ndarray, log_steps: np.ndarray, abs_overlaps: np.ndarray,
                       threshold: float, sustain: float = 0.8) -> np.ndarray:
    """n_hit where sustained, else -1.

    first_hit (...): first step with |alpha| >= threshold (-1: never); log_steps (L,);
    abs_overlaps (L, ...): |alpha| at the logged steps. A hit with no later logged point counts.
    """
    if abs_overlaps.shape[0] != len(log_steps) or abs_overlaps.shape[1:] != first_hit.shape:
        raise ConfigError(f"abs_overlaps must have shape ({len(log_steps)}, *{first_hit.shape}) "
                          f"(got {abs_overlaps.shape})")
    later = log_steps.reshape((-1,) + (1,) * first_hit.ndim) > first_hit[None]
    above = abs_overlaps >= threshold
    n_later = later.sum(0)
    frac = np.where(n_later > 0, (later & above).sum(0) / np.maximum(n_later, 1), 1.0)
    return np.where((first_hit >= 0) & (frac >= sustain), first_hit, -1)


def aligned_fraction(log_steps: np.ndarray, abs_overlaps: np.ndarray, threshold: float,
                     last: float = 0.2) -> np.ndarray:
    """Fraction of logged points in the last ``last`` of the budget with |alpha| >= threshold: (...)."""
    window = log_steps >= (1 - last) * log_steps[-1]
    return (abs_overlaps[window] >= threshold).mean(0)
