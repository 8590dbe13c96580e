"""Latent laws of nu and couplings (lambda, nu) of the MCM (docs/theory/mcm.md sections 1.3, 1.4, 3.1).

Every check compares against a closed form or an independent computation (scipy quadrature, Monte
Carlo with an estimated standard error). Monte Carlo tolerances are Z_MAX standard errors; the
standard error of a (central) moment or cumulant estimate is the sample standard deviation of its
influence function divided by sqrt(n) (delta method), so it is estimated from the same samples.
"""

import math

import numpy as np
import pytest
import torch
from scipy import integrate
from scipy.stats import norm

from easyhard import ConfigError
from easyhard.data.latents import (
    ABS_NORMAL_MEDIAN,
    BernoulliGauss,
    Laplace,
    LatentLaw,
    LatentPair,
    Rademacher,
    TwoPoint,
    Uniform,
    latent_law_from_dict,
    make_latent_law,
)

#: |estimate - truth| <= Z_MAX standard errors. Each file makes O(100) such comparisons; the chance
#: that one of 100 standard normals exceeds 5 is ~6e-5, so a failure means a bug, not bad luck.
Z_MAX = 5.0
N_MC = 400_000
BIAS_SLACK = 4.0  # added to each standard error as BIAS_SLACK / n (tolerance allowance 20/n); see _moment_stats


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _closed_form_cumulants(law: LatentLaw) -> tuple[float, float]:
    """(kappa_3, kappa_4) from the table of docs/theory/mcm.md section 1.3, written out independently of the code."""
    if isinstance(law, Rademacher):
        return 0.0, -2.0
    if isinstance(law, Laplace):
        return 0.0, 3.0
    if isinstance(law, Uniform):
        return 0.0, -1.2
    if isinstance(law, TwoPoint):
        p = law.p
        return (1 - 2 * p) / math.sqrt(p * (1 - p)), (1 - 6 * p * (1 - p)) / (p * (1 - p))
    if isinstance(law, BernoulliGauss):
        return 0.0, 3 / law.p - 3
    raise AssertionError(law)


def _moment_stats(x: torch.Tensor) -> dict[str, tuple[float, float]]:
    """{name: (estimate, tolerance unit)} for mean, variance, kappa_3, kappa_4 of 1-D float64 samples.

    The unit is the delta-method standard error plus BIAS_SLACK / n: the plug-in cumulant estimators
    have an O(1/n) bias, which dominates when the first-order variance vanishes (Rademacher: the
    influence function of kappa_4 is ~0, while kappa_4_hat = -2 + 8 mean_hat^2 + ...).
    """
    n = x.numel()
    mu = x.mean()
    c = x - mu
    m2, m3, m4 = (c**2).mean(), (c**3).mean(), (c**4).mean()
    influence = {
        "mean": (mu, c),
        "var": (m2, c**2 - m2),
        "kappa3": (m3, c**3 - m3 - 3 * m2 * c),
        "kappa4": (m4 - 3 * m2**2, c**4 - m4 - 4 * m3 * c - 6 * m2 * (c**2 - m2)),
    }
    return {k: (float(est), float(f.std()) / math.sqrt(n) + BIAS_SLACK / n) for k, (est, f) in influence.items()}


def _z(values: torch.Tensor) -> float:
    """Self-normalised statistic sum(x)/sqrt(sum(x^2)): ~N(0, 1) when E x = 0."""
    return float(values.sum() / values.pow(2).sum().sqrt())


LAWS = [Rademacher(), Laplace(), Uniform(), TwoPoint(0.1), TwoPoint(0.35), BernoulliGauss(0.1), BernoulliGauss(0.5)]
LAW_IDS = [repr(law) for law in LAWS]


# ----------------------------------------------------------------------------- laws: exact properties
@pytest.mark.parametrize("law", LAWS, ids=LAW_IDS)
def test_quadrature_is_a_probability_rule_with_exact_moments(law):
    nodes, weights = law.quadrature()
    assert nodes.dtype == torch.float64 and weights.dtype == torch.float64
    assert nodes.shape == weights.shape and nodes.ndim == 1
    assert bool((weights >= 0).all())
    assert float(weights.sum()) == pytest.approx(1.0, abs=1e-13)
    mean, m2, m3, m4 = (float((weights * nodes**k).sum()) for k in (1, 2, 3, 4))
    kappa3, kappa4 = _closed_form_cumulants(law)
    assert mean == pytest.approx(0.0, abs=1e-12)
    assert m2 == pytest.approx(1.0, abs=1e-12)
    assert m3 == pytest.approx(kappa3, abs=1e-10)
    assert m4 - 3 == pytest.approx(kappa4, abs=1e-9)  # Laplace rule: panel error ~3e-12 on E nu^4 = 6


