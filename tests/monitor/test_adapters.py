"""Known-answer tests of the monitor's model adapters (easyhard.monitor.adapters)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from easyhard._validate import ConfigError
from easyhard.diffusion.ddpm import DDPMSchedule
from easyhard.diffusion.denoiser import Denoiser, NoiseLevel, predict_eps, predict_x0
from easyhard.models import EnsembleConfig, EnsembleMLP, MLPConfig, MLPDenoiser
from easyhard.monitor import adapters

diffusers_lib = pytest.importorskip("diffusers")

STEPS = torch.tensor([0, 300, 700])  # per-sample step indices, away from the last steps where a -> 0


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


@pytest.fixture(scope="module")
def unet() -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return diffusers_lib.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                                         layers_per_block=1, norm_num_groups=4,
                                         down_block_types=("DownBlock2D", "DownBlock2D"),
                                         up_block_types=("UpBlock2D", "UpBlock2D")).eval()


def gaussian_x(shape: tuple[int, ...], seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ----------------------------------------------------------------------------------------------------- diffusers
def test_diffusers_epsilon_returns_the_unet_output_exactly(unet: nn.Module) -> None:
    scheduler = diffusers_lib.DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    denoiser = adapters.diffusers(unet, scheduler)
    assert isinstance(denoiser, Denoiser) and denoiser.prediction == "eps"
    assert denoiser.schedule == DDPMSchedule("linear", 1000, 1e-4, 0.02, index_base=0)
    x_t = gaussian_x((3, 1, 8, 8), 1, torch.float32)
    expected = unet(x_t, STEPS).sample
    assert torch.equal(denoiser(x_t, NoiseLevel.at_index(denoiser.schedule, STEPS)), expected)
    expected_int = unet(x_t, torch.full((3,), 999)).sample
    assert torch.equal(denoiser(x_t, NoiseLevel.at_index(denoiser.schedule, 999)), expected_int)


@pytest.mark.parametrize("make, kind", [
    (lambda: diffusers_lib.DDPMScheduler(beta_schedule="linear"), "linear"),
    (lambda: diffusers_lib.DDPMScheduler(num_train_timesteps=50, beta_start=2e-4, beta_end=0.012), "linear"),
    (lambda: diffusers_lib.DDIMScheduler(beta_schedule="squaredcos_cap_v2"), "cosine"),
    (lambda: diffusers_lib.DDIMScheduler(num_train_timesteps=200, beta_schedule="squaredcos_cap_v2"), "cosine"),
])
def test_built_schedule_equals_the_schedulers_alphas_cumprod(make, kind: str) -> None:
    scheduler = make()
    schedule = adapters.schedule_from_diffusers(scheduler)
    assert (schedule.kind, schedule.T, schedule.index_base) == (kind, scheduler.config.num_train_timesteps, 0)
    theirs = scheduler.alphas_cumprod.double()
    relative = ((schedule.alphas_bar - theirs).abs() / schedule.alphas_bar).max()
    assert relative < 2e-5  # float32 storage of the scheduler
    if kind == "linear":
        assert schedule.beta_start == scheduler.config.beta_start and schedule.beta_end == scheduler.config.beta_end


def test_v_prediction_recovers_x0_and_eps(unet: nn.Module) -> None:
    scheduler = diffusers_lib.DDIMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction")
    schedule = adapters.schedule_from_diffusers(scheduler)
    x0, eps = gaussian_x((3, 1, 8, 8), 2), gaussian_x((3, 1, 8, 8), 3)
    a, s = (c.reshape(3, 1, 1, 1) for c in schedule.coefficients(STEPS))
    x_t = a * x0 + s * eps
    seen = {}

    def true_v(x: torch.Tensor, t: torch.Tensor) -> SimpleNamespace:
        seen["x"], seen["t"] = x, t
        return SimpleNamespace(sample=a * eps - s * x0)

    denoiser = adapters.diffusers(true_v, scheduler)
    level = NoiseLevel.at_index(denoiser.schedule, STEPS)
    assert denoiser.prediction == "eps"
    assert torch.allclose(predict_eps(denoiser, x_t, level), eps, rtol=0, atol=1e-10)
    assert torch.allclose(predict_x0(denoiser, x_t, level), x0, rtol=0, atol=1e-5)
    assert seen["x"] is x_t and seen["t"].dtype == torch.long and torch.equal(seen["t"], STEPS)
    # the scheduler's own v -> eps (DDIMScheduler.step): eps = sqrt(abar) v + sqrt(1 - abar) x_t
    abar = scheduler.alphas_cumprod[STEPS].double().reshape(3, 1, 1, 1)
    v = true_v(x_t, STEPS).sample
    assert torch.allclose(denoiser(x_t, level), abar.sqrt() * v + (1 - abar).sqrt() * x_t, rtol=0, atol=1e-5)


def test_sample_prediction_returns_x0() -> None:
    scheduler = diffusers_lib.DDPMScheduler(prediction_type="sample")
    schedule = adapters.schedule_from_diffusers(scheduler)
    x0, eps = gaussian_x((3, 4), 4), gaussian_x((3, 4), 5)
    a, s = (c.reshape(3, 1) for c in schedule.coefficients(STEPS))
    x_t = a * x0 + s * eps
    denoiser = adapters.diffusers(lambda x, t: x0, scheduler)  # a plain tensor output is accepted
    level = NoiseLevel.at_index(denoiser.schedule, STEPS)
    assert denoiser.prediction == "x0"
    assert torch.equal(predict_x0(denoiser, x_t, level), x0)
    assert torch.allclose(predict_eps(denoiser, x_t, level), eps, rtol=0, atol=1e-10)


def test_unsupported_beta_schedules_are_refused(unet: nn.Module) -> None:
    with pytest.raises(ConfigError) as err:
        adapters.diffusers(unet, diffusers_lib.DDPMScheduler(beta_schedule="scaled_linear"))
    assert one_line(err) == ("scheduler beta_schedule must be one of linear, squaredcos_cap_v2 "
                             "(got 'scaled_linear')")
    with pytest.raises(ConfigError, match="trained_betas must be None") as err:
        adapters.diffusers(unet, diffusers_lib.DDPMScheduler(trained_betas=[1e-4, 2e-4, 3e-4]))
    one_line(err)


def test_modified_betas_fail_the_verification(unet: nn.Module) -> None:
    zero_snr = diffusers_lib.DDIMScheduler(beta_schedule="squaredcos_cap_v2", rescale_betas_zero_snr=True)
    with pytest.raises(ConfigError, match="alphas_cumprod differs from the squaredcos_cap_v2 schedule") as err:
        adapters.diffusers(unet, zero_snr)
    one_line(err)
    config = dict(diffusers_lib.DDPMScheduler().config)
    off = SimpleNamespace(config=config, alphas_cumprod=DDPMSchedule().alphas_bar * (1 + 3e-4))
    with pytest.raises(ConfigError, match=r"relative difference 0.0003 at step 0"):
        adapters.diffusers(unet, off)
    near = SimpleNamespace(config=config, alphas_cumprod=DDPMSchedule().alphas_bar * (1 + 3e-5))
    assert adapters.diffusers(unet, near).schedule == DDPMSchedule()


def test_unknown_prediction_type_is_one_line(unet: nn.Module) -> None:
    scheduler = SimpleNamespace(config={"num_train_timesteps": 10, "prediction_type": "score"})
    with pytest.raises(ConfigError) as err:
        adapters.diffusers(unet, scheduler)
    assert one_line(err) == "prediction_type must be one of epsilon, sample, v_prediction (got 'score')"
    with pytest.raises(ConfigError, match="scheduler must have a .config mapping"):
        adapters.diffusers(unet, object())


def test_levels_of_another_schedule_are_refused(unet: nn.Module) -> None:
    denoiser = adapters.diffusers(unet, diffusers_lib.DDPMScheduler())
    x_t = gaussian_x((2, 1, 8, 8), 6, torch.float32)
    with pytest.raises(ConfigError, match="schedule must be the level's schedule"):
        denoiser(x_t, NoiseLevel.at_index(DDPMSchedule("cosine"), 10))
    with pytest.raises(ConfigError, match="level must be a step of a DDPM schedule"):
        denoiser(x_t, NoiseLevel.at_ou_time(0.5))


# ----------------------------------------------------------------------------------------------------------- EDM
C = 1.7  # x0 ~ N(0, C^2 I)


def ve_posterior_mean(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """E[x0 | x0 + sigma n = x] = C^2 / (C^2 + sigma^2) x."""
    return C**2 / (C**2 + sigma.reshape(-1, *[1] * (x.ndim - 1)) ** 2) * x


def vp_posterior_mean(x_t: torch.Tensor, schedule: DDPMSchedule, steps: torch.Tensor) -> torch.Tensor:
    """E[x0 | a x0 + s eps = x_t] = a C^2 / (a^2 C^2 + s^2) x_t."""
    a, s = (c.reshape(-1, *[1] * (x_t.ndim - 1)) for c in schedule.coefficients(steps))
    return a * C**2 / (a**2 * C**2 + s**2) * x_t


@pytest.mark.parametrize("shape", [(3, 5), (3, 2, 4, 4)])
def test_edm_maps_vp_levels_to_the_ve_posterior_mean(shape: tuple[int, ...]) -> None:
    seen = {}

    def exact(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        seen["sigma"] = sigma
        return ve_posterior_mean(x, sigma)

    denoiser = adapters.edm(exact)
    assert denoiser.prediction == "x0" and denoiser.schedule == DDPMSchedule()
    x_t = gaussian_x(shape, 7)
    level = NoiseLevel.at_index(denoiser.schedule, STEPS)
    expected = vp_posterior_mean(x_t, denoiser.schedule, STEPS)
    assert torch.allclose(predict_x0(denoiser, x_t, level), expected, rtol=0, atol=1e-6)
    a, s = denoiser.schedule.coefficients(STEPS)
    assert seen["sigma"].shape == (3,) and seen["sigma"].dtype == torch.float64
    assert torch.allclose(seen["sigma"], s / a, rtol=1e-12, atol=0)


def test_edm_accepts_any_level() -> None:
    denoiser = adapters.edm(ve_posterior_mean, DDPMSchedule("cosine", 100))
    x_t = gaussian_x((4, 3), 8)
    t = 0.4
    a, s = math.exp(-t), math.sqrt(1 - math.exp(-2 * t))
    out = denoiser(x_t, NoiseLevel.at_ou_time(t))
    assert torch.allclose(out, a * C**2 / (a**2 * C**2 + s**2) * x_t, rtol=0, atol=1e-12)


def test_edm_raw_with_the_exact_network_is_the_posterior_mean() -> None:
    sd = 0.5

    def exact_raw(y: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        """The F for which c_skip x + c_out F(c_in x, c_noise) is the VE posterior mean (Karras et al. table 1)."""
        sigma = torch.exp(4 * c_noise).reshape(-1, *[1] * (y.ndim - 1))
        x = y * torch.sqrt(sigma**2 + sd**2)
        c_skip, c_out = sd**2 / (sigma**2 + sd**2), sigma * sd / torch.sqrt(sigma**2 + sd**2)
        return (C**2 / (C**2 + sigma**2) * x - c_skip * x) / c_out

    denoiser = adapters.edm_raw(exact_raw, sigma_data=sd)
    x_t = gaussian_x((3, 6), 9)
    level = NoiseLevel.at_index(denoiser.schedule, STEPS)
    expected = vp_posterior_mean(x_t, denoiser.schedule, STEPS)
    assert torch.allclose(predict_x0(denoiser, x_t, level), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("sd", [0.5, 1.3])
def test_edm_raw_preconditioning_coefficients(sd: float) -> None:
    seen = {}

    def recorder(y: torch.Tensor, c_noise: torch.Tensor, value: float) -> torch.Tensor:
        seen["y"], seen["c_noise"] = y, c_noise
        return torch.full_like(y, value)

    schedule = DDPMSchedule()
    level = NoiseLevel.at_index(schedule, STEPS[1:])
    a, s = (c.reshape(2, 1) for c in schedule.coefficients(STEPS[1:]))
    sigma = s / a
    x_t = gaussian_x((2, 3), 10)
    x = x_t / a
    skip_only = adapters.edm_raw(lambda y, n: recorder(y, n, 0.0), sd)(x_t, level)  # D = c_skip x
    assert torch.allclose(skip_only, sd**2 / (sigma**2 + sd**2) * x, rtol=1e-12, atol=0)
    assert torch.allclose(seen["y"], x / torch.sqrt(sigma**2 + sd**2), rtol=1e-12, atol=0)  # c_in x
    assert torch.allclose(seen["c_noise"], torch.log(sigma.reshape(2)) / 4, rtol=1e-12, atol=0)
    out_only = adapters.edm_raw(lambda y, n: recorder(y, n, 1.0), sd)(torch.zeros_like(x_t), level)  # D = c_out
    assert torch.allclose(out_only, (sigma * sd / torch.sqrt(sigma**2 + sd**2)).expand(2, 3), rtol=1e-12, atol=0)
    with pytest.raises(ConfigError, match="sigma_data must be > 0"):
        adapters.edm_raw(recorder, -1.0)


# ------------------------------------------------------------------------------------------- mode and gradients
class Probe(nn.Module):
    """eps = dropout(linear(x_t)); records its training flag during the call."""

    def __init__(self) -> None:
        super().__init__()
        self.linear, self.dropout, self.frozen = nn.Linear(4, 4), nn.Dropout(0.5), nn.BatchNorm1d(4)
        self.seen_training: list[bool] = []

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.seen_training.append(self.training)
        return self.dropout(self.linear(x)) + 0 * self.frozen(x)


def test_train_mode_is_restored_and_the_call_runs_in_eval() -> None:
    probe = Probe().train()
    probe.frozen.eval()  # a mixed state: every flag must come back as it was
    before = {name: m.training for name, m in probe.named_modules()}
    denoiser = adapters.callable_eps(probe, DDPMSchedule(T=10))
    x_t = gaussian_x((5, 4), 11, torch.float32)
    level = NoiseLevel.at_index(denoiser.schedule, 3)
    first, second = denoiser(x_t, level), denoiser(x_t, level)
    assert probe.seen_training == [False, False]
    assert torch.equal(first, second)  # dropout off during the call
    assert {name: m.training for name, m in probe.named_modules()} == before
    probe.eval()
    denoiser(x_t, level)
    assert not any(m.training for m in probe.modules())


def test_mode_is_restored_when_the_model_raises() -> None:
    probe = Probe().train()
    denoiser = adapters.callable_eps(probe, DDPMSchedule(T=10))
    with pytest.raises(RuntimeError):
        denoiser(gaussian_x((5, 3), 12, torch.float32), NoiseLevel.at_index(denoiser.schedule, 3))
    assert all(m.training for m in probe.modules())


def test_no_gradients_are_tracked() -> None:
    probe = Probe()
    denoiser = adapters.callable_eps(probe, DDPMSchedule(T=10))
    x_t = gaussian_x((5, 4), 13, torch.float32).requires_grad_()
    with torch.enable_grad():
        out = denoiser(x_t, NoiseLevel.at_index(denoiser.schedule, 3))
    assert not out.requires_grad and out.grad_fn is None
    assert all(p.grad is None for p in probe.parameters())


def test_input_is_cast_to_the_models_dtype_and_back() -> None:
    probe = Probe()
    denoiser = adapters.callable_eps(probe, DDPMSchedule(T=10))
    x_t = gaussian_x((5, 4), 14)  # float64 data, float32 model
    out = denoiser(x_t, NoiseLevel.at_index(denoiser.schedule, torch.tensor([0, 1, 2, 3, 9])))
    assert out.dtype == torch.float64 and out.shape == x_t.shape
    assert torch.equal(out, probe.eval()(x_t.float(), None).double())
    seen = {}

    def plain(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        seen["dtype"] = x.dtype
        return x

    adapters.callable_eps(plain, DDPMSchedule(T=10))(x_t, NoiseLevel.at_index(DDPMSchedule(T=10), 2))
    assert seen["dtype"] == torch.float64  # a plain function gets x_t as it is


# ------------------------------------------------------------------------------------------- plain and easyhard
def test_callable_eps_gets_long_step_indices() -> None:
    schedule = DDPMSchedule(T=20, index_base=1)
    seen = {}

    def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        seen["t"] = t
        return 2 * x

    denoiser = adapters.callable_eps(fn, schedule)
    x_t = gaussian_x((3, 2, 4, 4), 15)
    assert torch.equal(denoiser(x_t, NoiseLevel.at_index(schedule, 20)), 2 * x_t)
    assert seen["t"].dtype == torch.long and torch.equal(seen["t"], torch.full((3,), 20))
    assert denoiser.schedule is schedule and denoiser.prediction == "eps"
    with pytest.raises(ConfigError, match="schedule must be a DDPMSchedule"):
        adapters.callable_eps(fn, None)


def test_easyhard_model_attaches_the_schedule() -> None:
    schedule = DDPMSchedule(T=50)
    model = MLPDenoiser(MLPConfig(d=16, width=8, depth=1, time_dim=4, prediction="x0"),
                        torch.Generator().manual_seed(0))
    denoiser = adapters.easyhard_model(model, schedule)
    x_t = gaussian_x((3, 1, 4, 4), 16, torch.float32)
    level = NoiseLevel.at_index(schedule, torch.tensor([1, 20, 49]))
    assert denoiser.prediction == "x0" and denoiser.schedule is schedule and not denoiser.ensemble
    assert torch.equal(denoiser(x_t, level), model(x_t, level))
    with pytest.raises(ConfigError, match="schedule must be the level's schedule"):
        denoiser(x_t, NoiseLevel.at_index(DDPMSchedule(T=60), 3))
    with pytest.raises(ConfigError, match="model must be a Denoiser"):
        adapters.easyhard_model(lambda x, i: x, schedule)


def test_member_is_row_e_of_the_ensemble() -> None:
    schedule = DDPMSchedule(T=50)
    ensemble = EnsembleMLP(EnsembleConfig(members=3, d=4, width=8, depth=2, time_dim=4),
                           torch.Generator().manual_seed(1))
    x_t = gaussian_x((5, 4), 17, torch.float32)
    others = gaussian_x((3, 5, 4), 18, torch.float32)  # the other members see other inputs
    level = NoiseLevel.at_index(schedule, torch.tensor([0, 5, 10, 30, 49]))
    for e in range(3):
        stacked = others.clone()
        stacked[e] = x_t
        denoiser = adapters.member(ensemble, e, schedule)
        assert not denoiser.ensemble and denoiser.prediction == "eps"
        assert torch.equal(denoiser(x_t, level), ensemble(stacked, level)[e])
    whole = adapters.easyhard_model(ensemble, schedule)
    assert whole.ensemble and torch.equal(whole(others, level), ensemble(others, level))
    with pytest.raises(ConfigError, match=r"e must be an integer in \[0, 2\]"):
        adapters.member(ensemble, 3, schedule)
    with pytest.raises(ConfigError, match="must be an ensemble Denoiser"):
        adapters.member(MLPDenoiser(MLPConfig(d=4), torch.Generator()), 0, schedule)


# ------------------------------------------------------------------------------------------------------ checking
def test_check_output_passes_a_good_model(unet: nn.Module) -> None:
    denoiser = adapters.diffusers(unet, diffusers_lib.DDPMScheduler())
    assert adapters.check_output(denoiser, gaussian_x((10, 1, 8, 8), 19, torch.float32)) is None
    ensemble = EnsembleMLP(EnsembleConfig(members=2, d=3, width=4, depth=1, time_dim=4), torch.Generator())
    adapters.check_output(adapters.easyhard_model(ensemble, DDPMSchedule()), gaussian_x((2, 7, 3), 20))


def test_check_output_reports_shape_nan_and_failures() -> None:
    schedule = DDPMSchedule(T=100)
    data = gaussian_x((8, 3, 4, 4), 21)
    wrong_shape = adapters.callable_eps(lambda x, t: x[:, :1], schedule)
    with pytest.raises(ConfigError) as err:
        adapters.check_output(wrong_shape, data)
    assert one_line(err) == "model output shape (4, 1, 4, 4) differs from the data shape (4, 3, 4, 4)"
    nan = adapters.callable_eps(lambda x, t: x * float("nan"), schedule)
    with pytest.raises(ConfigError) as err:
        adapters.check_output(nan, data)
    assert one_line(err) == "the model returned NaN or inf at step 50"
    failing = adapters.callable_eps(lambda x, t: x @ torch.ones(2, 2, dtype=x.dtype), schedule)
    with pytest.raises(ConfigError, match=r"calling the model on x_t of shape \(4, 3, 4, 4\) at step 50 failed "
                                          r"\(RuntimeError: ") as err:
        adapters.check_output(failing, data)
    one_line(err)
    returns_tuple = adapters.callable_eps(lambda x, t: (x,), schedule)
    with pytest.raises(ConfigError) as err:
        adapters.check_output(returns_tuple, data)
    assert one_line(err) == "the model must return a tensor shaped like x_t (got tuple)"
    with pytest.raises(ConfigError, match="denoiser must have a schedule attribute"):
        adapters.check_output(NoiseFree(), data)
    with pytest.raises(ConfigError, match="example_x must be a floating-point tensor"):
        adapters.check_output(wrong_shape, data.to(torch.uint8))


class NoiseFree:
    prediction = "x0"

    def __call__(self, x_t: torch.Tensor, level: NoiseLevel) -> torch.Tensor:
        return x_t
