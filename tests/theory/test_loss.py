"""Population-loss reduction of the single neuron against independent computations."""

import math

import pytest
import torch

from easyhard import ConfigError
from easyhard._quadrature import gauss_hermite
from easyhard.data import BernoulliGauss, MixedCumulantModel, Rademacher, TwoPoint
from easyhard.diffusion import ou_noise
from easyhard.oracles import make_activation
from easyhard.theory import SingleNeuron, circle_minimiser, constant_term, overlap_loss


def _unit_w(model, alpha_u, alpha_v, alpha_m=0.0):
    u, v, m = model.spike_vectors(torch.float64)
    rest = torch.zeros(model.d, dtype=torch.float64)
    rest[-1] = 1.0  # e_d is orthogonal to the fixed spikes e_1, e_2, e_3
    return alpha_u * u + alpha_v * v + alpha_m * m + math.sqrt(1 - alpha_u**2 - alpha_v**2 - alpha_m**2) * rest


@pytest.mark.parametrize("activation,law,coupling,beta_m,skip,a_out", [
    ("tanh", Rademacher(), "independent", 0.0, None, 1.0),
    ("tanh", Rademacher(), "sign", 0.0, None, 1.0),
    ("relu", TwoPoint(0.2), "independent", 1.5, 0.3, 1.0),
    ("erf", BernoulliGauss(0.3), "independent", 0.0, None, -1.0),
])
def test_overlap_loss_matches_monte_carlo_of_full_loss(activation, law, coupling, beta_m, skip, a_out):
    """L_t(w) = C_t + E_y F_t(y): Monte Carlo of ||x0 - D_w(x_t)||^2 in d = 6 within 4 standard errors."""
    model = MixedCumulantModel.create(d=6, beta_u=3.0, beta_v=4.0, beta_m=beta_m, nu=law, coupling=coupling)
    neuron = SingleNeuron(make_activation(activation), t=0.4, skip=skip, a_out=a_out)
    alphas = (0.6, 0.5, 0.3 if beta_m else 0.0)
    w = _unit_w(model, *alphas)
    gen = torch.Generator().manual_seed(1)
    x0 = model.sample(400_000, gen, torch.float64)
    x_t, _ = ou_noise(x0, neuron.t, gen)
    h = x_t @ w
    den = neuron.c * x_t + neuron.a_out * neuron.activation(h)[:, None] * w
    per_sample = ((x0 - den) ** 2).sum(1)
    mc, se = per_sample.mean().item(), per_sample.std().item() / math.sqrt(per_sample.numel())
    exact = constant_term(model, neuron) + overlap_loss(model, neuron, *alphas).item()
    assert abs(mc - exact) < 4 * se, (mc, exact, se)


@pytest.mark.parametrize("activation", ["tanh", "relu", "abs", "linear", "sigmoid"])
def test_expected_f_matches_nested_gauss_hermite(activation):
    """E F_t(y), y ~ N(mu, var), via the Gaussian-moment reduction equals brute-force 2-D quadrature over (g, eta)."""
    neuron = SingleNeuron(make_activation(activation), t=0.3, skip=0.8, a_out=0.7)
    a, delta, c = neuron.a, neuron.delta, neuron.c
    g, w = gauss_hermite(200)
    for mu, var in [(0.0, 1.0), (0.7, 0.4), (-1.3, 2.5)]:
        y = mu + math.sqrt(var) * g[:, None]
        eta = g[None, :]
        h = a * y + math.sqrt(delta) * eta
        sig = neuron.activation(h)
        integrand = -2 * neuron.a_out * ((1 - c * a) * y - c * math.sqrt(delta) * eta) * sig + neuron.a_out**2 * sig**2
        brute = (w[:, None] * w[None, :] * integrand).sum().item()
        fast = neuron.expected_f(torch.tensor([mu], dtype=torch.float64), torch.tensor([var], dtype=torch.float64))
        tol = 1e-10 if activation not in ("relu", "abs") else 2e-4  # brute-force GH converges slowly on kinks
        assert abs(fast.item() - brute) < tol


def test_overlap_loss_validates_overlaps():
    model = MixedCumulantModel.create(d=4)
    neuron = SingleNeuron(make_activation("tanh"))
    with pytest.raises(ConfigError, match="alpha_u"):
        overlap_loss(model, neuron, 0.9, 0.9)


def test_single_neuron_rejects_bad_values():
    with pytest.raises(ConfigError, match="t"):
        SingleNeuron(make_activation("tanh"), t=0.0)
    with pytest.raises(ConfigError, match="a_out"):
        SingleNeuron(make_activation("tanh"), a_out=0.0)


@pytest.mark.parametrize("t,expected_ratio", [(0.3, 0.38), (0.5, 0.37), (1.0, 0.33)])
def test_circle_minimiser_sign_coupling(t, expected_ratio):
    """docs/theory/mcm.md section 7: exact tanh minimiser on the circle, beta = 5, sign coupling; (0.937, 0.350) at t = 0.5."""
    model = MixedCumulantModel.create(d=3, coupling="sign")
    au, av = circle_minimiser(model, SingleNeuron(make_activation("tanh"), t))
    assert abs(av / au - expected_ratio) < 0.006
    if t == 0.5:
        assert abs(au - 0.937) < 0.005 and abs(av - 0.350) < 0.005
    # it is a minimum: nearby points on the circle are not lower
    neuron = SingleNeuron(make_activation("tanh"), t)
    th = math.atan2(av, au)
    thetas = torch.tensor([th - 0.01, th, th + 0.01], dtype=torch.float64)
    values = overlap_loss(model, neuron, torch.cos(thetas), torch.sin(thetas))
    assert values[1] <= values[0] and values[1] <= values[2]
