"""Activations (docs/theory/mcm.md section 4.3): values, derivatives, Gaussian moments, parity, and the matched
activation and the factory of easyhard.oracles.matched."""

import math

import numpy as np
import pytest
import torch
from scipy import integrate
from scipy.stats import norm

from easyhard import ConfigError
from easyhard.activations import PLAIN_ACTIVATIONS, Activation
from easyhard.data.latents import BernoulliGauss, Laplace, Rademacher, TwoPoint
from easyhard.data.mcm import MixedCumulantModel
from easyhard.oracles import ACTIVATIONS, Matched, make_activation
from easyhard.oracles.bayes_mcm import MCMBayesDenoiser

NAMES = ["tanh", "erf", "sigmoid", "relu", "abs", "linear", "matched"]

#: reference definitions, written out independently of the code
REFERENCE = {
    "tanh": math.tanh,
    "erf": math.erf,
    "sigmoid": lambda h: 1 / (1 + math.exp(-h)) - 0.5,
    "relu": lambda h: max(h, 0.0),
    "abs": abs,
    "linear": lambda h: h,
}


def _matched_constants(beta_v: float, t: float) -> tuple[float, float, float]:
    """(c1, c2, c3) of docs/theory/mcm.md section 4.3 for Rademacher nu."""
    a = math.exp(-t)
    delta = 1 - math.exp(-2 * t)
    s2 = a**2 / (1 + beta_v) + delta
    m_v = a * math.sqrt(beta_v / (1 + beta_v))
    return a / ((1 + beta_v) * s2) - a, math.sqrt(beta_v / (1 + beta_v)) * delta / s2, m_v / s2


def _activations():
    """(id, activation, scalar reference function) for all activations, incl. several matched ones."""
    out = [(name, make_activation(name), REFERENCE[name]) for name in NAMES if name != "matched"]
    for beta_v, t in [(5.0, 0.2), (10.0, 0.5)]:
        c1, c2, c3 = _matched_constants(beta_v, t)
        out.append((f"matched-rad-{beta_v}-{t}", make_activation("matched", Rademacher(), beta_v, t),
                    lambda h, c1=c1, c2=c2, c3=c3: c1 * h + c2 * math.tanh(c3 * h)))
    out.append(("matched-laplace", make_activation("matched", Laplace(), 5.0, 0.3), None))
    out.append(("matched-bg", make_activation("matched", BernoulliGauss(0.2), 10.0, 0.2), None))
    out.append(("matched-two_point", make_activation("matched", TwoPoint(0.1), 5.0, 0.6), None))
    return out


ACTS = _activations()
ACT_IDS = [a[0] for a in ACTS]
GRID = torch.cat([torch.linspace(-6, -0.05, 60), torch.linspace(0.05, 6, 60)]).double()


@pytest.mark.parametrize("name, act, ref", ACTS, ids=ACT_IDS)
def test_values_match_reference(name, act, ref):
    out = act(GRID)
    assert out.shape == GRID.shape and out.dtype == torch.float64
    assert act(GRID.float()).dtype == torch.float32
    if ref is not None:
        expected = torch.tensor([ref(float(h)) for h in GRID], dtype=torch.float64)
        torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("name, act, ref", ACTS, ids=ACT_IDS)
def test_derivative_matches_autograd_and_finite_differences(name, act, ref):
    """Grid avoids h = 0, where relu and abs have their kink."""
    deriv = act.derivative(GRID)
    assert deriv.shape == GRID.shape
    x = GRID.clone().requires_grad_(True)
    (auto,) = torch.autograd.grad(act(x).sum(), x)
    torch.testing.assert_close(deriv, auto, rtol=1e-12, atol=1e-13)
    # central differences, step 1e-5: truncation error ~ f''' eps^2 / 6, round-off ~ 1e-16 / eps
    eps = 1e-5
    fd = (act(GRID + eps) - act(GRID - eps)) / (2 * eps)
    torch.testing.assert_close(deriv, fd, rtol=0, atol=1e-8)
    # derivative() also works without grad mode and leaves no graph behind
    with torch.no_grad():
        out = act.derivative(GRID)
    assert not out.requires_grad
    torch.testing.assert_close(out, deriv)


