"""Divergence of a training run: the error both training loops raise, the online-SGD rule and its checks.

The rule for online SGD (every engine, :mod:`easyhard.train.online`; issue 14), stated once here:

    A run stops with :class:`DivergenceError` at the first record point at which, for some member,
    (a) an overlap or the mean sample loss since the previous record is not finite, or
    (b) the peak weight norm is not finite or exceeds ``WEIGHT_NORM_BOUND`` = 2**24.

The peak weight norm of a member is the largest norm that any of its weight vectors has had after any
step so far, taken *before* normalisation: for spherical SGD the norm ||w_k - eta g_perp|| of the step
that is then projected back onto the sphere (= sqrt(1 + eta^2 ||g_perp||^2) for a unit w_k), for plain SGD
||w_k|| itself, and, for an untied second layer (always plain steps), ||o_k||. Engines track it at every
step on their own state (one max per step and member, no host synchronisation) and the driver reads it at
record points only, so a blow-up that a later normalisation hides (spherical SGD keeps ||w_k|| = 1) is
still seen, and a run that returns has satisfied the rule at every step.

Why 2**24: weights start at unit norm (``Committee.init``). A step that makes a weight vector 2**24 times
longer than a unit vector keeps less than one float32 ulp of the current weights (float32 has a 24-bit
significand), so the iteration has forgotten its state: no converging run reaches it (a converging run
rotates w_k by a small angle per step, eta ||g_perp|| << 1). The bound is the same for float32 and float64
runs and for all engines, and it lies far below float32 overflow (3.4e38): a norm that overflows to inf or
NaN in any precision is outside the rule too, so every engine stops at the same extreme step sizes.
Overlaps are cosines (|alpha| <= 1) and the sample loss is a function of the data and the weights, so
neither can explode while the weights stay bounded; they need only the finiteness check (a).
"""

from __future__ import annotations

import math

import numpy as np

#: largest norm a weight vector may reach before (or without) normalisation; see the module docstring
WEIGHT_NORM_BOUND = 2.0**24


class DivergenceError(RuntimeError):
    """A run produced non-finite weights or loss, or exploding weights; the message names the step (and members)."""


def diverged_members(overlaps: np.ndarray, loss: np.ndarray, peak: np.ndarray) -> np.ndarray:
    """The online-SGD divergence rule: a boolean mask (E,) of the members outside it.

    overlaps (E, K, 3); loss (E,) mean sample loss since the previous record; peak (E,) peak weight norm
    before normalisation. A member is outside the rule if an overlap or its loss is not finite, or its
    peak is not finite or exceeds :data:`WEIGHT_NORM_BOUND`.
    """
    finite = np.isfinite(overlaps).all(axis=(1, 2)) & np.isfinite(loss)
    return ~(finite & (peak <= WEIGHT_NORM_BOUND))  # NaN <= bound is False


def check_members(overlaps: np.ndarray, loss: np.ndarray, peak: np.ndarray, step: int) -> None:
    """Raise :class:`DivergenceError` naming the members outside the rule (:func:`diverged_members`) at ``step``."""
    bad = diverged_members(overlaps, loss, peak)
    if bad.any():
        members = np.flatnonzero(bad)
        raise DivergenceError(f"SGD diverged (non-finite weights, loss or overlaps, or a weight norm above "
                              f"{WEIGHT_NORM_BOUND:.3g}) by step {step} in members "
                              f"{members[:8].tolist()}{' ...' if len(members) > 8 else ''}; lower delta")


def check_loss(mean_loss: float, step: int) -> None:
    """Raise :class:`DivergenceError` if the mean training loss up to ``step`` is not finite."""
    if not math.isfinite(mean_loss):
        raise DivergenceError(f"training diverged (non-finite loss) by step {step}; lower lr")
