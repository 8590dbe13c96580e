import math

import numpy as np
import pytest
import torch

from easyhard import ConfigError
from easyhard.diffusion import ou_coefficients, x0_to_eps
from easyhard.oracles.wiener import WienerDenoiser

D = 6


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _random_spd(d: int, seed: int) -> torch.Tensor:
    A = torch.randn(d, d, generator=_gen(seed), dtype=torch.float64)
    return A @ A.T / d + 0.05 * torch.eye(d, dtype=torch.float64)


def _direct(mu, cov, x_t, a, s):
    """mu + a Sigma (a^2 Sigma + s^2 I)^{-1} (x_t - a mu), via a linear solve."""
    system = a**2 * cov + s**2 * torch.eye(cov.shape[0], dtype=cov.dtype)
    return mu + (a * cov @ torch.linalg.solve(system, (x_t - a * mu).T)).T


def _mean_and_se(values: torch.Tensor) -> tuple[float, float]:
    return values.mean().item(), values.std().item() / math.sqrt(values.numel())


@pytest.fixture
def stats():
    mu = torch.linspace(-1.0, 1.5, D, dtype=torch.float64)
    return mu, _random_spd(D, 0)


@pytest.mark.parametrize("t", [0.02, 0.5, 3.0])
def test_matches_direct_formula(stats, t):
    mu, cov = stats
    a, s = ou_coefficients(t)
    x_t = torch.randn(10, D, generator=_gen(1), dtype=torch.float64)
    torch.testing.assert_close(WienerDenoiser(mu, cov, ridge_factor=0)(x_t, a, s),
                               _direct(mu, cov, x_t, a, s), rtol=1e-10, atol=1e-10)
    ridged = cov + 1e-3 * torch.trace(cov) / D * torch.eye(D, dtype=torch.float64)
    torch.testing.assert_close(WienerDenoiser(mu, cov, ridge_factor=1e-3)(x_t, a, s),
                               _direct(mu, ridged, x_t, a, s), rtol=1e-10, atol=1e-10)


def test_score_matches_gaussian_marginal_score(stats):
    """Gaussian data: x_t ~ N(a mu, a^2 Sigma + s^2 I), score = -(a^2 Sigma + s^2 I)^{-1}(x_t - a mu)."""
    mu, cov = stats
    a, s = ou_coefficients(0.4)
    x_t = torch.randn(7, D, generator=_gen(2), dtype=torch.float64)
    system = a**2 * cov + s**2 * torch.eye(D, dtype=torch.float64)
    exact = -torch.linalg.solve(system, (x_t - a * mu).T).T
    torch.testing.assert_close(WienerDenoiser(mu, cov, 0).score(x_t, a, s), exact, rtol=1e-10, atol=1e-10)


def test_per_sample_coefficients_and_dtypes(stats):
    mu, cov = stats
    den = WienerDenoiser(mu, cov)
    t = torch.tensor([0.01, 0.3, 1.0, 5.0], dtype=torch.float64)
    a, s = ou_coefficients(t)
    x_t = torch.randn(4, D, generator=_gen(3), dtype=torch.float64)
    batched = den(x_t, a, s)
    for b in range(4):
        torch.testing.assert_close(batched[b], den(x_t[b:b + 1], float(a[b]), float(s[b]))[0], rtol=1e-12, atol=1e-12)
    single = den(x_t.float(), a.float(), s.float())
    assert single.dtype == torch.float32
    torch.testing.assert_close(single.double(), batched, rtol=1e-5, atol=1e-5)
    assert den.mmse_x0(a, s).shape == (4,)
    assert float(den.mmse_x0(a, s)[2]) == pytest.approx(float(den.mmse_x0(float(a[2]), float(s[2]))), rel=1e-12)


