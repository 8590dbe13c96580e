"""kNN entropy and KL-to-density sample quality (metrics/quality.py).

Gaussian closed forms: H(N(mu, Sigma)) = 0.5 log det(2 pi e Sigma) and
KL(N(mu_q, S_q) || N(mu_p, S_p))
    = 0.5 [tr(S_p^-1 S_q) + (mu_p - mu_q)^T S_p^-1 (mu_p - mu_q) - d + log det S_p - log det S_q].
The Kozachenko-Leonenko estimator is consistent; at m = 4000 in d = 4 its bias and standard
deviation are a few hundredths of a nat, well inside the 0.1-0.15 nat tolerances.
"""

import math

import numpy as np
import pytest
import torch

from easyhard import ConfigError
from easyhard.data import random_mixture
from easyhard.metrics import kl_to_density, knn_distances, knn_entropy, mean_log_likelihood

D, M = 4, 4000


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _covariance() -> torch.Tensor:
    """A fixed anisotropic, correlated (D, D) covariance."""
    f = torch.randn((D, D), generator=_gen(0), dtype=torch.float64)
    return f @ f.T / D + 0.3 * torch.eye(D, dtype=torch.float64)


def _gaussian(mean: torch.Tensor, cov: torch.Tensor) -> torch.distributions.MultivariateNormal:
    return torch.distributions.MultivariateNormal(mean, covariance_matrix=cov)


def _draw(mean: torch.Tensor, cov: torch.Tensor, m: int, seed: int) -> torch.Tensor:
    """m draws of N(mean, cov) from an explicit generator: mean + z L^T, L L^T = cov. (m, D)."""
    z = torch.randn((m, mean.shape[0]), generator=_gen(seed), dtype=torch.float64)
    return mean + z @ torch.linalg.cholesky(cov).T


def _gaussian_kl(mq, sq, mp, sp) -> float:
    sp_inv = torch.linalg.inv(sp)
    diff = mp - mq
    return 0.5 * float(torch.trace(sp_inv @ sq) + diff @ sp_inv @ diff - D + torch.logdet(sp) - torch.logdet(sq))


def test_knn_distances_brute_force():
    x = torch.randn((50, 3), generator=_gen(1), dtype=torch.float64)
    full = torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist") + torch.diag(torch.full((50,), math.inf))
    for k in (1, 3):
        expected = full.sort(dim=1).values[:, k - 1]
        assert torch.allclose(knn_distances(x, k, block_size=7), expected, rtol=0, atol=1e-14)


@pytest.mark.parametrize("k", [1, 3])
def test_knn_entropy_of_gaussian_matches_closed_form(k):
    cov = _covariance()
    x = _draw(torch.zeros(D, dtype=torch.float64), cov, M, seed=10 + k)
    exact = 0.5 * float(torch.logdet(2 * math.pi * math.e * cov))
    assert knn_entropy(x, k) == pytest.approx(exact, abs=0.1)


def test_kl_of_samples_from_p_is_near_zero():
    cov = _covariance()
    p = _gaussian(torch.zeros(D, dtype=torch.float64), cov)
    assert abs(kl_to_density(_draw(p.mean, cov, M, seed=20), p.log_prob)) < 0.15


def test_kl_of_shifted_gaussian_matches_closed_form():
    cov = _covariance()
    mean_p, mean_q = torch.zeros(D, dtype=torch.float64), torch.tensor([0.8, -0.5, 0.0, 0.3], dtype=torch.float64)
    cov_q = 0.7 * cov
    p = _gaussian(mean_p, cov)
    exact = _gaussian_kl(mean_q, cov_q, mean_p, cov)
    assert exact > 0.5  # a clearly non-zero target
    assert kl_to_density(_draw(mean_q, cov_q, M, seed=30), p.log_prob) == pytest.approx(exact, abs=0.15)


