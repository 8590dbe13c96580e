import pytest
import torch

from easyhard import ConfigError
from easyhard.diffusion import ou_coefficients
from easyhard.oracles.empirical import empirical_denoiser, empirical_score


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=_gen(seed), dtype=torch.float64)


def _brute_force(x_t: torch.Tensor, train: torch.Tensor, a: float, s: float) -> torch.Tensor:
    """sum_mu softmax_mu(-||x_t - a x_mu||^2 / (2 s^2)) x_mu over all pairs at once."""
    sq_dist = ((x_t[:, None, :] - a * train[None, :, :]) ** 2).sum(dim=-1)
    return torch.softmax(-sq_dist / (2 * s**2), dim=1) @ train


@pytest.mark.parametrize("t", [0.05, 0.5, 2.0])
def test_chunked_equals_unchunked_and_brute_force(t):
    a, s = ou_coefficients(t)
    train, x_t = _randn(1000, 5, seed=0), _randn(37, 5, seed=1)
    whole = empirical_denoiser(x_t, train, a, s, chunk_size=10**6, query_chunk=10**6)
    chunked = empirical_denoiser(x_t, train, a, s, chunk_size=7, query_chunk=5)
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-12)
    torch.testing.assert_close(whole, _brute_force(x_t, train, a, s), rtol=0, atol=1e-12)


def test_score_is_gradient_of_log_mixture_density():
    """The noised empirical measure has log p_t(x) = logsumexp_mu(-||x - a x_mu||^2 / (2 s^2)) + const."""
    a, s = ou_coefficients(0.3)
    train, x_t = _randn(200, 4, seed=2), _randn(9, 4, seed=3)
    x = x_t.clone().requires_grad_(True)
    log_p = torch.logsumexp(-((x[:, None, :] - a * train) ** 2).sum(dim=-1) / (2 * s**2), dim=1).sum()
    (grad,) = torch.autograd.grad(log_p, x)
    torch.testing.assert_close(empirical_score(x_t, train, a, s, chunk_size=33), grad, rtol=1e-10, atol=1e-10)


def test_per_sample_coefficients_and_image_shapes():
    t = torch.tensor([0.01, 0.2, 1.0, 3.0], dtype=torch.float64)
    a, s = ou_coefficients(t)
    train, x_t = _randn(300, 2, 3, 3, seed=4), _randn(4, 2, 3, 3, seed=5)
    out = empirical_denoiser(x_t, train, a, s, chunk_size=64, query_chunk=3)
    assert out.shape == x_t.shape
    for b in range(4):
        expected = _brute_force(x_t[b:b + 1].flatten(1), train.flatten(1), float(a[b]), float(s[b]))
        torch.testing.assert_close(out[b].flatten(), expected[0], rtol=0, atol=1e-12)


def test_float32_queries_with_float64_training_set():
    a, s = ou_coefficients(0.5)
    train, x_t = _randn(500, 3, seed=6), _randn(10, 3, seed=7)
    out = empirical_denoiser(x_t.float(), train, a, s, chunk_size=128)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), _brute_force(x_t, train, a, s), rtol=1e-5, atol=1e-5)


def test_small_noise_returns_nearest_training_point():
    a, s = ou_coefficients(1e-4)
    train, x_t = _randn(50, 3, seed=8), _randn(20, 3, seed=9)
    sq_dist = ((x_t[:, None, :] / a - train[None]) ** 2).sum(dim=-1)
    top2 = sq_dist.topk(2, dim=1, largest=False).values
    # precondition: the runner-up has relative weight exp(-a^2 gap / (2 s^2)) < e^-25
    assert bool(((top2[:, 1] - top2[:, 0]) * a**2 / (2 * s**2) > 25).all())
    nearest = train[sq_dist.argmin(dim=1)]
    torch.testing.assert_close(empirical_denoiser(x_t, train, a, s, chunk_size=16), nearest, rtol=0, atol=1e-6)


@pytest.mark.parametrize("t", [1e-3, 0.5, 20.0])
def test_single_training_point_is_returned_for_any_time(t):
    a, s = ou_coefficients(t)
    point = _randn(1, 4, seed=10)
    out = empirical_denoiser(_randn(6, 4, seed=11) * 5, point, a, s)
    torch.testing.assert_close(out, point.expand(6, 4), rtol=0, atol=1e-12)


def test_large_time_tends_to_training_mean():
    a, s = ou_coefficients(12.0)
    train, x_t = _randn(400, 3, seed=12) + 2.0, _randn(8, 3, seed=13)
    out = empirical_denoiser(x_t, train, a, s, chunk_size=50)
    torch.testing.assert_close(out, train.mean(dim=0).expand(8, 3), rtol=0, atol=1e-3)


def test_large_gaussian_training_set_approaches_wiener_denoiser():
    """For training data from N(0, I) and many samples, D_emp(x_t) -> E[x0 | x_t] = a x_t
    (a^2 + s^2 = 1)."""
    a, s = ou_coefficients(1.0)
    train, x_t = _randn(20_000, 2, seed=14), _randn(100, 2, seed=15)
    out = empirical_denoiser(x_t, train, a, s)
    assert float((out - a * x_t).abs().max()) < 0.05


def test_bad_inputs_raise_config_error():
    train, x_t = torch.zeros(5, 3), torch.zeros(2, 3)
    with pytest.raises(ConfigError, match="train must"):
        empirical_denoiser(x_t, torch.zeros(5, 4), 0.5, 0.5)
    with pytest.raises(ConfigError, match="train must"):
        empirical_denoiser(x_t, torch.zeros(0, 3), 0.5, 0.5)
    with pytest.raises(ConfigError, match="chunk_size"):
        empirical_denoiser(x_t, train, 0.5, 0.5, chunk_size=0)
    with pytest.raises(ConfigError, match="query_chunk"):
        empirical_denoiser(x_t, train, 0.5, 0.5, query_chunk=0)
    with pytest.raises(ConfigError, match="s must"):
        empirical_score(x_t, train, 0.5, -1.0)
    with pytest.raises(ConfigError, match="a must"):
        empirical_denoiser(x_t, train, torch.ones(2, 3), 0.5)
