"""Hermite coefficients f_k(t), the loss polynomial c_ij and the worked tables of docs/theory/mcm.md sections 6.5-6.6."""

import math

import pytest
import torch

from easyhard._quadrature import gauss_hermite
from easyhard.data import BernoulliGauss, MixedCumulantModel, Rademacher, TwoPoint
from easyhard.oracles import make_activation
from easyhard.theory import (
    SingleNeuron,
    hermite_coefficients,
    hermite_he,
    hermite_moment_polynomial,
    loss_polynomial,
    overlap_loss,
)

# docs/theory/mcm.md section 6.5: tanh, beta_u = beta_v = 5, Rademacher, c = e^-t, a = 1
TABLE_65 = {  # t: (f_2, f_4, c_2, c_4)
    0.05: (0.110, -0.323, 0.274, 0.0187), 0.1: (-0.100, -0.069, -0.249, 0.0040),
    0.2: (-0.410, 0.218, -1.026, -0.0126), 0.3: (-0.610, 0.327, -1.526, -0.0189),
    0.5: (-0.795, 0.318, -1.988, -0.0184), 0.75: (-0.808, 0.204, -2.020, -0.0118),
    1.0: (-0.722, 0.113, -1.804, -0.0065), 1.5: (-0.496, 0.029, -1.239, -0.0017),
    2.0: (-0.315, 0.0068, -0.788, -0.0004),
}


def _half_unit(x: float) -> float:
    """One unit in the last quoted digit of a table entry.

    One unit rather than half: the tables of docs/theory/mcm.md are not always rounded consistently (table 6.5 at
    t = 1 quotes f_2 = -0.722 and c_2 = 2.5 f_2 = -1.804, which needs f_2 in [-0.7218, -0.7214]).
    """
    text = f"{x}"
    decimals = len(text.split(".")[1]) if "." in text else 0
    return 10 ** (-decimals) + 1e-9


def test_hermite_polynomials_closed_forms():
    x = torch.linspace(-3, 3, 13, dtype=torch.float64)
    he = hermite_he(4, x)
    torch.testing.assert_close(he[2], x**2 - 1)
    torch.testing.assert_close(he[3], x**3 - 3 * x)
    torch.testing.assert_close(he[4], x**4 - 6 * x**2 + 3)
    g, w = gauss_hermite(40)
    gram = torch.einsum("in,jn,n->ij", hermite_he(6, g), hermite_he(6, g), w)
    torch.testing.assert_close(gram, torch.diag(torch.tensor([float(math.factorial(k)) for k in range(7)],
                                                             dtype=torch.float64)))


@pytest.mark.parametrize("t", sorted(TABLE_65))
def test_table_65(t):
    model = MixedCumulantModel.create(d=3)
    neuron = SingleNeuron(make_activation("tanh"), t)
    f = hermite_coefficients(neuron)
    poly = loss_polynomial(model, neuron)
    for value, expected in zip((f[2].item(), f[4].item(), poly[(2, 0)], poly[(0, 4)]), TABLE_65[t]):
        assert abs(value - expected) <= _half_unit(expected), (t, value, expected)


def test_f_k_equals_mean_of_kth_derivative():
    """f_k = E_g[F_t(g) He_k(g)] = E_g[F_t^(k)(g)] (Gaussian integration by parts); derivatives by autograd."""
    neuron = SingleNeuron(make_activation("tanh"), t=0.5)
    g, w = gauss_hermite(120)
    y = g.clone().requires_grad_(True)
    deriv = neuron.f(y)
    derivs = []
    for _ in range(4):
        (deriv,) = torch.autograd.grad(deriv.sum(), y, create_graph=True)
        derivs.append((deriv * w).sum().item())
    f = hermite_coefficients(neuron, 4)
    for k in range(1, 5):
        assert abs(f[k].item() - derivs[k - 1]) < 1e-9


def test_matched_table_66():
    """docs/theory/mcm.md section 6.6: matched (Rademacher) activation, f_2, f_4, c_4."""
    rows = {(5, 0.2): (0.084, 0.666, -0.0385), (5, 0.3): (0.059, 0.568, -0.0329),
            (10, 0.2): (0.134, 0.893, -0.0615), (10, 0.3): (0.089, 0.725, -0.0499)}
    for (beta_v, t), expected in rows.items():
        model = MixedCumulantModel.create(d=3, beta_u=0.0, beta_v=beta_v)
        neuron = SingleNeuron(make_activation("matched", Rademacher(), beta_v, t), t)
        f = hermite_coefficients(neuron)
        got = (f[2].item(), f[4].item(), loss_polynomial(model, neuron)[(0, 4)])
        for value, exp in zip(got, expected):
            assert abs(value - exp) <= _half_unit(exp), ((beta_v, t), got, expected)


@pytest.mark.parametrize("p,t,tanh_c4,matched_c4", [
    (0.5, 0.2, 0.023, -0.043), (0.2, 0.2, 0.090, -0.349), (0.1, 0.2, 0.203, -0.991), (0.1, 0.05, -0.300, -0.226)])
def test_leptokurtic_table_66(p, t, tanh_c4, matched_c4):
    law = BernoulliGauss(p)
    model = MixedCumulantModel.create(d=3, beta_u=0.0, beta_v=10.0, nu=law)
    c4_tanh = loss_polynomial(model, SingleNeuron(make_activation("tanh"), t))[(0, 4)]
    c4_matched = loss_polynomial(model, SingleNeuron(make_activation("matched", law, 10.0, t), t))[(0, 4)]
    assert abs(c4_tanh - tanh_c4) <= _half_unit(tanh_c4)
    assert abs(c4_matched - matched_c4) <= _half_unit(matched_c4)