MOMENT_POINTS = [(0.0, 1.0), (0.7, 0.3), (-1.3, 0.8), (2.0, 0.05), (-0.4, 1.0)]


def _quad_moments(f, m: float, v: float) -> tuple[float, float, float]:
    """(E f(h), E h f(h), E f(h)^2) for h ~ N(m, v) by adaptive quadrature (kink at h = 0 marked)."""
    sd = math.sqrt(v)
    lo, hi = m - 14 * sd, m + 14 * sd
    pts = [0.0] if lo < 0 < hi else None
    opts = dict(points=pts, limit=400, epsabs=1e-14, epsrel=1e-13)
    pdf = lambda h: norm.pdf(h, m, sd)  # noqa: E731
    return tuple(integrate.quad(lambda h, g=g: g(h) * pdf(h), lo, hi, **opts)[0]
                 for g in (f, lambda h: h * f(h), lambda h: f(h) ** 2))


def _legendre_moments(f, m: float, v: float) -> tuple[float, float, float]:
    """Same moments by a dense composite Gauss-Legendre rule on [m - 14 sd, m + 14 sd] with a panel edge at 0.

    ``f`` is an activation (called once on a float64 tensor) or a scalar reference function."""
    sd = math.sqrt(v)
    lo, hi = m - 14 * sd, m + 14 * sd
    edges = np.linspace(lo, hi, 281)
    if lo < 0 < hi:
        edges = np.sort(np.append(edges, 0.0))
    x, w = np.polynomial.legendre.leggauss(20)
    half = np.diff(edges)[:, None] / 2
    nodes = (edges[:-1, None] + half * (x + 1)).ravel()
    weights = (half * w).ravel() * norm.pdf(nodes, m, sd)
    if isinstance(f, Activation):
        f = f(torch.from_numpy(nodes)).numpy()
    else:
        f = np.array([f(float(h)) for h in nodes])
    return float(weights @ f), float(weights @ (nodes * f)), float(weights @ (f * f))


@pytest.mark.parametrize("name, act, ref", ACTS, ids=ACT_IDS)
def test_gauss_moments_match_quadrature(name, act, ref):
    """Variances up to 1 cover the population loss (Var h = a^2 Var y + Delta <= 1). The 160-node
    Gauss-Hermite rule reaches ~1e-8 there for the activations below (a steep matched activation,
    c3 >~ 4, e.g. beta_v = 10 and t = 0.05, loses accuracy: ~5e-4; see the test report)."""
    m = torch.tensor([p[0] for p in MOMENT_POINTS], dtype=torch.float64)
    v = torch.tensor([p[1] for p in MOMENT_POINTS], dtype=torch.float64)
    got = act.gauss_moments(m, v)
    assert all(g.shape == m.shape and g.dtype == torch.float64 for g in got)
    for i, (mi, vi) in enumerate(MOMENT_POINTS):
        expected = _legendre_moments(act if ref is None else ref, mi, vi)
        for k in range(3):
            assert float(got[k][i]) == pytest.approx(expected[k], abs=5e-8), (mi, vi, k)


def _normal_closed_forms(m: float, v: float) -> dict[str, tuple[float, float, float]]:
    s = math.sqrt(v)
    z = m / s
    P, p = norm.cdf(z), norm.pdf(z)
    relu1 = m * P + s * p
    relu2 = (m * m + v) * P + m * s * p
    abs1 = m * (2 * P - 1) + 2 * s * p
    abs2 = (m * m + v) * (2 * P - 1) + 2 * m * s * p
    return {"relu": (relu1, relu2, relu2), "abs": (abs1, abs2, m * m + v), "linear": (m, m * m + v, m * m + v)}


@pytest.mark.parametrize("name", ["tanh", "relu", "abs"])
def test_reference_quadratures_agree(name):
    """The dense Legendre reference agrees with scipy's adaptive quadrature (guards the reference itself)."""
    for mi, vi in [(0.3, 0.7), (-1.0, 1.0)]:
        for a, b in zip(_quad_moments(REFERENCE[name], mi, vi), _legendre_moments(REFERENCE[name], mi, vi)):
            assert a == pytest.approx(b, abs=1e-12)


