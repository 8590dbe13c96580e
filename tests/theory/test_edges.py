"""Numerics of the theory commands (exponents, oracle-mse, calibrate) at the edges of their valid ranges
(docs/theory/mcm.md section 10): refused outside with a ConfigError naming the parameter, finite and
correct inside (against adaptive quadrature or asymptotic forms), issue 14."""

import math

import numpy as np
import pytest
import torch
from scipy.integrate import quad

from easyhard._validate import ConfigError
from easyhard.oracles import per_direction_mse
from easyhard.theory import calibrate, diffusion_exponents, hermite_coefficients, loss_polynomial
from easyhard.theory.calibration import check_dimension, escape_median
from easyhard.theory.hermite import hermite_he
from easyhard.theory.problem import MCMSettings, NeuronSettings

T_MIN, T_MAX, BETA_MAX = 1e-4, 20.0, 100.0


def _problem(act="tanh", t=0.5, **mcm):
    settings = MCMSettings(**mcm)
    return settings.model(), NeuronSettings(activation=act, t=t).neuron(settings)


def _s1(zeta):
    settings = MCMSettings(nu="bernoulli_gauss", nu_param=0.1, beta_u=0.0, beta_v=20.0)
    neuron = NeuronSettings(activation="tanh", t=0.1, a_out=-1.0).neuron(settings)
    return calibrate(settings.model(), neuron, "v", zeta=zeta)


@pytest.mark.parametrize("make, field", [
    (lambda: MCMSettings(beta_u=1e308), "beta_u"),
    (lambda: MCMSettings(beta_v=BETA_MAX * 1.01), "beta_v"),
    (lambda: NeuronSettings(t=1e300), "t"),
    (lambda: NeuronSettings(t=1e-300), "t"),
    (lambda: NeuronSettings(t=T_MAX * 1.01), "t"),
    (lambda: per_direction_mse(MCMSettings().model(), 1e300), "t"),
    (lambda: per_direction_mse(MCMSettings().model().__class__(beta_u=1e3), 0.5), "beta_u"),
    (lambda: diffusion_exponents(*_problem(), k_max=100000), "k_max"),
    (lambda: hermite_coefficients(_problem()[1], 17), "k_max"),
    (lambda: calibrate(*_problem(beta_u=0.0), zeta=1e300), "zeta"),
    (lambda: calibrate(*_problem(beta_u=0.0), zeta=1e-300), "zeta"),
    (lambda: calibrate(*_problem(beta_u=0.0), eps=1e300), "eps"),
    (lambda: calibrate(*_problem(beta_u=0.0), eps=1e-300), "eps"),
    (lambda: check_dimension(99999999999999999999999, "--dims", 8), "--dims"),
])
def test_out_of_range_refused_naming_the_parameter(make, field):
    with pytest.raises(ConfigError) as err:
        make()
    message = str(err.value)
    assert message.startswith(field + " ") and "\n" not in message


def test_dimension_bound_applies_to_the_calibration_table():
    cal = _s1(0.3)
    row = cal.at_dimension(10**9)
    assert all(math.isfinite(row[key]) for key in ("step", "n_med"))
    with pytest.raises(ConfigError, match="^d must"):
        cal.at_dimension(10**9 + 1)


def _adaptive_f(neuron, k_max):
    """f_k by adaptive quadrature split at 0 and +-1 (the reference)."""
    def integrand(g, k):
        x = torch.tensor([g], dtype=torch.float64)
        return float(neuron.f(x)[0] * hermite_he(k, x)[k, 0]) * math.exp(-g * g / 2) / math.sqrt(2 * math.pi)
    pieces = ((-14, -1), (-1, 0), (0, 1), (1, 14))
    return np.array([sum(quad(integrand, lo, hi, args=(k,), epsabs=1e-14, epsrel=1e-12, limit=200)[0]
                         for lo, hi in pieces) for k in range(k_max + 1)])


@pytest.mark.parametrize("act, t, beta_v", [("relu", 1e-3, 5.0), ("abs", 1e-3, 5.0), ("matched", 3e-3, 20.0)])
def test_hermite_coefficients_match_adaptive_quadrature_at_small_t(act, t, beta_v):
    # 200-node Gauss-Hermite erred by 1e-4 .. 6e-3 here (kink / step of F_t narrower than its node spacing)
    _, neuron = _problem(act, t, beta_v=beta_v)
    np.testing.assert_allclose(hermite_coefficients(neuron, 4).numpy(), _adaptive_f(neuron, 4), rtol=0, atol=1e-10)