@pytest.mark.parametrize("law", LAWS, ids=LAW_IDS)
def test_cumulant_properties_match_closed_forms(law):
    kappa3, kappa4 = _closed_form_cumulants(law)
    assert law.kappa3 == pytest.approx(kappa3, abs=1e-14)
    assert law.kappa4 == pytest.approx(kappa4, rel=1e-14, abs=1e-14)
    assert law.symmetric == (kappa3 == 0.0)


def test_two_point_spec_check_values():
    # docs/theory/mcm.md section 1.3: two_point(0.1): kappa_3 = 2.667, kappa_4 = 5.11 (quoted to the last digit shown)
    law = TwoPoint(0.1)
    assert law.kappa3 == pytest.approx(2.667, abs=5e-4)
    assert law.kappa4 == pytest.approx(5.11, abs=5e-3)
    # and bernoulli_gauss(0.1): kappa_4 = 27
    assert BernoulliGauss(0.1).kappa4 == pytest.approx(27.0, abs=1e-12)


@pytest.mark.parametrize("law", LAWS, ids=LAW_IDS)
def test_monte_carlo_samples_match_moments(law):
    x = law.sample((N_MC,), _gen(11), dtype=torch.float64)
    assert x.dtype == torch.float64 and x.shape == (N_MC,)
    kappa3, kappa4 = _closed_form_cumulants(law)
    stats = _moment_stats(x)
    for name, truth in (("mean", 0.0), ("var", 1.0), ("kappa3", kappa3), ("kappa4", kappa4)):
        est, se = stats[name]
        assert abs(est - truth) <= Z_MAX * se, f"{name}: {est:.5f} vs {truth:.5f} (se {se:.2e})"


@pytest.mark.parametrize("law", LAWS, ids=LAW_IDS)
def test_sampling_is_reproducible_and_honours_dtype(law):
    a = law.sample((1000,), _gen(3), dtype=torch.float64)
    b = law.sample((1000,), _gen(3), dtype=torch.float64)
    c = law.sample((1000,), _gen(4), dtype=torch.float64)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    x32 = law.sample((7, 3), _gen(3), dtype=torch.float32)
    assert x32.dtype == torch.float32 and x32.shape == (7, 3)


def test_discrete_laws_sample_on_their_nodes():
    for law in (Rademacher(), TwoPoint(0.25)):
        x = law.sample((10_000,), _gen(5), dtype=torch.float32)
        nodes, _ = law.quadrature()
        assert set(x.unique().tolist()) <= set(nodes.float().tolist())


def test_two_point_float64_samples_are_exact_nodes():
    """Regression: float64 samples were once rounded through float32 (-0.33333334 instead of -1/3)."""
    law = TwoPoint(0.1)
    x = law.sample((1000,), _gen(5), dtype=torch.float64)
    nodes, _ = law.quadrature()
    assert set(x.unique().tolist()) <= set(nodes.tolist())


# ----------------------------------------------------------------------------- posterior means
def _brute_posterior_mean(density, h: float, scale: float, var: float, lo: float, hi: float,
                          atom0: float = 0.0) -> float:
    """int nu p(nu) N(h; s nu, var) / int p(nu) N(h; s nu, var) by adaptive quadrature (scipy).

    ``atom0`` adds a point mass at nu = 0 (Bernoulli-Gauss spike); it contributes to the denominator only.
    """
    sd = math.sqrt(var)
    like = lambda nu: norm.pdf(h, scale * nu, sd)  # noqa: E731
    points = sorted({0.0, min(max(h / scale, lo), hi)} - {lo, hi})
    opts = dict(points=points, limit=400, epsabs=0.0, epsrel=1e-13)
    num = integrate.quad(lambda nu: nu * density(nu) * like(nu), lo, hi, **opts)[0]
    den = integrate.quad(lambda nu: density(nu) * like(nu), lo, hi, **opts)[0] + atom0 * like(0.0)
    return num / den


CHANNELS = [(0.3, 1.0, 0.5), (-1.7, 0.8, 0.3), (2.5, 1.5, 1.0), (4.0, 0.5, 0.2), (-0.05, 2.0, 0.15)]


