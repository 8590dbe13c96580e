"""Gaussian mixtures: parameters, sampler, exact density and the noised-law oracles (data/mixture.py).

Closed forms are written out here independently of the module (moments as explicit sums, densities
via scipy), the density is checked to integrate to one by quadrature, the score against autograd of
the noised log-density, and the posterior mean against Tweedie's formula and 1-D quadrature.
Monte Carlo comparisons use Z_MAX standard errors estimated from the same samples.
"""

import math

import numpy as np
import pytest
import scipy.integrate
import scipy.special
import scipy.stats
import torch

from easyhard import ConfigError
from easyhard.data import GaussianMixture, random_mixture

Z_MAX = 5.0  # O(300) comparisons per file: P(max |N(0,1)| > 5) ~ 1e-4


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _moments_by_hand(mix: GaussianMixture) -> tuple[np.ndarray, np.ndarray]:
    """Mean and total covariance from the parameters, as explicit sums in numpy (law of total covariance)."""
    w, mu, cov = mix.weights.numpy(), mix.means.numpy(), mix.covariances.numpy()
    mean = sum(w[k] * mu[k] for k in range(len(w)))
    second = sum(w[k] * (cov[k] + np.outer(mu[k], mu[k])) for k in range(len(w)))
    return mean, second - np.outer(mean, mean)


def _small_mixture(d: int = 3, seed: int = 0) -> GaussianMixture:
    """Unequal weights, anisotropic covariances, well-separated means: a stricter test than equal weights."""
    rng = np.random.default_rng(seed)
    k = 3
    weights = np.array([0.2, 0.5, 0.3])
    means = 2.0 * rng.standard_normal((k, d))
    factors = rng.standard_normal((k, d, d)) * 0.7
    covs = factors @ factors.transpose(0, 2, 1) + 0.1 * np.eye(d)
    return GaussianMixture(torch.tensor(weights), torch.tensor(means), torch.tensor(covs))


# ----- construction ----------------------------------------------------------------------------------
def test_standardized_mixture_has_mean_zero_and_identity_covariance():
    mix = random_mixture(d=16, components=8, seed=3)
    assert mix.d == 16 and mix.K == 8
    mean, cov = _moments_by_hand(mix)
    assert np.abs(mean).max() < 1e-10
    assert np.abs(cov - np.eye(16)).max() < 1e-10
    assert torch.allclose(mix.mean(), torch.tensor(mean), atol=1e-12)
    assert torch.allclose(mix.covariance(), torch.tensor(cov), atol=1e-12)
    assert torch.allclose(mix.weights, torch.full((8,), 1 / 8, dtype=torch.float64))


def test_unstandardized_spectrum_and_moments():
    """Each C_k has eigenvalues c / i^p with mean mean_variance; moments() match the explicit sums."""
    d, p, mv = 6, 1.5, 0.25
    mix = random_mixture(d=d, components=4, spectrum_power=p, mean_variance=mv, seed=1, standardize=False)
    lam = np.arange(1, d + 1, dtype=float) ** (-p)
    lam *= mv / lam.mean()
    for cov in mix.covariances:
        np.testing.assert_allclose(np.sort(np.linalg.eigvalsh(cov.numpy()))[::-1], lam, rtol=1e-10)
    # covariances are rotated, not diagonal
    assert np.abs(mix.covariances[0].numpy() - np.diag(np.diag(mix.covariances[0].numpy()))).max() > 1e-2
    mean, cov = _moments_by_hand(mix)
    np.testing.assert_allclose(mix.mean().numpy(), mean, atol=1e-12)
    np.testing.assert_allclose(mix.covariance().numpy(), cov, atol=1e-12)
    # standardising is the affine map of this very mixture
    std = random_mixture(d=d, components=4, spectrum_power=p, mean_variance=mv, seed=1)
    evals, evecs = np.linalg.eigh(cov)
    a = evecs @ np.diag(evals**-0.5) @ evecs.T
    np.testing.assert_allclose(std.means.numpy(), (mix.means.numpy() - mean) @ a.T, atol=1e-10)
    np.testing.assert_allclose(std.covariances.numpy(), a @ mix.covariances.numpy() @ a.T, atol=1e-10)