@pytest.mark.parametrize("t", [0.1, 1.0])
def test_posterior_covariance_closed_forms(stats, t):
    mu, cov = stats
    a, s = ou_coefficients(t)
    den = WienerDenoiser(mu, cov, ridge_factor=0)
    P = den.posterior_covariance(a, s)
    system = a**2 * cov + s**2 * torch.eye(D, dtype=torch.float64)
    torch.testing.assert_close(P, cov - a**2 * cov @ torch.linalg.solve(system, cov), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(P, s**2 * torch.linalg.solve(system, cov), rtol=1e-10, atol=1e-12)
    assert float(torch.trace(P)) == pytest.approx(float(den.mmse_x0(a, s)), rel=1e-12)
    eps_direct = torch.trace(a**2 * torch.linalg.solve(system, cov))
    assert float(den.mmse_eps(a, s)) == pytest.approx(float(eps_direct), rel=1e-12)
    assert float(den.mmse_eps(a, s)) == pytest.approx(a**2 / s**2 * float(den.mmse_x0(a, s)), rel=1e-12)


def test_monte_carlo_gaussian_mmse(stats):
    """Gaussian data: E||D_G - x0||^2 = mmse_x0, E||eps_hat - xi||^2 = mmse_eps and the MSE along a
    unit direction e is e^T P e, each within 4 standard errors (n = 2e5)."""
    mu, cov = stats
    n, (a, s) = 200_000, ou_coefficients(0.5)
    x0 = mu + torch.randn(n, D, generator=_gen(10), dtype=torch.float64) @ torch.linalg.cholesky(cov).T
    xi = torch.randn(n, D, generator=_gen(11), dtype=torch.float64)
    x_t = a * x0 + s * xi
    den = WienerDenoiser(mu, cov, ridge_factor=0)
    x0_hat = den(x_t, a, s)

    mean, se = _mean_and_se(((x0_hat - x0) ** 2).sum(dim=1))
    assert abs(mean - float(den.mmse_x0(a, s))) < 4 * se
    mean, se = _mean_and_se(((x0_to_eps(x0_hat, x_t, a, s) - xi) ** 2).sum(dim=1))
    assert abs(mean - float(den.mmse_eps(a, s))) < 4 * se
    e = torch.randn(D, generator=_gen(12), dtype=torch.float64)
    e = e / e.norm()
    mean, se = _mean_and_se(((x0_hat - x0) @ e) ** 2)
    assert abs(mean - float(e @ den.posterior_covariance(a, s) @ e)) < 4 * se


def test_best_affine_on_non_gaussian_data(stats):
    """Rademacher data with the same two moments: D_G still has MSE mmse_x0 (it depends only on the
    mean and covariance), and an affine least-squares fit of x0 on x_t (fitted on one half of the
    samples, scored on the other) does not beat it beyond Monte Carlo error."""
    mu, cov = stats
    n, (a, s) = 200_000, ou_coefficients(0.3)
    M = torch.linalg.cholesky(cov)
    signs = torch.randint(0, 2, (n, D), generator=_gen(20)).to(torch.float64) * 2 - 1
    x0 = mu + signs @ M.T
    x_t = a * x0 + s * torch.randn(n, D, generator=_gen(21), dtype=torch.float64)
    den = WienerDenoiser(mu, cov, ridge_factor=0)
    err_g = ((den(x_t, a, s) - x0) ** 2).sum(dim=1)

    mean, se = _mean_and_se(err_g)
    assert abs(mean - float(den.mmse_x0(a, s))) < 4 * se

    half = n // 2
    design = torch.cat([x_t, torch.ones(n, 1, dtype=torch.float64)], dim=1)
    coef = torch.linalg.lstsq(design[:half], x0[:half]).solution
    err_ls = ((design[half:] @ coef - x0[half:]) ** 2).sum(dim=1)
    gain, gain_se = _mean_and_se(err_g[half:] - err_ls)
    assert gain < 4 * gain_se + 1e-12


def test_from_samples_uses_empirical_moments():
    x = torch.randn(500, 3, generator=_gen(30), dtype=torch.float64) * torch.tensor([1.0, 2.0, 0.5]) + 3.0
    den = WienerDenoiser.from_samples(x, ridge_factor=0)
    np.testing.assert_allclose(den.mean.numpy(), x.numpy().mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(den.covariance.numpy(), np.cov(x.numpy().T, bias=True), rtol=1e-10, atol=1e-12)


def test_rank_deficient_covariance_is_clipped_and_ridged():
    v = torch.tensor([1.0, 2.0, -1.0], dtype=torch.float64)
    cov = torch.outer(v, v)  # rank one, eigenvalues {6, 0, 0} up to round-off
    den = WienerDenoiser(torch.zeros(3, dtype=torch.float64), cov, ridge_factor=1e-2)
    ridge = 1e-2 * 6.0 / 3
    torch.testing.assert_close(den.eigenvalues, torch.tensor([ridge, ridge, 6.0 + ridge], dtype=torch.float64),
                               rtol=1e-10, atol=1e-12)
    no_ridge = WienerDenoiser(torch.zeros(3, dtype=torch.float64), cov, ridge_factor=0)
    assert bool((no_ridge.eigenvalues >= 0).all())
    # with no ridge, the filter only passes the signal direction: D_G(x) = a v v^T x / (6 a^2 + s^2)
    x_t = torch.randn(4, 3, generator=_gen(31), dtype=torch.float64)
    torch.testing.assert_close(no_ridge(x_t, 0.8, 0.6), 0.8 * (x_t @ v)[:, None] * v / (6 * 0.64 + 0.36),
                               rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("mean, cov, kwargs, match", [
    (torch.zeros(3), torch.eye(2), {}, "cov must"),
    (torch.zeros(2, 1), torch.eye(2), {}, "mean must"),
    (torch.zeros(2), torch.tensor([[1.0, 0.5], [0.0, 1.0]]), {}, "symmetric"),
    (torch.zeros(2), torch.diag(torch.tensor([1.0, -0.5])), {}, "positive semi-definite"),
    (torch.zeros(2), torch.eye(2), {"ridge_factor": -1.0}, "ridge_factor"),
    (torch.zeros(2), torch.full((2, 2), float("nan")), {}, "finite"),
])
def test_construction_errors(mean, cov, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        WienerDenoiser(mean, cov, **kwargs)


def test_call_errors():
    den = WienerDenoiser(torch.zeros(2), torch.eye(2))
    with pytest.raises(ConfigError, match="x_t must"):
        den(torch.zeros(3, 4), 0.5, 0.5)
    with pytest.raises(ConfigError, match="s must"):
        den(torch.zeros(3, 2), 0.5, 0.0)
    with pytest.raises(ConfigError, match=r"a must have shape \(3,\)"):
        den(torch.zeros(3, 2), torch.ones(2), 0.5)