@pytest.mark.parametrize("h, scale, var", CHANNELS)
def test_generic_posterior_mean_matches_brute_force_laplace_and_uniform(h, scale, var):
    b = 1 / math.sqrt(2)
    r3 = math.sqrt(3)
    cases = [
        (Laplace(), lambda nu: math.exp(-abs(nu) / b) / (2 * b), -40 * b, 40 * b),
        (Uniform(), lambda nu: 1 / (2 * r3), -r3, r3),
    ]
    for law, density, lo, hi in cases:
        expected = _brute_posterior_mean(density, h, scale, var, lo, hi)
        got = float(law.posterior_mean(torch.tensor([h], dtype=torch.float64), scale, var)[0])
        assert got == pytest.approx(expected, abs=1e-9), law


@pytest.mark.parametrize("p", [0.1, 0.5, 1.0])
@pytest.mark.parametrize("h, scale, var", CHANNELS)
def test_bernoulli_gauss_closed_form_matches_brute_force(p, h, scale, var):
    sd = 1 / math.sqrt(p)
    density = lambda nu: p * norm.pdf(nu, 0.0, sd)  # noqa: E731  (slab part; the spike is the atom)
    expected = _brute_posterior_mean(density, h, scale, var, -40 * sd, 40 * sd, atom0=1 - p)
    got = float(BernoulliGauss(p).posterior_mean(torch.tensor([h], dtype=torch.float64), scale, var)[0])
    assert got == pytest.approx(expected, abs=1e-10)


def test_rademacher_override_equals_generic_formula():
    law = Rademacher()
    h = torch.linspace(-30, 30, 601, dtype=torch.float64)
    for scale, var in [(1.0, 1.0), (0.3, 0.05), (2.0, 0.7), (0.9, 3.0)]:
        torch.testing.assert_close(law.posterior_mean(h, scale, var), LatentLaw.posterior_mean(law, h, scale, var),
                                   rtol=0, atol=1e-13)
        torch.testing.assert_close(law.posterior_mean(h, scale, var), torch.tanh(scale * h / var), rtol=0, atol=0)


def test_two_point_generic_posterior_mean_closed_form():
    # two atoms: E[nu | h] = (p hi L(hi) + (1-p) lo L(lo)) / (p L(hi) + (1-p) L(lo)), L = Gaussian likelihood
    p = 0.2
    hi, lo = math.sqrt((1 - p) / p), -math.sqrt(p / (1 - p))
    h = torch.linspace(-5, 8, 131, dtype=torch.float64)
    scale, var = 0.9, 0.4
    lhi = p * torch.exp(-(h - scale * hi) ** 2 / (2 * var))
    llo = (1 - p) * torch.exp(-(h - scale * lo) ** 2 / (2 * var))
    expected = (hi * lhi + lo * llo) / (lhi + llo)
    torch.testing.assert_close(TwoPoint(p).posterior_mean(h, scale, var), expected, rtol=0, atol=1e-12)


def test_posterior_mean_keeps_shape_and_dtype():
    h = torch.randn(4, 3, generator=_gen(0), dtype=torch.float32)
    for law in LAWS:
        out = law.posterior_mean(h, 0.8, 0.5)
        assert out.shape == (4, 3) and out.dtype == torch.float32


@pytest.mark.parametrize("law, n", [(Rademacher(), 200_000), (Laplace(), 50_000), (Uniform(), 100_000),
                                    (TwoPoint(0.1), 200_000), (BernoulliGauss(0.2), 200_000)], ids=repr)
def test_posterior_mean_is_conditional_expectation_monte_carlo(law, n):
    """Orthogonality: E[(nu - E[nu | h]) phi(h)] = 0 for every test function phi.

    The Laplace and uniform posteriors run over ~1000 / ~200 quadrature nodes, hence the smaller n.
    """
    chunk = 25_000
    scale, var = 1.2, 0.5
    gen = _gen(21)
    nu = law.sample((n,), gen, dtype=torch.float64)
    h = scale * nu + math.sqrt(var) * torch.randn(n, generator=gen, dtype=torch.float64)
    post = torch.cat([law.posterior_mean(h[i:i + chunk], scale, var) for i in range(0, n, chunk)])
    resid = nu - post
    for name, phi in [("1", torch.ones_like(h)), ("h", h), ("tanh h", torch.tanh(h)), ("h^2", h**2),
                      ("1{h>1}", (h > 1).double())]:
        z = _z(resid * phi)
        assert abs(z) <= Z_MAX, f"phi = {name}: z = {z:.2f}"
    # and the posterior mean is not trivially zero: it explains part of nu's variance
    assert float((nu * post).mean()) > 0.1