def test_calibrated_setting_s1():
    """docs/theory/calibration.md S1: tanh with a = -1, Bernoulli(0.1)-Gauss, beta_v = 20, t = 0.1: c_4 = -0.867."""
    model = MixedCumulantModel.create(d=3, beta_u=0.0, beta_v=20.0, nu=BernoulliGauss(0.1))
    c4 = loss_polynomial(model, SingleNeuron(make_activation("tanh"), 0.1, a_out=-1.0))[(0, 4)]
    assert abs(c4 + 0.867) < 0.0006


def test_leading_coefficients_follow_section_5():
    """c_2 = beta_u f_2/2, c_3 = b^3 kappa_3 f_3/6, c_4 = b^4 kappa_4 f_4/24, c_11 = rho sqrt(beta_u) b f_2."""
    for law, coupling, act in [(TwoPoint(0.1), "independent", "relu"), (Rademacher(), "sign", "tanh")]:
        model = MixedCumulantModel.create(d=3, beta_u=3.0, beta_v=7.0, nu=law, coupling=coupling)
        neuron = SingleNeuron(make_activation(act), 0.4)
        f = hermite_coefficients(neuron)
        poly = loss_polynomial(model, neuron)
        b = model.v_signal
        assert poly[(2, 0)] == pytest.approx(3.0 * f[2].item() / 2, rel=1e-12)
        assert poly[(0, 3)] == pytest.approx(b**3 * law.kappa3 * f[3].item() / 6, rel=1e-10, abs=1e-14)
        assert poly[(0, 4)] == pytest.approx(b**4 * law.kappa4 * f[4].item() / 24, rel=1e-10)
        assert poly[(1, 1)] == pytest.approx(model.rho * math.sqrt(3.0) * b * f[2].item(), rel=1e-10, abs=1e-14)


def test_hermite_moment_polynomial_is_expected_hermite():
    """E[He_k(y)]/k! at a given overlap, from the polynomial, equals direct quadrature over latents and g."""
    model = MixedCumulantModel.create(d=3, beta_u=2.0, beta_v=3.0, nu=Rademacher(), coupling="sign", q=0.7)
    lam, nu, w = model.latents.grid()
    g, wg = gauss_hermite(30)
    au, av = 0.3, -0.45
    b = model.v_signal
    y = (math.sqrt(model.beta_u) * au * lam[:, None, None] + b * av * nu[None, :, None]
         + math.sqrt(1 - b * b * av * av) * g[None, None, :])
    for k in range(1, 7):
        direct = (hermite_he(k, y)[k] * w[:, :, None] * wg).sum().item() / math.factorial(k)
        p = hermite_moment_polynomial(model, k)
        series = sum(p[i].item() * au**i * av ** (k - i) for i in range(k + 1))
        assert abs(series - direct) < 1e-10


@pytest.mark.parametrize("coupling", ["independent", "sign", "invisible"])
def test_series_matches_direct_quadrature_at_small_overlap(coupling):
    """sum c_ij alpha_u^i alpha_v^j (k <= 8) equals L(alpha) - L(0) from quadrature up to O(alpha^9)."""
    model = MixedCumulantModel.create(d=3, coupling=coupling)
    neuron = SingleNeuron(make_activation("tanh"), 0.5)
    poly = loss_polynomial(model, neuron, 8)
    for au, av in [(0.05, 0.05), (0.1, -0.07), (0.0, 0.12)]:
        series = sum(c * au**i * av**j for (i, j), c in poly.items())
        direct = (overlap_loss(model, neuron, au, av) - overlap_loss(model, neuron, 0.0, 0.0)).item()
        assert abs(series - direct) < 1e-7 * max(abs(direct), 1e-6) + 1e-11


@pytest.mark.parametrize("activation", ["relu", "abs", "linear"])
def test_blind_spot_symmetric_latent(activation):
    """H7: relu/abs/linear see no symmetric higher-order cumulant: L(alpha_v) - L(0) < 1e-10; f_4 = f_6 = 0."""
    model = MixedCumulantModel.create(d=3, beta_u=5.0, beta_v=5.0)
    neuron = SingleNeuron(make_activation(activation), 0.5)
    alphas = torch.linspace(0.02, 0.9, 12, dtype=torch.float64)
    diff = overlap_loss(model, neuron, 0.0, alphas) - overlap_loss(model, neuron, 0.0, 0.0)
    assert diff.abs().max().item() < 1e-10
    f = hermite_coefficients(neuron)
    assert abs(f[4].item()) < 1e-10 and abs(f[6].item()) < 1e-10


@pytest.mark.parametrize("activation", ["tanh", "erf", "sigmoid"])
def test_odd_activation_odd_coefficients_vanish(activation):
    """H7: odd sigma makes F_t even: f_1 = f_3 = f_5 = 0 to 1e-12, while f_4 != 0."""
    f = hermite_coefficients(SingleNeuron(make_activation(activation), 0.5))
    assert max(abs(f[1].item()), abs(f[3].item()), abs(f[5].item())) < 1e-12
    assert abs(f[4].item()) > 1e-3
