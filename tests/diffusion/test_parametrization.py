import itertools
import math

import pytest
import torch

from easyhard import ConfigError
from easyhard.diffusion import (
    SPACES,
    convert,
    convert_mse,
    eps_to_score,
    eps_to_x0,
    ou_coefficients,
    score_to_eps,
    score_to_x0,
    x0_to_eps,
    x0_to_score,
)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _coefficient_cases(batch: int):
    t = torch.tensor([0.01, 0.3, 1.0, 4.0, 0.7][:batch], dtype=torch.float64)
    a_vec, s_vec = ou_coefficients(t)
    return [(0.6, 0.8), (0.9, 2.5), (a_vec, s_vec)]  # VP floats, non-VP floats, per-sample (B,)


@pytest.mark.parametrize("case", range(3))
@pytest.mark.parametrize("from_space, to_space", list(itertools.permutations(SPACES, 2)))
def test_round_trips_are_identity(case, from_space, to_space):
    x_t = torch.randn(5, 3, 4, 4, generator=_gen(0), dtype=torch.float64)
    pred = torch.randn(5, 3, 4, 4, generator=_gen(1), dtype=torch.float64)
    a, s = _coefficient_cases(5)[case]
    there = convert(pred, from_space, to_space, x_t, a, s)
    back = convert(there, to_space, from_space, x_t, a, s)
    torch.testing.assert_close(back, pred, rtol=1e-12, atol=1e-12)


def test_convert_matches_named_functions_and_formulas():
    x_t = torch.randn(6, 4, generator=_gen(2), dtype=torch.float64)
    x0_hat = torch.randn(6, 4, generator=_gen(3), dtype=torch.float64)
    a, s = 0.7, 0.5
    eps_hat = (x_t - a * x0_hat) / s
    score = (a * x0_hat - x_t) / s**2
    torch.testing.assert_close(x0_to_eps(x0_hat, x_t, a, s), eps_hat)
    torch.testing.assert_close(x0_to_score(x0_hat, x_t, a, s), score)
    torch.testing.assert_close(eps_to_score(eps_hat, s), -eps_hat / s)
    torch.testing.assert_close(score_to_eps(score, s), eps_hat)
    torch.testing.assert_close(eps_to_x0(eps_hat, x_t, a, s), x0_hat)
    torch.testing.assert_close(score_to_x0(score, x_t, a, s), x0_hat)
    torch.testing.assert_close(convert(x0_hat, "x0", "score", x_t, a, s), score)
    assert convert(x0_hat, "eps", "eps", x_t, a, s) is x0_hat


@pytest.mark.parametrize("t", [0.05, 0.5, 2.0])
def test_tweedie_on_isotropic_gaussian(t):
    """x0 ~ N(mu, sigma^2 I): x0_to_score(E[x0 | x_t]) equals grad log p_t, obtained by autograd
    of the exact marginal density N(a mu, (a^2 sigma^2 + s^2) I)."""
    a, s = ou_coefficients(t)
    d, sigma = 5, 1.7
    mu = torch.linspace(-1.0, 2.0, d, dtype=torch.float64)
    x_t = torch.randn(8, d, generator=_gen(4), dtype=torch.float64) * 2 + 0.5
    var = a**2 * sigma**2 + s**2
    posterior_mean = mu + a * sigma**2 * (x_t - a * mu) / var

    x = x_t.clone().requires_grad_(True)
    log_density = torch.distributions.Normal(a * mu, math.sqrt(var)).log_prob(x).sum()
    (autograd_score,) = torch.autograd.grad(log_density, x)

    torch.testing.assert_close(autograd_score, -(x_t - a * mu) / var, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(x0_to_score(posterior_mean, x_t, a, s), autograd_score, rtol=1e-10, atol=1e-12)
    eps_hat = x0_to_eps(posterior_mean, x_t, a, s)
    torch.testing.assert_close(eps_to_score(eps_hat, s), autograd_score, rtol=1e-10, atol=1e-12)


def test_mse_scaling_relations_hold_exactly():
    """With x_t = a x0 + s eps, a prediction's errors in the three spaces are proportional:
    eps-MSE = (a^2/s^2) x0-MSE and score-MSE (target -eps/s) = eps-MSE / s^2, sample by sample."""
    B, d = 16, 7
    t = torch.linspace(0.02, 3.0, B, dtype=torch.float64)
    a, s = ou_coefficients(t)
    x0 = torch.randn(B, d, generator=_gen(5), dtype=torch.float64)
    eps = torch.randn(B, d, generator=_gen(6), dtype=torch.float64)
    x_t = a[:, None] * x0 + s[:, None] * eps
    x0_hat = x0 + 0.3 * torch.randn(B, d, generator=_gen(7), dtype=torch.float64)

    mse_x0 = ((x0_hat - x0) ** 2).mean(dim=1)
    mse_eps = ((x0_to_eps(x0_hat, x_t, a, s) - eps) ** 2).mean(dim=1)
    mse_score = ((x0_to_score(x0_hat, x_t, a, s) - (-eps / s[:, None])) ** 2).mean(dim=1)

    torch.testing.assert_close(mse_eps, a**2 / s**2 * mse_x0, rtol=1e-10, atol=0)
    torch.testing.assert_close(mse_score, mse_eps / s**2, rtol=1e-10, atol=0)
    mses = {"x0": mse_x0, "eps": mse_eps, "score": mse_score}
    for src, dst in itertools.product(SPACES, SPACES):
        torch.testing.assert_close(convert_mse(mses[src], src, dst, a, s), mses[dst], rtol=1e-10, atol=0)


def test_bad_inputs_raise_config_error():
    x = torch.zeros(3, 2)
    with pytest.raises(ConfigError, match="from_space"):
        convert(x, "v", "x0", x, 0.5, 0.5)
    with pytest.raises(ConfigError, match="to_space"):
        convert_mse(1.0, "x0", "velocity", 0.5, 0.5)
    with pytest.raises(ConfigError, match="s must"):
        x0_to_eps(x, x, 0.5, 0.0)
    with pytest.raises(ConfigError, match="a must"):
        eps_to_x0(x, x, -0.5, 0.5)
    with pytest.raises(ConfigError, match="coefficient of shape"):
        x0_to_score(x, x, torch.ones(4), 0.5)