# ----------------------------------------------------------------------------- make_latent_law
@pytest.mark.parametrize("name, param, expected", [
    ("rademacher", None, Rademacher()),
    ("Laplace", None, Laplace()),
    ("uniform", None, Uniform()),
    ("two_point", None, TwoPoint(0.1)),
    ("two-point", None, TwoPoint(0.1)),
    ("skewed", None, TwoPoint(0.1)),
    ("tsodyks", 0.3, TwoPoint(0.3)),
    ("two_point:0.2", None, TwoPoint(0.2)),
    ("two-point:0.25", None, TwoPoint(0.25)),
    ("bernoulli_gauss", 0.5, BernoulliGauss(0.5)),
    ("bernoulli-gauss:0.2", None, BernoulliGauss(0.2)),
    ("sparse", None, BernoulliGauss(0.1)),
])
def test_make_latent_law_parses_names_and_aliases(name, param, expected):
    law = make_latent_law(name, param)
    assert type(law) is type(expected) and law == expected
    assert latent_law_from_dict(law.to_dict()) == law


@pytest.mark.parametrize("name, param", [
    ("gauss", None), ("", None), ("two_point:abc", None), ("rademacher:0.2", None), ("laplace", 0.3),
    ("two_point:1.5", None), ("two_point", 0.0), ("bernoulli_gauss:0", None), ("bernoulli_gauss", 1.2),
])
def test_make_latent_law_rejects_bad_specs(name, param):
    with pytest.raises(ConfigError, match="nu"):
        make_latent_law(name, param)


# ----------------------------------------------------------------------------- couplings
def _invisible_lambda2_nu() -> float:
    """E[lambda^2 nu] for nu = 2 * 1{|lambda| > c} - 1: 2 * 2 (c phi(c) + 1 - Phi(c)) - 1 (c = 0.67449)."""
    c = ABS_NORMAL_MEDIAN
    return 4 * (c * norm.pdf(c) + norm.sf(c)) - 1


def test_abs_normal_median_constant():
    assert ABS_NORMAL_MEDIAN == pytest.approx(norm.ppf(0.75), abs=1e-15)
    assert _invisible_lambda2_nu() == pytest.approx(0.857, abs=5e-4)  # value quoted in docs/theory/mcm.md section 1.4, 3 decimals


@pytest.mark.parametrize("coupling, q", [("independent", 1.0), ("sign", 1.0), ("sign", 0.5), ("invisible", 1.0)])
def test_grid_is_a_probability_rule(coupling, q):
    lam, nu, w = LatentPair(Rademacher(), coupling, q).grid()
    assert w.shape == (lam.numel(), nu.numel())
    assert bool((w >= 0).all())
    assert float(w.sum()) == pytest.approx(1.0, abs=1e-13)
    e = lambda f: float((w * f).sum())  # noqa: E731
    L, N = lam[:, None], nu[None, :]
    assert e(L) == pytest.approx(0.0, abs=1e-13)
    assert e(L**2) == pytest.approx(1.0, abs=1e-12)
    assert e(L**4) == pytest.approx(3.0, abs=1e-11)
    assert e(N) == pytest.approx(0.0, abs=1e-13)  # the Rademacher marginal survives the coupling
    assert e(N**2) == pytest.approx(1.0, abs=1e-13)


@pytest.mark.parametrize("q", [1.0, 0.5, 0.0])
def test_sign_coupling_rho(q):
    pair = LatentPair(Rademacher(), "sign", q)
    rho = q * math.sqrt(2 / math.pi)
    assert pair.rho == pytest.approx(rho, abs=1e-15)
    if q == 1.0:
        assert pair.rho == pytest.approx(0.798, abs=5e-4)  # value quoted in docs/theory/mcm.md section 1.4
    lam, nu, w = pair.grid()
    assert float((w * lam[:, None] * nu[None, :]).sum()) == pytest.approx(rho, abs=1e-12)
    # Monte Carlo
    lam_s, nu_s = pair.sample(N_MC, _gen(7), dtype=torch.float64)
    prod = lam_s * nu_s
    se = float(prod.std()) / math.sqrt(N_MC)
    assert abs(float(prod.mean()) - rho) <= Z_MAX * se
    # P(nu = sign lambda) = q + (1 - q)/2
    agree = (nu_s == torch.sign(lam_s)).double()
    p_agree = q + (1 - q) / 2
    assert abs(float(agree.mean()) - p_agree) <= Z_MAX * math.sqrt(max(p_agree * (1 - p_agree), 1e-12) / N_MC)
    if q == 1.0:
        assert torch.equal(nu_s, torch.where(lam_s >= 0, 1.0, -1.0).double())


