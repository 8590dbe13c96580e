"""Per-level generalisation diagnostics and curve timescales."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from easyhard._validate import ConfigError
from easyhard.diffusion import DDPMSchedule
from easyhard.diffusion.parametrization import x0_to_eps
from easyhard.metrics.generalization import (
    denoiser_distance, empirical_distance_per_level, extremum_step, first_crossing, first_near_best, log_slope,
    loss_gap_per_level)
from easyhard.oracles.empirical import empirical_denoiser

SCHEDULE = DDPMSchedule()
LEVELS = (20, 150, 600)


def _data(seed, n=40, d=6):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _memorising(train):
    """eps-predictor of the empirical-optimal denoiser of ``train`` (a model that memorised it)."""
    def predict(x_t, i):
        a, s = SCHEDULE.coefficients(i)
        return x0_to_eps(empirical_denoiser(x_t, train, a, s), x_t, a, s)
    return predict


def test_memorising_denoiser_is_at_distance_zero_and_a_constant_one_at_distance_one():
    train, test = _data(0), _data(1)
    dist = empirical_distance_per_level(_memorising(train), train, test, SCHEDULE, LEVELS)
    assert dist.abs().max() < 1e-20
    # predicting x0_hat = 0 (eps_hat = x_t / s) is at relative distance exactly 1
    zero = empirical_distance_per_level(lambda x, i: x / SCHEDULE.coefficients(i)[1], train, test, SCHEDULE, LEVELS)
    torch.testing.assert_close(zero, torch.ones(len(LEVELS), dtype=torch.float64))


def test_memorising_denoiser_has_a_positive_loss_gap_at_intermediate_noise():
    """The empirical denoiser is the training-loss minimiser: train loss below test loss at every level, and the
    gap vanishes at very high noise where it predicts the training mean for every input."""
    train, test = _data(2, n=20), _data(3, n=400)
    gap = loss_gap_per_level(_memorising(train), train, test, SCHEDULE, (30, 200, 999))
    assert (gap["gap"][:2] > 0.05).all() and abs(float(gap["gap"][2])) < 0.05
    torch.testing.assert_close(gap["gap"], gap["test"] - gap["train"])


def test_timescales_of_curves():
    steps = [10, 20, 40, 80, 160]
    values = np.array([[0.0, 0.0, 0.02, 0.3, 0.5], [0.0, 0.0, 0.0, 0.0, 0.005]])
    assert first_crossing(steps, values, 0.01).tolist() == [40, -1]
    kl = np.array([5.0, 1.0, 0.05, 0.0, 2.0])
    assert int(first_near_best(steps, kl, 0.1)) == 40
    assert int(first_near_best(steps, -kl, 0.1, lower_is_better=False)) == 40
    pos, at = extremum_step(steps, np.array([0.9, 0.5, 0.7, 0.8, 0.6]), maximum=True,
                            eligible=np.array([False, True, True, True, True]))
    assert int(pos) == 3 and int(at) == 80
    with pytest.raises(ConfigError, match="increasing"):
        first_crossing([1, 1, 2], np.zeros(3), 0.1)


def test_log_slope_recovers_a_power_law_and_ignores_censored_times():
    ns = [16, 32, 64]
    taus = np.array([[3.0 * n**1.3, 3.0 * n**1.3, -1] for n in ns])
    assert log_slope(ns, taus) == pytest.approx(1.3, abs=1e-12)


def test_denoiser_distance_closed_form_and_member_axis():
    """(1 + c) D_ref is at distance c^2; E estimates (E, L, n, d) against a shared reference (L, n, d) give (E, L)."""
    ref = torch.randn(2, 30, 5, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    scale = torch.tensor([1.0, 0.0, 1.5], dtype=torch.float64)[:, None, None, None]
    dist = denoiser_distance(scale * ref, ref)
    assert dist.shape == (3, 2)
    torch.testing.assert_close(dist, ((scale[:, 0, 0, 0] - 1) ** 2)[:, None].expand(3, 2))
    with pytest.raises(ConfigError, match="same"):
        denoiser_distance(ref, ref[:, :3])