@pytest.mark.parametrize("mix", [_small_mixture(), random_mixture(d=8, components=4, seed=2)],
                         ids=["unequal-weights", "standardized"])
def test_sample_moments_agree_within_statistical_error(mix):
    n = 100_000
    x, labels = mix.sample(n, _gen(0), return_labels=True)
    assert x.shape == (n, mix.d) and x.dtype == torch.float64 and labels.shape == (n,)
    # component frequencies
    freq = torch.bincount(labels, minlength=mix.K).double() / n
    se = torch.sqrt(mix.weights * (1 - mix.weights) / n)
    assert ((freq - mix.weights).abs() <= Z_MAX * se).all()
    # mean: SE from the per-coordinate sample variance
    mean_err = x.mean(0) - mix.mean()
    assert (mean_err.abs() <= Z_MAX * x.std(0) / math.sqrt(n)).all()
    # covariance entries: SE of the mean of (x_i - m_i)(x_j - m_j) (true mean used, so no bias term)
    c = x - mix.mean()
    prods = c[:, :, None] * c[:, None, :]
    cov_err = prods.mean(0) - mix.covariance()
    assert (cov_err.abs() <= Z_MAX * prods.std(0) / math.sqrt(n)).all()
    # within one component, samples follow that component's Gaussian
    k = 1
    xk = x[labels == k]
    assert ((xk.mean(0) - mix.means[k]).abs() <= Z_MAX * xk.std(0) / math.sqrt(xk.shape[0])).all()


# ----- density ----------------------------------------------------------------------------------------
def test_log_prob_matches_scipy_brute_force():
    mix = _small_mixture(d=4)
    x = torch.cat([mix.sample(50, _gen(1)), 40.0 * torch.randn((10, 4), generator=_gen(2), dtype=torch.float64)])
    w, mu, cov = mix.weights.numpy(), mix.means.numpy(), mix.covariances.numpy()
    comps = np.stack([np.log(w[k]) + scipy.stats.multivariate_normal(mu[k], cov[k]).logpdf(x.numpy())
                      for k in range(mix.K)])
    expected = scipy.special.logsumexp(comps, axis=0)
    got = mix.log_prob(x)
    assert got.shape == (60,) and got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10, atol=1e-10)
    # where the density itself is not underflowed, compare with the plain sum of pdfs
    near = x[:50].numpy()
    pdf = sum(w[k] * scipy.stats.multivariate_normal(mu[k], cov[k]).pdf(near) for k in range(mix.K))
    np.testing.assert_allclose(got[:50].numpy(), np.log(pdf), rtol=1e-10, atol=1e-10)
    # far points: finite (stable logsumexp), although exp underflows
    assert torch.isfinite(got[50:]).all() and got[50:].max() < -200


def test_log_prob_integrates_to_one_in_one_dimension():
    mix = GaussianMixture(torch.tensor([0.3, 0.7]), torch.tensor([[-2.0], [1.5]]), torch.tensor([[[0.25]], [[2.0]]]))

    def density(x: float) -> float:
        return math.exp(mix.log_prob(torch.tensor([[x]], dtype=torch.float64)).item())

    total, _ = scipy.integrate.quad(density, -np.inf, np.inf, epsabs=1e-12, limit=200)
    assert total == pytest.approx(1.0, abs=1e-8)


def test_log_prob_integrates_to_one_in_two_dimensions():
    mix = _small_mixture(d=2, seed=4)
    grid = np.linspace(-14, 14, 701)
    xx, yy = np.meshgrid(grid, grid, indexing="ij")
    pts = torch.tensor(np.stack([xx.ravel(), yy.ravel()], axis=1))
    dens = mix.log_prob(pts).exp().numpy().reshape(xx.shape)
    total = scipy.integrate.simpson(scipy.integrate.simpson(dens, x=grid, axis=1), x=grid)
    assert total == pytest.approx(1.0, abs=1e-6)


