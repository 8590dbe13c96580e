import math

import pytest
import torch

from easyhard import ConfigError
from easyhard.diffusion import ou_coefficients, ou_noise, per_sample, perturb


@pytest.mark.parametrize("t", [1e-8, 1e-3, 0.3, 1.0, 5.0])
def test_ou_coefficients_float_closed_form(t):
    a, s = ou_coefficients(t)
    assert isinstance(a, float) and isinstance(s, float)
    assert a == pytest.approx(math.exp(-t), rel=1e-15)
    # s^2 = Delta_t = 1 - e^{-2t}; for small t, Delta_t = 2t - 2t^2 + O(t^3)
    delta = 2 * t - 2 * t**2 + 4 * t**3 / 3 if t < 1e-2 else 1 - math.exp(-2 * t)
    assert s**2 == pytest.approx(delta, rel=1e-10)
    assert a**2 + s**2 == pytest.approx(1.0, abs=1e-15)


def test_ou_coefficients_tensor_matches_float():
    t = torch.tensor([[1e-4, 0.5], [2.0, 7.0]], dtype=torch.float64)
    a, s = ou_coefficients(t)
    assert a.shape == t.shape and s.shape == t.shape
    for idx in [(0, 0), (0, 1), (1, 0), (1, 1)]:
        a_ref, s_ref = ou_coefficients(float(t[idx]))
        assert float(a[idx]) == pytest.approx(a_ref, rel=1e-14)
        assert float(s[idx]) == pytest.approx(s_ref, rel=1e-14)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf"), torch.tensor([0.5, 0.0]),
                                 torch.tensor([1.0, float("nan")])])
def test_ou_coefficients_rejects_nonpositive_time(bad):
    with pytest.raises(ConfigError, match="t must"):
        ou_coefficients(bad)


def test_ou_noise_formula_and_reproducibility():
    x0 = torch.randn(8, 3, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x_t, xi = ou_noise(x0, 0.7, generator=torch.Generator().manual_seed(5))
    expected_xi = torch.randn(x0.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    torch.testing.assert_close(xi, expected_xi, rtol=0, atol=0)
    a, s = math.exp(-0.7), math.sqrt(1 - math.exp(-1.4))
    torch.testing.assert_close(x_t, a * x0 + s * xi, rtol=1e-15, atol=1e-15)
    x_t_again, _ = ou_noise(x0, 0.7, generator=torch.Generator().manual_seed(5))
    assert torch.equal(x_t, x_t_again)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ou_noise_keeps_dtype_and_device(dtype):
    x0 = torch.zeros(4, 5, dtype=dtype)
    x_t, xi = ou_noise(x0, torch.full((4,), 0.3), generator=torch.Generator().manual_seed(0))
    assert x_t.dtype == dtype and xi.dtype == dtype and x_t.device == x0.device


def test_ou_noise_per_sample_time_reshapes_to_batch():
    x0 = torch.randn(3, 2, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    t = torch.tensor([0.01, 0.5, 3.0], dtype=torch.float64)
    x_t, xi = ou_noise(x0, t, generator=torch.Generator().manual_seed(3))
    for b in range(3):
        a, s = ou_coefficients(float(t[b]))
        torch.testing.assert_close(x_t[b], a * x0[b] + s * xi[b], rtol=1e-14, atol=1e-14)


def test_ou_noise_moments():
    """x_t | x0 ~ N(e^{-t} x0, (1 - e^{-2t}) I): check mean and variance to 5 standard errors."""
    n, t = 200_000, 0.4
    x0 = torch.full((n, 1), 2.0, dtype=torch.float64)
    x_t, _ = ou_noise(x0, t, generator=torch.Generator().manual_seed(11))
    a, s = ou_coefficients(t)
    assert abs(x_t.mean().item() - 2 * a) < 5 * s / math.sqrt(n)
    # standard error of the sample variance of a Gaussian: s^2 sqrt(2 / n)
    assert abs(x_t.var().item() - s**2) < 5 * s**2 * math.sqrt(2 / n)


def test_ou_noise_does_not_touch_global_rng():
    torch.manual_seed(123)
    state = torch.get_rng_state()
    ou_noise(torch.zeros(10, 2), 1.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(state, torch.get_rng_state())


def test_perturb_and_per_sample_validation():
    x0 = torch.zeros(4, 3)
    with pytest.raises(ConfigError, match="s must"):
        perturb(x0, 0.5, 0.0)
    with pytest.raises(ConfigError, match="a must"):
        perturb(x0, torch.tensor([1.0, -1.0, 1.0, 1.0]), 0.5)
    with pytest.raises(ConfigError, match="coefficient of shape"):
        per_sample(torch.ones(5), x0)
    assert per_sample(torch.ones(4), x0).shape == (4, 1)
    assert per_sample(0.3, x0) == 0.3
