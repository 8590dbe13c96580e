"""Generalisation diagnostics of a denoiser per noise level, and the timescales of training curves
(docs/theory/generalization.md sections 3 and 7).

Plug-in functions: a model enters as any :class:`~easyhard.diffusion.Denoiser` (read in eps space at
``NoiseLevel.at_index(schedule, i)``, i an int index of a :class:`~easyhard.diffusion.DDPMSchedule`), or as a
plain callable ``predict_eps(x_t, i) -> eps_hat`` (x_t shaped like the data), so any network can be measured.

- Train-minus-test loss gap per level: Delta(i) = L_test(i) - L_train(i), with the eps-loss of
  :func:`easyhard.metrics.eps_loss_per_level` and the noise fixed per (point, level) across checkpoints.
- Distance to the empirical-optimal (memorising) denoiser D_emp of the training set
  (docs/theory/mcm.md section 3.4; Yi et al. 2023): E||D_theta - D_emp||^2 / E||D_emp||^2 per level, in x0 space,
  D_theta = (x_t - s eps_hat) / a.
- Timescales of a curve recorded at checkpoint steps: the first crossing of a level (onset of the
  memorisation fraction, tau_mem) and the first checkpoint within a tolerance of the best value (tau_gen).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from easyhard._validate import ConfigError, check_int_at_least, check_nonnegative
from easyhard.diffusion.ddpm import DDPMSchedule
from easyhard.diffusion.denoiser import NoiseLevel, as_denoiser, predict_eps as _eps
from easyhard.metrics.images import EpsPredictor, eps_loss_per_level, fixed_noise
from easyhard.metrics.scaling import log_log_fit
from easyhard.oracles.empirical import empirical_denoiser


def loss_gap_per_level(predict_eps: EpsPredictor, train: Tensor, test: Tensor, schedule: DDPMSchedule,
                       indices: Sequence[int], seed: int = 0) -> dict[str, Tensor]:
    """{"train", "test", "gap"}: per-level eps-losses L(i) = E (1/d)||eps_hat(x_i, i) - eps||^2 on the
    training and the test set (fixed noise, :func:`~easyhard.metrics.fixed_noise`) and Delta = test - train,
    each float64 (len(indices),)."""
    train_loss = eps_loss_per_level(predict_eps, train, schedule, indices, seed)
    test_loss = eps_loss_per_level(predict_eps, test, schedule, indices, seed + 1)
    return {"train": train_loss, "test": test_loss, "gap": test_loss - train_loss}


def denoiser_distance(estimate: Tensor, reference: Tensor) -> Tensor:
    """E||D_theta - D_ref||^2 / E||D_ref||^2 over the last two axes (points, features): the relative squared
    distance of a denoiser's outputs to a reference denoiser's on the same inputs, (..., n, d) -> float64 (...).
    Leading axes (ensemble members, noise levels) are kept and broadcast, e.g. estimates (E, L, n, d) of E
    models against a shared reference (L, n, d) give (E, L)."""
    if estimate.ndim < 2 or estimate.shape[-2:] != reference.shape[-2:]:
        raise ConfigError(f"estimate and reference must end in the same (n, d) (got {tuple(estimate.shape)} and "
                          f"{tuple(reference.shape)})")
    est, ref = estimate.to(torch.float64), reference.to(torch.float64)
    return ((est - ref) ** 2).sum((-2, -1)) / (ref**2).sum((-2, -1)).clamp_min(1e-300)


@torch.no_grad()
def empirical_distance_per_level(predict_eps: EpsPredictor, train: Tensor, x0: Tensor, schedule: DDPMSchedule,
                                 indices: Sequence[int], seed: int = 0) -> Tensor:
    """E||D_theta(x_i) - D_emp(x_i)||^2 / E||D_emp(x_i)||^2 per level, float64 (len(indices),).

    x_i = a x0 + s eps with eps fixed per (point, level); D_emp is the empirical-optimal denoiser of
    ``train`` (:func:`~easyhard.oracles.empirical_denoiser`); D_theta = (x_i - s eps_hat) / a; the distance of
    each level is :func:`denoiser_distance`. A model that has memorised its training set has distance 0 at
    every level.
    """
    flat = x0.reshape(len(x0), -1).to(torch.float64)
    train_flat = train.reshape(len(train), -1).to(torch.float64)
    if flat.shape[1] != train_flat.shape[1]:
        raise ConfigError(f"x0 and train must have the same dimension (got {flat.shape[1]} and {train_flat.shape[1]})")
    denoiser = as_denoiser(predict_eps)
    out = []
    for i in indices:
        level = NoiseLevel.at_index(schedule, int(i))
        a, s = level.a, level.s
        x_t = a * flat + s * fixed_noise(*flat.shape, int(i), seed)
        eps_hat = _eps(denoiser, x_t.to(x0.dtype).reshape(x0.shape), level).reshape(flat.shape).to(torch.float64)
        model_x0 = (x_t - s * eps_hat) / a
        emp = empirical_denoiser(x_t, train_flat, a, s)
        out.append(float(denoiser_distance(model_x0, emp)))
    return torch.tensor(out, dtype=torch.float64)


def _curve(steps: Sequence[int], values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    steps, values = np.asarray(steps), np.asarray(values, dtype=float)
    if steps.ndim != 1 or len(steps) == 0 or values.shape[-1] != len(steps):
        raise ConfigError(f"values must have a last axis of length len(steps) = {len(steps)} (got {values.shape})")
    if (np.diff(steps) <= 0).any():
        raise ConfigError("steps must be strictly increasing")
    return steps, values


def first_crossing(steps: Sequence[int], values: np.ndarray, level: float) -> np.ndarray:
    """The first step at which values >= level, per curve (values (..., C) over C checkpoints); -1 where
    the level is never reached (a right-censored time). This is tau_mem for the memorisation fraction."""
    steps, values = _curve(steps, values)
    hit = values >= level
    first = np.argmax(hit, axis=-1)
    return np.where(hit.any(-1), steps[first], -1)


def first_near_best(steps: Sequence[int], values: np.ndarray, tolerance: float, lower_is_better: bool = True
                    ) -> np.ndarray:
    """The first step whose value is within ``tolerance`` of the curve's best, per curve (values (..., C)):
    min{tau : v(tau) <= min v + tolerance} (or >= max v - tolerance). This is tau_gen for a quality
    measure such as a divergence to the data law."""
    check_nonnegative("tolerance", tolerance)
    steps, values = _curve(steps, values)
    sign = 1.0 if lower_is_better else -1.0
    v = sign * values
    best = np.nanmin(v, axis=-1, keepdims=True)
    return steps[np.argmax(v <= best + tolerance, axis=-1)]


def extremum_step(steps: Sequence[int], values: np.ndarray, maximum: bool = False,
                  eligible: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(positions, steps) of the minimum (or maximum) of each curve (values (..., C)), among ``eligible``
    checkpoints (bool, broadcastable; default all). Ties go to the earliest checkpoint."""
    steps, values = _curve(steps, values)
    v = -values if maximum else values.copy()
    if eligible is not None:
        v = np.where(eligible, v, np.inf)
    pos = np.argmin(v, axis=-1)
    return pos, steps[pos]


def log_slope(ns: Sequence[float], taus: np.ndarray) -> float:
    """Least-squares slope gamma of log tau = c + gamma log n over all finite positive (n, tau) pairs
    (:func:`~easyhard.metrics.log_log_fit`); taus (len(ns), r) holds r replicate times per n."""
    ns = np.asarray(ns, dtype=float)
    taus = np.asarray(taus, dtype=float)
    x = np.broadcast_to(ns[:, None], taus.shape)
    ok = np.isfinite(taus) & (taus > 0)
    check_int_at_least("number of distinct n with finite times", len(np.unique(x[ok])), 2)
    return log_log_fit(x[ok], taus[ok])[0]
