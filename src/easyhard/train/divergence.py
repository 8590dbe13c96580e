"""Divergence of a training run: the error both training loops raise, and their checks."""

from __future__ import annotations

import math

import numpy as np


class DivergenceError(RuntimeError):
    """A run produced non-finite weights or loss; the message names the step (and the members)."""


def check_members(overlaps: np.ndarray, loss: np.ndarray, step: int) -> None:
    """Raise :class:`DivergenceError` naming the members whose overlaps (E, K, 3) or loss (E,) are not finite."""
    bad = ~(np.isfinite(overlaps).all(axis=(1, 2)) & np.isfinite(loss))
    if bad.any():
        members = np.flatnonzero(bad)
        raise DivergenceError(f"SGD diverged (non-finite weights or loss) by step {step} in members "
                              f"{members[:8].tolist()}{' ...' if len(members) > 8 else ''}; lower delta")


def check_loss(mean_loss: float, step: int) -> None:
    """Raise :class:`DivergenceError` if the mean training loss up to ``step`` is not finite."""
    if not math.isfinite(mean_loss):
        raise DivergenceError(f"training diverged (non-finite loss) by step {step}; lower lr")