def test_invisible_coupling_moments_grid_and_monte_carlo():
    pair = LatentPair(Rademacher(), "invisible")
    assert pair.rho == 0.0
    target = _invisible_lambda2_nu()
    lam, nu, w = pair.grid()
    L, N = lam[:, None], nu[None, :]
    assert float((w * L * N).sum()) == pytest.approx(0.0, abs=1e-13)
    assert float((w * L**2 * N).sum()) == pytest.approx(target, abs=1e-12)
    assert float((w * L**3 * N).sum()) == pytest.approx(0.0, abs=1e-12)
    lam_s, nu_s = pair.sample(N_MC, _gen(8), dtype=torch.float64)
    assert torch.equal(nu_s, torch.where(lam_s.abs() > ABS_NORMAL_MEDIAN, 1.0, -1.0).double())
    for f, truth in ((lam_s * nu_s, 0.0), (lam_s**2 * nu_s, target)):
        se = float(f.std()) / math.sqrt(N_MC)
        assert abs(float(f.mean()) - truth) <= Z_MAX * se


@pytest.mark.parametrize("coupling, q", [("sign", 1.0), ("sign", 0.3), ("invisible", 1.0)])
def test_coupled_nu_marginal_stays_rademacher(coupling, q):
    lam, nu = LatentPair(Rademacher(), coupling, q).sample(N_MC, _gen(9), dtype=torch.float64)
    assert set(nu.unique().tolist()) == {-1.0, 1.0}
    p_plus = float((nu > 0).double().mean())
    assert abs(p_plus - 0.5) <= Z_MAX * 0.5 / math.sqrt(N_MC)
    stats = _moment_stats(lam)  # lambda stays N(0, 1)
    for name, truth in (("mean", 0.0), ("var", 1.0), ("kappa3", 0.0), ("kappa4", 0.0)):
        est, se = stats[name]
        assert abs(est - truth) <= Z_MAX * se, name


def test_independent_pair_is_independent():
    pair = LatentPair(Laplace())
    lam, nu = pair.sample(N_MC, _gen(10), dtype=torch.float64)
    for f in (lam * nu, lam**2 * nu, lam * nu**2 - lam, (lam**2 - 1) * (nu**2 - 1)):
        assert abs(_z(f - 0.0)) <= Z_MAX
    grid_lam, grid_nu, w = pair.grid(60)
    nodes, weights = Laplace().quadrature()
    torch.testing.assert_close(grid_nu, nodes)
    torch.testing.assert_close(w.sum(0), weights, rtol=1e-13, atol=1e-16)


def test_pair_sample_dtype_and_reproducibility():
    pair = LatentPair(Rademacher(), "sign", 0.5)
    a = pair.sample(500, _gen(1), dtype=torch.float64)
    b = pair.sample(500, _gen(1), dtype=torch.float64)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    lam, nu = pair.sample(500, _gen(1), dtype=torch.float32)
    assert lam.dtype == nu.dtype == torch.float32 and lam.shape == nu.shape == (500,)


@pytest.mark.parametrize("law", [Laplace(), Uniform(), TwoPoint(0.1), BernoulliGauss(0.2)], ids=repr)
@pytest.mark.parametrize("coupling", ["sign", "invisible"])
def test_coupling_requires_rademacher(law, coupling):
    with pytest.raises(ConfigError, match="nu"):
        LatentPair(law, coupling)


def test_pair_rejects_bad_coupling_and_q():
    with pytest.raises(ConfigError, match="coupling"):
        LatentPair(Rademacher(), "comonotone")
    for q in (-0.1, 1.5, float("nan")):
        with pytest.raises(ConfigError, match="q"):
            LatentPair(Rademacher(), "sign", q)


def test_pair_to_dict():
    pair = LatentPair(TwoPoint(0.2))
    assert pair.to_dict() == {"nu": {"name": "two_point", "p": 0.2}, "coupling": "independent", "q": 1.0}
    assert latent_law_from_dict(pair.to_dict()["nu"]) == TwoPoint(0.2)


def test_brute_force_helper_is_itself_correct():
    # guard for the reference implementation: Gaussian prior N(0, 1) gives E[nu | h] = s h / (s^2 + var)
    h, s, var = 1.3, 0.7, 0.4
    got = _brute_posterior_mean(norm.pdf, h, s, var, -40.0, 40.0)
    assert got == pytest.approx(s * h / (s**2 + var), abs=1e-12)
    assert np.isfinite(got)
