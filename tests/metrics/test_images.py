"""Metrics of the image simplicity-bias protocols (docs/theory/images.md sections 2, 4, 5, 6, 9)."""

import functools
import math

import numpy as np
import pytest
import torch

from easyhard._validate import ConfigError
from easyhard.data.images import embedded_patches, gaussian_clone
from easyhard.diffusion.ddpm import DDPMSchedule
from easyhard.diffusion import CoefficientDenoiser, NoiseLevel, predict_eps
from easyhard.metrics import images as M
from easyhard.oracles.wiener import WienerDenoiser

SCHEDULE = DDPMSchedule()
INDICES = [10, 100, 500]


def _gaussian(n, d, seed):
    """Gaussian data with a known mean and an anisotropic covariance: (x (n, d), mean, cov)."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, dtype=torch.float64, generator=g))
    lam = torch.logspace(0, -3, d, dtype=torch.float64)
    mean = 0.3 * torch.randn(d, dtype=torch.float64, generator=g)
    cov = (q * lam) @ q.T
    x = mean + (torch.randn(n, d, dtype=torch.float64, generator=g) * lam.sqrt()) @ q.T
    return x, mean, 0.5 * (cov + cov.T), lam


# ----------------------------------------------------------------------------- section 2.2 / 4
def test_gaussian_mmse_matches_monte_carlo_and_wiener_convention():
    x, mean, cov, lam = _gaussian(20000, 12, 0)
    wiener = WienerDenoiser(mean, cov, ridge_factor=0)
    abar = SCHEDULE.alphas_bar[INDICES]
    closed = M.gaussian_mmse_eps(lam, abar)
    mc = M.eps_loss_per_level(CoefficientDenoiser(wiener), x.view(-1, 3, 4), SCHEDULE, INDICES)
    torch.testing.assert_close(mc, closed, rtol=0.03, atol=0)
    # WienerDenoiser.mmse_eps sums over modes; L_G is the per-pixel mean
    for i, value in zip(INDICES, closed):
        a, s = SCHEDULE.coefficients(i)
        assert float(wiener.mmse_eps(a, s)) / 12 == pytest.approx(float(value), rel=1e-10)
    assert isinstance(M.gaussian_mmse_eps(lam, 0.5), float)
    with pytest.raises(ConfigError):
        M.gaussian_mmse_eps(lam, 1.0)


def test_fixed_noise_is_common_across_calls_and_distinct_across_levels():
    a, b = M.fixed_noise(64, 5, 10, seed=3), M.fixed_noise(64, 5, 10, seed=3)
    assert torch.equal(a, b)
    assert not torch.allclose(a, M.fixed_noise(64, 5, 11, seed=3))
    assert not torch.allclose(a, M.fixed_noise(64, 5, 10, seed=4))
    x, mean, cov, _ = _gaussian(500, 6, 1)
    predictor = CoefficientDenoiser(WienerDenoiser(mean, cov))
    first = M.eps_loss_per_level(predictor, x, SCHEDULE, INDICES, seed=7, batch_size=128)
    assert torch.equal(first, M.eps_loss_per_level(predictor, x, SCHEDULE, INDICES, seed=7, batch_size=128))
    # batching changes only the summation order
    torch.testing.assert_close(first, M.eps_loss_per_level(predictor, x, SCHEDULE, INDICES, seed=7),
                               rtol=1e-12, atol=0)


def test_wiener_distance_zero_for_wiener_and_closed_form_for_scaled_predictor():
    # Gaussian data: eps_hat_G = E[eps | x_t], E||eps_hat_G||^2 / d = 1 - L_G, so c * eps_hat_G has
    # delta_W = (c - 1)^2 (1 - L_G) / L_G.
    x, mean, cov, lam = _gaussian(20000, 10, 2)
    wiener = CoefficientDenoiser(WienerDenoiser(mean, cov, ridge_factor=0))
    zero = M.wiener_distance(wiener, wiener, x, SCHEDULE, INDICES)
    assert float(zero.abs().max()) == 0.0
    c = 1.3
    delta = M.wiener_distance(lambda xt, i: c * predict_eps(wiener, xt, NoiseLevel.at_index(SCHEDULE, i)), wiener,
                              x, SCHEDULE, INDICES)
    lg = M.gaussian_mmse_eps(lam, SCHEDULE.alphas_bar[INDICES])
    torch.testing.assert_close(delta, (c - 1) ** 2 * (1 - lg) / lg, rtol=0.04, atol=0)


def test_wiener_distance_of_bayes_denoiser_is_one_minus_loss_ratio():
    # Rademacher pixels: mean 0, covariance I, Bayes x0_hat = tanh(a x_t / s^2); Wiener x0_hat = a x_t.
    g = torch.Generator().manual_seed(5)
    x = torch.randint(0, 2, (20000, 8), generator=g).double() * 2 - 1
    wiener = CoefficientDenoiser(WienerDenoiser(torch.zeros(8, dtype=torch.float64),
                                                torch.eye(8, dtype=torch.float64), ridge_factor=0))

    def bayes(xt, i):
        a, s = SCHEDULE.coefficients(i)
        return (xt - a * torch.tanh(a * xt / s**2)) / s

    indices = [60, 80, 100]
    loss_star = M.eps_loss_per_level(bayes, x, SCHEDULE, indices)
    loss_g = M.eps_loss_per_level(wiener, x, SCHEDULE, indices)
    torch.testing.assert_close(loss_g, M.gaussian_mmse_eps(torch.ones(8), SCHEDULE.alphas_bar[indices]),
                               rtol=0.03, atol=0)
    delta = M.wiener_distance(bayes, wiener, x, SCHEDULE, indices)
    assert (delta > 0.03).all()  # the binary prior is far from Gaussian at these levels
    torch.testing.assert_close(delta, 1 - loss_star / loss_g, rtol=0.05, atol=0.005)


# ----------------------------------------------------------------------------- section 5
def test_sample_statistics_zero_for_identical_sets_and_sampling_error_for_halves():
    x, mean, cov, lam = _gaussian(40000, 16, 3)
    ref = M.moments(x)
    assert M.covariance_error(x, ref) == pytest.approx(0, abs=1e-12)
    assert M.mean_error(x, x) == pytest.approx(0, abs=1e-12)
    torch.testing.assert_close(M.mode_variance_ratios(x, ref), torch.ones(16, dtype=torch.float64))
    torch.testing.assert_close(M.mode_variances(x, ref), ref.eigenvalues)
    a, b = x[:20000], x[20000:]
    half = M.covariance_error(a, b)
    # E||S_a - S_b||_F^2 = 2 (tr(C)^2 + tr(C^2)) / n for Gaussian samples of size n
    expected = math.sqrt(2 * (float(lam.sum()) ** 2 + float((lam**2).sum())) / 20000) / float(lam.norm())
    assert 0.6 * expected < half < 1.5 * expected
    assert M.whitened_mode_error(a, b) < 0.05
    # a scaled copy: every mode variance ratio is 4, E_Sigma = 3, e_mu unchanged by centring
    scaled = 2 * (x - ref.mean) + ref.mean
    torch.testing.assert_close(M.mode_variance_ratios(scaled, ref), torch.full((16,), 4.0, dtype=torch.float64))
    assert M.covariance_error(scaled, ref) == pytest.approx(3.0)
    assert M.whitened_mode_error(scaled, ref) == pytest.approx(3.0)
    shifted = x + 0.1 * ref.eigenvectors[:, 0]
    assert M.mean_error(shifted, ref) == pytest.approx(0.1 / math.sqrt(float(torch.trace(ref.cov))), rel=1e-9)
    with pytest.raises(ConfigError):
        M.covariance_error(x[:, :5], ref)


# ----------------------------------------------------------------------------- sections 2.3, 9
def test_sparsity_ratio_of_gaussian_samples_is_sqrt_two_over_pi_for_any_filters():
    x, mean, cov, _ = _gaussian(50000, 12, 4)
    filters = torch.randn(7, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    r = M.sparsity_ratio(x, filters, mean)
    torch.testing.assert_close(r, torch.full((7,), M.GAUSSIAN_SPARSITY, dtype=torch.float64), rtol=0, atol=0.01)
    assert float(M.excess_kurtosis(x, filters, mean).abs().max()) < 0.15


def test_ica_filters_are_deterministic_for_a_seed():
    patches = embedded_patches("train", n=3000, seed=1)
    first = M.ica_filters(patches, n_components=16, seed=0, max_iter=200)
    assert first.shape == (16, 64) and first.dtype == torch.float64
    assert torch.equal(first, M.ica_filters(patches, n_components=16, seed=0, max_iter=200))
    with pytest.raises(ConfigError):
        M.ica_filters(patches, n_components=65)


@pytest.fixture(scope="module")
def patch_sets():
    """ICA filters fitted on 8000 training patches; a 8192-patch reference; two disjoint 4096 real sets; a clone."""
    train = embedded_patches("train", n=30000, seed=0)
    filters = M.ica_filters(train[:8000], n_components=64, seed=0)
    ref, a = train[10000:18192], train[18192:22288]
    clone = gaussian_clone(train[10000:], n=4096, generator=torch.Generator().manual_seed(0))
    return filters, M.moments(ref).mean, ref, a, clone


def test_sparsity_error_separates_clone_from_real_patches(patch_sets):
    filters, mu, ref, real, clone = patch_sets
    assert float(M.sparsity_ratio(ref, filters, mu).mean()) < 0.6  # strongly sparse data
    clone_error = M.sparsity_error(clone, ref, filters, mu)
    floor = M.sampling_floor(functools.partial(M.sparsity_error, filters=filters, mu=mu), real, ref)
    assert abs(clone_error - 1) < 0.1
    assert floor < 0.1
    assert M.kurtosis_error(clone, ref, filters, mu) == pytest.approx(1, abs=0.1)
    assert M.covariance_error(clone, ref) < 0.1


# ----------------------------------------------------------------------------- sections 5, 9: convergence
@pytest.mark.parametrize("tau", [30.0, 300.0, 2000.0])
def test_convergence_step_of_exponential_decay_is_tau_ln10(tau):
    steps = np.concatenate([[0.0], np.logspace(1, 5, 41)])  # 10 per decade to 1e5
    values = 0.2 + 3.0 * np.exp(-steps / tau)
    hit = M.convergence_step(steps, values)
    above = steps[steps >= tau * math.log(10) * (1 - 1e-9)]
    assert hit == above[0]


def test_convergence_step_none_without_decrease_and_validation():
    steps = np.arange(6.0)
    assert M.convergence_step(steps, np.ones(6)) is None
    assert M.convergence_step(steps, [5, 1, 1, 1, 1, 1]) == 1.0
    with pytest.raises(ConfigError):
        M.convergence_step(steps, np.ones(5))
    with pytest.raises(ConfigError):
        M.convergence_step(steps[::-1], np.ones(6))


# ----------------------------------------------------------------------------- section 6: emergence
def _relaxation(steps, lam, v0, c):
    """v_k(tau) = lambda_k + (v0_k - lambda_k) exp(-c lambda_k tau): (n_ckpt, K)."""
    return lam + (v0 - lam) * np.exp(-c * np.outer(steps, lam))


def test_emergence_steps_match_closed_form_and_inverse_variance_law():
    # v0 = rho lambda: H is reached when exp(-c lambda tau) = 1 / (1 + rho), tau = ln(1 + rho) / (c lambda)
    lam = np.logspace(0, -2.5, 40)
    rho = np.where(np.arange(40) % 2 == 0, 0.1, 5.0)  # modes approached from below and from above
    c = 1e-2
    steps = np.concatenate([[0.0], np.logspace(0, 7, 141)])  # 20 per decade
    tau, crossed = M.emergence_steps(steps, _relaxation(steps, lam, rho * lam, c), lam)
    assert crossed.all()
    np.testing.assert_allclose(tau, np.log1p(rho) / (c * lam), rtol=0.02)
    # with the same rho for every mode, tau is exactly proportional to 1 / lambda
    tau, _ = M.emergence_steps(steps, _relaxation(steps, lam, 0.1 * lam, c), lam)
    fit = M.emergence_law(tau, lam, n_boot=200, seed=0)
    assert fit.interval[0] - 0.005 <= 1.0 <= fit.interval[1] + 0.005
    assert fit.beta == pytest.approx(1.0, abs=0.01)
    assert (fit.n_eligible, fit.n_used, fit.n_censored) == (40, 40, 0)


def test_emergence_censors_modes_that_never_cross():
    lam = np.logspace(0, -3, 20)
    steps = np.concatenate([[0.0], np.logspace(0, 3, 31)])
    curves = _relaxation(steps, lam, 0.1 * lam, 1e-2)  # tau_k = 9.5 / lambda_k: lambda < 9.5e-3 not reached
    tau, crossed = M.emergence_steps(steps, curves, lam)
    late = np.log1p(0.1) / (1e-2 * lam) > steps[-1]
    assert late.any() and (~late).sum() >= 3
    np.testing.assert_array_equal(crossed, ~late)
    assert np.isnan(tau[late]).all() and np.isfinite(tau[~late]).all()
    fit = M.emergence_law(tau, lam, n_boot=100, rel_cutoff=0.0)
    assert fit.n_censored == int(late.sum()) and fit.n_used == int((~late).sum())
    assert fit.n_eligible == 20


def test_emergence_law_bootstrap_interval_covers_noisy_beta():
    rng = np.random.default_rng(0)
    lam = np.logspace(0, -2.5, 200)
    tau = 50.0 / lam * np.exp(0.3 * rng.standard_normal(200))
    tau[::17] = np.nan
    fit = M.emergence_law(tau, lam, n_boot=500, seed=1)
    assert fit.interval[0] < 1.0 < fit.interval[1]
    assert fit.interval[1] - fit.interval[0] < 0.2
    assert fit.n_censored == 12
    # the cut-offs: only lambda > 1e-3 lambda_1 and at most the top max_modes enter
    lam_wide = np.logspace(0, -4, 200)
    fit = M.emergence_law(50.0 / lam_wide, lam_wide, n_boot=50, max_modes=100)
    assert fit.n_eligible == 100 and fit.beta == pytest.approx(1.0)
    fit = M.emergence_law(50.0 / lam_wide, lam_wide, n_boot=50)
    assert fit.n_eligible == int((lam_wide > 1e-3).sum())


def test_eps_loss_closed_form_member_axis_and_the_per_level_loss():
    """(eps + c) against eps has loss c^2; E models (E, L, n, d) against shared noise (L, n, d) give (E, L); and
    eps_loss_per_level of a predictor is eps_loss of its predictions on the fixed noise."""
    eps = torch.randn(3, 50, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    shift = torch.tensor([0.0, 0.5, 2.0], dtype=torch.float64)[:, None, None, None]
    loss = M.eps_loss(eps + shift, eps)
    assert loss.shape == (3, 3)
    torch.testing.assert_close(loss, (shift[:, 0, 0, 0] ** 2)[:, None].expand(3, 3))
    with pytest.raises(ConfigError, match="same"):
        M.eps_loss(eps, eps[:, :10])
    schedule = DDPMSchedule()
    x0 = torch.randn(40, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    levels = [5, 400]
    per_level = M.eps_loss_per_level(lambda x, i: 0.5 * x, x0, schedule, levels, seed=3)
    per_point = M.eps_loss_per_point(lambda x, i: 0.5 * x, x0, schedule, levels, seed=3, batch_size=7)
    assert per_point.shape == (2, 40) and per_point.dtype == torch.float64
    for j, i in enumerate(levels):
        a, s = schedule.coefficients(i)
        noise = M.fixed_noise(40, 4, i, 3)
        pred = 0.5 * (a * x0 + s * noise)
        assert float(per_level[j]) == pytest.approx(float(M.eps_loss(pred, noise)), rel=1e-14)
        torch.testing.assert_close(per_point[j], ((pred - noise) ** 2).mean(1), rtol=1e-14, atol=0)