@pytest.mark.parametrize("name", ["relu", "abs", "linear"])
def test_gauss_moments_closed_forms(name):
    act = make_activation(name)
    points = MOMENT_POINTS + [(3.0, 4.0), (-5.0, 9.0), (0.0, 25.0)]
    m = torch.tensor([p[0] for p in points], dtype=torch.float64)
    v = torch.tensor([p[1] for p in points], dtype=torch.float64)
    got = act.gauss_moments(m, v)
    for i, (mi, vi) in enumerate(points):
        expected = _normal_closed_forms(mi, vi)[name]
        quad = _legendre_moments(REFERENCE[name], mi, vi)
        for k in range(3):
            assert float(got[k][i]) == pytest.approx(expected[k], rel=1e-12, abs=1e-13)
            assert float(got[k][i]) == pytest.approx(quad[k], rel=1e-9, abs=1e-10)


@pytest.mark.parametrize("name", ["tanh", "relu", "matched"])
def test_gauss_moments_monte_carlo(name):
    """A second, sampling-based reference (1e6 draws, tolerance 5 standard errors)."""
    act = make_activation(name, Rademacher(), 5.0, 0.3)
    n = 1_000_000
    gen = torch.Generator().manual_seed(3)
    for mi, vi in [(0.4, 0.6), (-1.0, 1.0)]:
        h = mi + math.sqrt(vi) * torch.randn(n, generator=gen, dtype=torch.float64)
        s = act(h)
        got = act.gauss_moments(torch.tensor([mi], dtype=torch.float64), torch.tensor([vi], dtype=torch.float64))
        for sample, g in zip((s, h * s, s * s), got):
            se = float(sample.std()) / math.sqrt(n)
            assert abs(float(sample.mean()) - float(g[0])) <= 5 * se


