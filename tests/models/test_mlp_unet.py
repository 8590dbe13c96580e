"""MLP denoiser (EDM preconditioning, time embedding, init) and the diffusers U-Net factory."""

import sys

import pytest
import torch

from easyhard._validate import ConfigError
from easyhard.diffusion import DDPMSchedule, eps_to_x0, x0_to_eps
from easyhard.models import MLPConfig, MLPDenoiser, UNetConfig, edm_coefficients, make_unet, n_parameters

SCHEDULE = DDPMSchedule()


def _mlp(seed=0, **kw):
    return MLPDenoiser(MLPConfig(**{"d": 12, "width": 32, "depth": 2, "time_dim": 16, **kw}),
                       torch.Generator().manual_seed(seed))


def test_mlp_shapes_for_flat_and_image_inputs():
    model = _mlp()
    flat = torch.randn(5, 12)
    assert model(flat, 10, SCHEDULE).shape == (5, 12)
    image = torch.randn(5, 3, 2, 2)
    assert model(image, torch.tensor([0, 1, 2, 500, 999]), SCHEDULE).shape == (5, 3, 2, 2)
    torch.testing.assert_close(model(image, 10, SCHEDULE).reshape(5, 12), model(image.reshape(5, 12), 10, SCHEDULE))
    with pytest.raises(ConfigError, match="x_t"):
        model(torch.randn(5, 13), 10, SCHEDULE)
    with pytest.raises(ConfigError, match="step index"):
        model(flat, 1000, SCHEDULE)


def test_edm_identity_with_zero_network():
    """F = 0 -> x0_hat = c_skip x_tilde, with x_tilde = x_t / sqrt(abar), c_skip = sd^2/(sigma^2 + sd^2)."""
    sd = 0.5
    model = _mlp(prediction="x0", sigma_data=sd)
    with torch.no_grad():
        model.out.weight.zero_()
        model.out.bias.zero_()
    x = torch.randn(4, 12, dtype=torch.float64)
    model = model.double()
    i = torch.tensor([3, 100, 400, 900])
    abar = SCHEDULE.alpha_bar(i)
    sigma2 = (1 - abar) / abar
    expected = sd**2 / (sigma2 + sd**2)[:, None] * x / abar.sqrt()[:, None]
    torch.testing.assert_close(model(x, i, SCHEDULE), expected)
    sigma, c_in, c_skip, c_out = edm_coefficients(abar, sd)
    # unit-variance training target (Karras et al. 2022, App. B.6): Var[(x0 - c_skip x_tilde) / c_out] = 1
    torch.testing.assert_close(((1 - c_skip) ** 2 * sd**2 + c_skip**2 * sigma**2) / c_out**2, torch.ones_like(abar))
    torch.testing.assert_close(c_in**2 * (sd**2 + sigma**2), torch.ones_like(abar))


def test_edm_input_is_scaled_by_c_in():
    """The network sees c_in x_tilde and its output is scaled by c_out (checked via a spy)."""
    model = _mlp(prediction="x0").double()
    seen = {}
    original = model.network

    def spy(x, index):
        seen["x"], seen["i"] = x, index
        return original(x, index)

    model.network = spy
    x = torch.randn(3, 12, dtype=torch.float64)
    out = model(x, 250, SCHEDULE)
    abar = torch.tensor(SCHEDULE.alpha_bar(250), dtype=torch.float64)
    sigma, c_in, c_skip, c_out = edm_coefficients(abar, 1.0)
    x_tilde = x / abar.sqrt()
    torch.testing.assert_close(seen["x"], c_in * x_tilde)
    torch.testing.assert_close(seen["i"], torch.full((3,), 250.0, dtype=torch.float64))
    torch.testing.assert_close(out, c_skip * x_tilde + c_out * original(c_in * x_tilde, seen["i"]))


def test_eps_and_x0_outputs_are_consistent():
    x = torch.randn(6, 12, dtype=torch.float64)
    i = torch.tensor([1, 50, 200, 500, 800, 999])
    a, s = SCHEDULE.coefficients(i)
    for pre in ("edm", "none"):
        eps_model = _mlp(seed=3, prediction="eps", preconditioning=pre).double()
        x0_model = _mlp(seed=3, prediction="x0", preconditioning=pre).double()
        eps = eps_model(x, i, SCHEDULE)
        torch.testing.assert_close(eps_model.predict_x0(x, i, SCHEDULE), eps_to_x0(eps, x, a, s))
        torch.testing.assert_close(x0_model.predict_x0(x, i, SCHEDULE), x0_model(x, i, SCHEDULE))
        if pre == "edm":  # same weights, same x0_hat: the two outputs are related by the conversion
            torch.testing.assert_close(eps, x0_to_eps(x0_model(x, i, SCHEDULE), x, a, s))


def test_gradients_flow_to_every_parameter():
    model = _mlp()
    x = torch.randn(8, 12)
    loss = (model(x, torch.randint(0, 1000, (8,)), SCHEDULE) - torch.randn(8, 12)).pow(2).mean()
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_time_embedding_changes_output():
    model = _mlp(preconditioning="none")
    x = torch.randn(4, 12)
    assert (model(x, 10, SCHEDULE) - model(x, 11, SCHEDULE)).abs().max() > 1e-4


def test_deterministic_init_from_generator():
    state = torch.random.get_rng_state()
    a, b, c = _mlp(seed=7), _mlp(seed=7), _mlp(seed=8)
    assert torch.equal(torch.random.get_rng_state(), state)  # global RNG untouched
    for (name, p), q, r in zip(a.named_parameters(), b.parameters(), c.parameters()):
        assert torch.equal(p, q), name
        assert not torch.equal(p, r), name


def test_mlp_config_validation():
    with pytest.raises(ConfigError, match="time_dim"):
        MLPConfig(d=4, time_dim=7)
    with pytest.raises(ConfigError, match="prediction"):
        MLPConfig(d=4, prediction="score")
    with pytest.raises(ConfigError, match="sigma_data"):
        MLPConfig(d=4, sigma_data=0)


def test_tiny_unet_forward_backward_and_init():
    config = UNetConfig.preset("tiny")
    model = make_unet(config, torch.Generator().manual_seed(0))
    assert model.n_parameters == n_parameters(model) > 0
    x = torch.randn(2, 3, 8, 8)
    out = model(x, torch.tensor([5, 900]), SCHEDULE)
    assert out.shape == x.shape
    out.pow(2).mean().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    again = make_unet(config, torch.Generator().manual_seed(0))
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), again.parameters()))
    with pytest.raises(ConfigError, match="x_t"):
        model(torch.randn(2, 3, 16, 16), 5, SCHEDULE)


def test_unet_config_validation_and_small_preset():
    small = UNetConfig.preset("small")
    assert (small.base_width, small.multipliers, small.attention_resolutions, small.resolutions) == (32, (1, 2, 2), (16,), (32, 16, 8))
    with pytest.raises(ConfigError, match="attention_resolutions"):
        UNetConfig(attention_resolutions=(12,))
    with pytest.raises(ConfigError, match="image_size"):
        UNetConfig(image_size=30)
    with pytest.raises(ConfigError, match="preset"):
        UNetConfig.preset("huge")


def test_missing_diffusers_message_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "diffusers", None)  # makes `import diffusers` raise ImportError
    with pytest.raises(ConfigError) as info:
        make_unet(UNetConfig.preset("tiny"))
    assert str(info.value) == "the U-Net needs the 'unet' extra: pip install 'easyhard[unet]'"
    assert "\n" not in str(info.value)