# ----- noised law and oracles -----------------------------------------------------------------------
@pytest.mark.parametrize("a,s", [(1.0, 0.05), (0.8, 0.6), (0.1, 1.0)])
def test_score_equals_autograd_of_noised_log_prob(a, s):
    mix = _small_mixture(d=5)
    x_t = (a * mix.sample(64, _gen(5)) + s * torch.randn((64, 5), generator=_gen(6), dtype=torch.float64))
    x_var = x_t.clone().requires_grad_(True)
    mix.noised(a, s).log_prob(x_var).sum().backward()
    score = mix.score(x_t, a, s)
    assert score.shape == (64, 5) and score.dtype == torch.float64
    scale = x_var.grad.abs().max().item()
    assert (score - x_var.grad).abs().max().item() <= 1e-8 * max(scale, 1.0)
    # Tweedie: E[x0 | x_t] = (x_t + s^2 grad log p_t) / a, with the autograd score
    tweedie = (x_t + s**2 * x_var.grad) / a
    assert torch.allclose(mix.posterior_mean(x_t, a, s), tweedie, rtol=1e-8, atol=1e-8 * max(1.0, s**2 * scale / a))
    # eps-predictor: eps = -s grad log p_t
    assert torch.allclose(mix.eps(x_t, a, s), -s * x_var.grad, rtol=1e-8, atol=1e-8 * max(1.0, s * scale))


def test_noised_parameters():
    mix = _small_mixture(d=3)
    noisy = mix.noised(0.6, 0.8)
    assert torch.equal(noisy.weights, mix.weights)
    assert torch.allclose(noisy.means, 0.6 * mix.means)
    assert torch.allclose(noisy.covariances, 0.36 * mix.covariances + 0.64 * torch.eye(3, dtype=torch.float64))


@pytest.mark.parametrize("a,s", [(1.0, 0.3), (0.7, 0.7), (0.2, 1.5)])
def test_posterior_mean_matches_quadrature_in_one_dimension(a, s):
    """E[x0 | x_t] = int x0 p(x0) N(x_t; a x0, s^2) dx0 / int p(x0) N(x_t; a x0, s^2) dx0."""
    mix = GaussianMixture(torch.tensor([0.25, 0.45, 0.3]), torch.tensor([[-2.0], [0.3], [2.5]]),
                          torch.tensor([[[0.2]], [[0.5]], [[0.1]]]))
    x_ts = np.array([-3.0, -1.0, 0.0, 0.4, 1.7, 3.2])
    got = mix.posterior_mean(torch.tensor(x_ts)[:, None], a, s)[:, 0].numpy()
    w, mu, var = mix.weights.numpy(), mix.means.numpy()[:, 0], mix.covariances.numpy()[:, 0, 0]

    def normal_pdf(x: float, mean: float, variance: float) -> float:
        return math.exp(-0.5 * (x - mean) ** 2 / variance) / math.sqrt(2 * math.pi * variance)

    def prior(x0: float) -> float:
        return sum(w[k] * normal_pdf(x0, mu[k], var[k]) for k in range(3))

    for x_t, value in zip(x_ts, got):
        def joint(x0: float, power: int) -> float:
            return x0**power * prior(x0) * normal_pdf(x_t, a * x0, s**2)
        num, _ = scipy.integrate.quad(joint, -12, 12, args=(1,), points=list(mu), epsabs=1e-14, limit=200)
        den, _ = scipy.integrate.quad(joint, -12, 12, args=(0,), points=list(mu), epsabs=1e-14, limit=200)
        assert value == pytest.approx(num / den, abs=1e-7)