def test_small_t_limit_is_the_square_of_the_activation():
    # F_t(y) -> sigma(y)^2 + O(t) as t -> 0 (c = e^-t, a_out = 1); measured |f_k(t) - f_k(0)| <= 5 t for k <= 4
    _, neuron = _problem("tanh", T_MIN)
    f = hermite_coefficients(neuron, 4).numpy()
    limit = [quad(lambda g, k=k: math.tanh(g) ** 2 * float(hermite_he(k, torch.tensor([g]))[k, 0])
                  * math.exp(-g * g / 2) / math.sqrt(2 * math.pi), -14, 14, limit=200)[0] for k in range(5)]
    np.testing.assert_allclose(f, limit, atol=50 * T_MIN)


def test_large_t_limit_has_no_signal():
    model, neuron = _problem("tanh", T_MAX, beta_u=BETA_MAX, beta_v=BETA_MAX)
    # the signal vanishes like a = e^-t: |c_ij| <= 10 beta_u a (c_20 = beta_u f_2 / 2, f_2 ~ 2.4 a measured)
    bound = 10 * BETA_MAX * math.exp(-T_MAX)
    assert all(abs(c) <= bound for c in loss_polynomial(model, neuron, 8).values())
    mse = per_direction_mse(model, T_MAX)  # x_t is noise: every MSE is the prior variance
    for direction, prior in (("u", 1 + BETA_MAX), ("v", 1.0)):
        assert mse[direction]["bayes"] == pytest.approx(prior, rel=1e-12)
        assert mse[direction]["linear"] == pytest.approx(prior, rel=1e-12)


def test_parity_zeros_stay_zero_at_the_beta_edge():
    # linear sigma: the loss is quadratic and, with the invisible coupling (rho = 0), blind to v; without the
    # rounding floor, parity residues times beta_u^(i/2) (i <= 15) faked an alpha_u^i alpha_v term
    model, neuron = _problem("linear", beta_u=BETA_MAX, coupling="invisible")
    poly = loss_polynomial(model, neuron, 16)
    assert {ij for ij, c in poly.items() if c != 0.0} <= {(2, 0), (1, 1), (0, 2)}
    assert diffusion_exponents(model, neuron, 16)["v"].exponent is None


@pytest.mark.parametrize("t", [T_MIN, T_MAX])
@pytest.mark.parametrize("beta", [0.0, BETA_MAX])
def test_exponent_outputs_are_finite_at_the_corners(t, beta):
    model, neuron = _problem("matched", t, beta_u=beta, beta_v=beta, coupling="sign")
    result = diffusion_exponents(model, neuron, 16)
    assert torch.isfinite(hermite_coefficients(neuron, 16)).all()
    for e in result.values():
        assert all(x is None or math.isfinite(x) for x in (e.coefficient, e.slope))


def test_oracle_mse_small_t_asymptote():
    # independent latents, beta_u = beta_v = 100: MSE / Delta -> 1 along both directions as t -> 0,
    # and the Gaussian lambda makes Bayes equal Wiener along u
    model = MCMSettings(beta_u=BETA_MAX, beta_v=BETA_MAX).model()
    mse = per_direction_mse(model, T_MIN)
    delta = -math.expm1(-2 * T_MIN)
    assert mse["u"]["bayes"] == pytest.approx(mse["u"]["linear"], rel=1e-10)
    for direction in ("u", "v"):
        assert mse[direction]["bayes"] / delta == pytest.approx(1.0, abs=0.05)
        assert mse[direction]["bayes"] <= mse[direction]["linear"] * (1 + 1e-12)


def test_escape_median_large_zeta_asymptote():
    # zeta -> inf: the drift alone, T = 1 / (2 zeta s0^2) for k = 4, whose median is 1 / (2 zeta 0.67449^2)
    assert escape_median(100.0, 4) * 100.0 == pytest.approx(1 / (2 * 0.6744897501960817**2), rel=0.02)


@pytest.mark.parametrize("zeta", [0.02, 100.0])
def test_calibration_is_finite_at_the_zeta_edges(zeta):
    cal = _s1(zeta)
    values = [cal.c_k, cal.G2, cal.R, cal.zeta, cal.eps, cal.t_star, cal.n_med_coefficient, cal.barrier]
    assert all(math.isfinite(v) and v != 0 for v in values)
    assert cal.at_dimension(8)["n_med"] > 0