def test_copies_have_huge_kl_but_ordinary_log_likelihood():
    """Copies of 16 training points (+1e-6 jitter) vs fresh draws from the same 16-d mixture.

    Training points are themselves draws from p, so the mean log-likelihood of their copies is an
    unbiased (if noisy) estimate of E_p log p: it cannot tell copies from good samples. This is why
    log-likelihood alone is not a sample-quality measure. The entropy term of KL_hat can: each copy's
    nearest neighbour is another copy ~1e-6 away, which drives H_hat to -inf.
    """
    mix = random_mixture(d=16, components=8, seed=0)
    m = 1024
    train = mix.sample(16, _gen(1))
    copies = train.repeat(m // 16, 1) + 1e-6 * torch.randn((m, 16), generator=_gen(2), dtype=torch.float64)
    fresh = mix.sample(m, _gen(3))
    kl_fresh, kl_copies = kl_to_density(fresh, mix.log_prob), kl_to_density(copies, mix.log_prob)
    assert math.isfinite(kl_fresh) and kl_copies > kl_fresh + 5
    # log-likelihood: the copies' mean lies within a few standard errors of the fresh one (16 effective points)
    ll_fresh, ll_copies = mean_log_likelihood(fresh, mix.log_prob), mean_log_likelihood(copies, mix.log_prob)
    se = float(mix.log_prob(fresh).std()) / math.sqrt(16)
    assert abs(ll_copies - ll_fresh) < 4 * se
    # exact duplicates: infinite KL (not NaN)
    assert kl_to_density(train.repeat(4, 1), mix.log_prob) == math.inf
    assert knn_entropy(train.repeat(4, 1)) == -math.inf


def test_kl_is_infinite_outside_support():
    x = torch.randn((20, 2), generator=_gen(4), dtype=torch.float64)
    assert kl_to_density(x, lambda y: torch.full((y.shape[0],), -math.inf, dtype=torch.float64)) == math.inf


def test_mean_log_likelihood_is_the_mean():
    p = _gaussian(torch.zeros(D, dtype=torch.float64), _covariance())
    x = _draw(p.mean, p.covariance_matrix, 100, seed=40)
    assert mean_log_likelihood(x, p.log_prob) == pytest.approx(float(p.log_prob(x).mean()), rel=1e-12)
    assert mean_log_likelihood(x.float(), p.log_prob) == pytest.approx(float(p.log_prob(x.float().double()).mean()))


@pytest.mark.parametrize("call,name", [
    (lambda: knn_entropy(torch.zeros(5)), "samples"),
    (lambda: knn_entropy(torch.randn(1, 3)), "samples"),
    (lambda: knn_entropy(torch.randn(3, 2), k=3), "samples"),
    (lambda: knn_entropy(torch.randn(5, 2), k=0), "k"),
    (lambda: knn_distances(torch.randn(5, 2), block_size=0), "block_size"),
    (lambda: knn_entropy(torch.tensor([[0.0, float("nan")], [1.0, 1.0]])), "samples"),
    (lambda: kl_to_density(torch.randn(5, 2), lambda y: torch.zeros(3)), "log_prob"),
    (lambda: kl_to_density(torch.randn(5, 2), lambda y: torch.full((5,), math.nan)), "log_prob"),
    (lambda: mean_log_likelihood(np.zeros((5, 2)), lambda y: torch.zeros(5)), "samples"),
])
def test_bad_inputs_raise_config_error(call, name):
    with pytest.raises(ConfigError) as err:
        call()
    assert str(err.value).startswith(name + " ") and "\n" not in str(err.value)


def test_knn_divergence_against_closed_forms_and_copies():
    """Held-out-referenced KL estimate: ~0 for the same law, the Gaussian closed form for a shift, inf for copies."""
    from easyhard.metrics.quality import knn_divergence

    gen = torch.Generator().manual_seed(0)
    d, m = 3, 3000
    ref = torch.randn(20000, d, generator=gen, dtype=torch.float64)
    same = torch.randn(m, d, generator=gen, dtype=torch.float64)
    assert abs(knn_divergence(same, ref)) < 0.1
    shifted = same + torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)  # KL = |shift|^2 / 2 = 0.5
    assert knn_divergence(shifted, ref) == pytest.approx(0.5, abs=0.12)
    train = torch.randn(16, d, generator=gen, dtype=torch.float64)  # copies of a training set, not of the reference
    assert knn_divergence(train.repeat(10, 1), ref) == float("inf")
    near = train.repeat(10, 1) + 1e-4 * torch.randn(160, d, generator=gen, dtype=torch.float64)
    assert knn_divergence(near, ref) > 10


def test_member_axis_gives_each_members_estimate_with_one_density_call():
    mix = random_mixture(d=3, components=2, seed=5)
    samples = mix.sample(4 * 60, torch.Generator().manual_seed(6)).reshape(4, 60, 3)
    samples[1, 1] = samples[1, 0]  # a duplicate: that member's KL is infinite
    calls = []
    log_prob = lambda x: calls.append(len(x)) or mix.log_prob(x)  # noqa: E731
    kl = kl_to_density(samples, log_prob, ensemble=True)
    ll = mean_log_likelihood(samples, log_prob, ensemble=True)
    assert calls == [240, 240] and kl.shape == ll.shape == (4,) and kl[1] == math.inf
    for e in range(4):
        assert kl[e] == kl_to_density(samples[e], mix.log_prob)
        assert ll[e] == pytest.approx(mean_log_likelihood(samples[e], mix.log_prob), rel=1e-14)
    with pytest.raises(ConfigError, match="rows per member"):
        kl_to_density(samples[:, :1], mix.log_prob, ensemble=True)