def test_posterior_mean_single_gaussian_closed_form():
    """K = 1: E[x0 | x_t] = mu + a C (a^2 C + s^2 I)^{-1} (x_t - a mu) (Gaussian conditioning)."""
    rng = np.random.default_rng(7)
    f = rng.standard_normal((4, 4))
    cov, mu = f @ f.T + 0.2 * np.eye(4), rng.standard_normal(4)
    mix = GaussianMixture(torch.ones(1), torch.tensor(mu)[None], torch.tensor(cov)[None])
    a, s = 0.9, 0.4
    x_t = rng.standard_normal((8, 4))
    gain = a * cov @ np.linalg.inv(a**2 * cov + s**2 * np.eye(4))
    expected = mu + (x_t - a * mu) @ gain.T
    np.testing.assert_allclose(mix.posterior_mean(torch.tensor(x_t), a, s).numpy(), expected, atol=1e-12)


# ----- reproducibility -----------------------------------------------------------------------------
def test_seed_reproducibility_and_global_rng_untouched():
    torch.manual_seed(123)
    state = torch.get_rng_state()
    m1, m2, m3 = random_mixture(d=5, seed=4), random_mixture(d=5, seed=4), random_mixture(d=5, seed=5)
    assert torch.equal(m1.means, m2.means) and torch.equal(m1.covariances, m2.covariances)
    assert not torch.allclose(m1.means, m3.means)
    x1, l1 = m1.sample(100, _gen(9), return_labels=True)
    x2, l2 = m1.sample(100, _gen(9), return_labels=True)
    assert torch.equal(x1, x2) and torch.equal(l1, l2)
    assert not torch.equal(x1, m1.sample(100, _gen(10)))
    assert torch.equal(torch.get_rng_state(), state)


# ----- validation ---------------------------------------------------------------------------------
_W, _MU, _C = torch.tensor([0.5, 0.5]), torch.zeros((2, 2)), torch.eye(2).repeat(2, 1, 1)


@pytest.mark.parametrize("build,name", [
    (lambda: GaussianMixture(torch.tensor([0.5, 0.6]), _MU, _C), "weights"),
    (lambda: GaussianMixture(torch.tensor([1.5, -0.5]), _MU, _C), "weights"),
    (lambda: GaussianMixture(torch.ones((2, 1)) / 2, _MU, _C), "weights"),
    (lambda: GaussianMixture(_W, torch.zeros((3, 2)), _C), "means"),
    (lambda: GaussianMixture(_W, torch.tensor([[0.0, float("nan")], [0.0, 0.0]]), _C), "means"),
    (lambda: GaussianMixture(_W, _MU, torch.eye(3).repeat(2, 1, 1)), "covariances"),
    (lambda: GaussianMixture(_W, _MU, torch.tensor([[[1.0, 0.5], [0.0, 1.0]]]).repeat(2, 1, 1)), "covariances"),
    (lambda: GaussianMixture(_W, _MU, torch.tensor([[[1.0, 2.0], [2.0, 1.0]]]).repeat(2, 1, 1)), "covariances"),
    (lambda: random_mixture(d=0), "d"),
    (lambda: random_mixture(components=0), "components"),
    (lambda: random_mixture(spectrum_power=-1.0), "spectrum_power"),
    (lambda: random_mixture(mean_variance=0.0), "mean_variance"),
    (lambda: random_mixture(seed=-1), "seed"),
    (lambda: random_mixture(d=2).noised(1.0, 0.0), "s"),
    (lambda: random_mixture(d=2).noised(-1.0, 1.0), "a"),
    (lambda: random_mixture(d=2).posterior_mean(torch.zeros((4, 3)), 1.0, 1.0), "x_t"),
    (lambda: random_mixture(d=2).log_prob(torch.zeros(2)), "x"),
    (lambda: random_mixture(d=2).sample(0), "n"),
])
def test_bad_inputs_raise_config_error(build, name):
    with pytest.raises(ConfigError) as err:
        build()
    assert str(err.value).startswith(name + " ") and "\n" not in str(err.value)