def test_gauss_moments_zero_variance_limit_is_pointwise():
    for name in ["tanh", "erf", "sigmoid", "matched"]:
        act = make_activation(name)
        m = torch.tensor([-1.0, 0.3, 2.0], dtype=torch.float64)
        e_s, e_hs, e_ss = act.gauss_moments(m, torch.full_like(m, 1e-14))
        torch.testing.assert_close(e_s, act(m), rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(e_hs, m * act(m), rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(e_ss, act(m) ** 2, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name, act, ref", ACTS, ids=ACT_IDS)
def test_parity(name, act, ref):
    h = GRID
    expected_odd = name in ("tanh", "erf", "sigmoid", "linear") or (
        name.startswith("matched") and name != "matched-two_point")
    assert act.odd == expected_odd
    if expected_odd:
        torch.testing.assert_close(act(-h), -act(h), rtol=0, atol=1e-14)
        # Gaussian moments inherit the parity: E sigma = 0 and E sigma^2 even, E h sigma even, for m -> -m
        m = torch.tensor([0.8], dtype=torch.float64)
        v = torch.tensor([0.5], dtype=torch.float64)
        plus, minus = act.gauss_moments(m, v), act.gauss_moments(-m, v)
        torch.testing.assert_close(plus[0], -minus[0], rtol=0, atol=1e-14)
        torch.testing.assert_close(plus[1], minus[1], rtol=0, atol=1e-14)
        torch.testing.assert_close(plus[2], minus[2], rtol=0, atol=1e-14)
    else:
        assert float((act(-h) + act(h)).abs().max()) > 1e-3


# ----------------------------------------------------------------------------- matched activation
@pytest.mark.parametrize("beta_v, t", [(5.0, 0.2), (5.0, 0.3), (10.0, 0.2), (10.0, 0.3), (2.0, 1.0), (5.0, 0.05)])
def test_matched_rademacher_closed_form(beta_v, t):
    act = make_activation("matched", Rademacher(), beta_v, t)
    c1, c2, c3 = _matched_constants(beta_v, t)
    h = torch.linspace(-8, 8, 321, dtype=torch.float64)
    torch.testing.assert_close(act(h), c1 * h + c2 * torch.tanh(c3 * h), rtol=0, atol=1e-13)
    # sigma'(0) = c1 + c2 c3
    assert float(act.derivative(torch.zeros(1, dtype=torch.float64))[0]) == pytest.approx(c1 + c2 * c3, abs=1e-12)


@pytest.mark.parametrize("beta_v, t, table", [(5.0, 0.2, (-0.510, 0.682, 1.693)), (5.0, 0.3, (-0.513, 0.759, 1.246)),
                                             (10.0, 0.2, (-0.628, 0.805, 1.998)), (10.0, 0.3, (-0.606, 0.859, 1.410))])
def test_matched_constants_reproduce_spec_table(beta_v, t, table):
    """docs/theory/mcm.md section 6.6 table, quoted to 3 decimals: recover (c1, c2, c3) from the activation itself."""
    act = make_activation("matched", Rademacher(), beta_v, t)
    c1_formula, _, _ = _matched_constants(beta_v, t)
    # linear tail: sigma(h) -> c1 h + c2 for h -> inf; slope at large h gives c1, intercept c2
    big = torch.tensor([40.0, 60.0], dtype=torch.float64)
    vals = act(big)
    c1 = float((vals[1] - vals[0]) / 20)
    c2 = float(vals[0] - c1 * 40)
    # sigma'(0) = c1 + c2 c3
    c3 = (float(act.derivative(torch.zeros(1, dtype=torch.float64))[0]) - c1) / c2
    assert c1 == pytest.approx(c1_formula, abs=1e-12)
    for got, quoted in zip((c1, c2, c3), table):
        assert got == pytest.approx(quoted, abs=5e-4)


@pytest.mark.parametrize("law", [Rademacher(), Laplace(), BernoulliGauss(0.2), TwoPoint(0.1)], ids=repr)
def test_matched_is_bayes_denoiser_along_v(law):
    """At w = v, c_t = e^-t, a_t = 1: a h + sigma_match(h) equals the Bayes posterior mean E[v.x0 | x_t]."""
    beta_v, t = 7.0, 0.25
    act = make_activation("matched", law, beta_v, t)
    model = MixedCumulantModel.create(d=4, beta_u=3.0, beta_v=beta_v, nu=law)
    x_t = torch.randn(200, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 1.5
    h = x_t[:, 1]
    bayes_v = MCMBayesDenoiser(model)(x_t, t)[:, 1]
    torch.testing.assert_close(math.exp(-t) * h + act(h), bayes_v, rtol=0, atol=1e-12)


def test_matched_large_beta_and_time_limits():
    # t -> infinity: a -> 0, the posterior mean and hence sigma_match vanish
    act = make_activation("matched", Rademacher(), 5.0, 30.0)
    h = torch.linspace(-3, 3, 13, dtype=torch.float64)
    assert float(act(h).abs().max()) < 1e-12
    # beta_v = 0: nu is invisible, g_v(h) = a h / s2 = a h (s2 = 1), sigma_match = 0
    act0 = make_activation("matched", Rademacher(), 0.0, 0.4)
    assert float(act0(h).abs().max()) < 1e-14


# ----------------------------------------------------------------------------- factory
def test_make_activation_builds_each_activation():
    assert sorted(ACTIVATIONS) == sorted(NAMES) and sorted(PLAIN_ACTIVATIONS) == sorted(set(NAMES) - {"matched"})
    for name in NAMES:
        act = make_activation(name)
        assert isinstance(act, Activation) and act.name == name
        assert isinstance(act, ACTIVATIONS[name])
        assert act.to_dict()["name"] == name
    m = make_activation("matched", Laplace(), 10.0, 0.2)
    assert isinstance(m, Matched) and m.law == Laplace() and m.beta_v == 10.0 and m.t == 0.2
    assert m.to_dict() == {"name": "matched", "law": {"name": "laplace"}, "beta_v": 10.0, "t": 0.2}
    assert make_activation("matched").law == Rademacher()


@pytest.mark.parametrize("name", ["gelu", "Tanh", "", "sigmoid-1/2", "softplus"])
def test_make_activation_rejects_unknown(name):
    with pytest.raises(ConfigError, match="activation"):
        make_activation(name)
