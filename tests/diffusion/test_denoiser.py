"""The one denoiser interface: noise levels, eps/x0 conversions, every adapter against its native call, a user's
own nn.Module through the sampler and the memorisation metrics, and the runnable example."""

from __future__ import annotations

import math
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import torch
from torch import nn

from easyhard._validate import ConfigError
from easyhard.data import MixedCumulantModel
from easyhard.data.mixture import random_mixture
from easyhard.diffusion import (
    CoefficientDenoiser,
    DDPMSchedule,
    Denoiser,
    EpsModel,
    NoiseLevel,
    OUTimeDenoiser,
    SamplerNoise,
    as_denoiser,
    predict_eps,
    predict_x0,
    sample,
    x0_to_eps,
)
from easyhard.metrics import eps_loss_per_level, memorization_fraction, nearest_neighbours
from easyhard.models import Committee, MLPConfig, MLPDenoiser, UNetConfig, make_unet
from easyhard.models.ensemble import EnsembleConfig, EnsembleMLP
from easyhard.oracles import EmpiricalDenoiser, MCMBayesDenoiser, WienerDenoiser, empirical_denoiser

SCHEDULE = DDPMSchedule()
ROOT = Path(__file__).resolve().parents[2]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class _EmpiricalEps(nn.Module):
    """A user's module(x_t, t) with t the integer timestep: the eps of the empirical-optimal denoiser of
    ``train``, written out independently of easyhard.oracles (softmax over -||x_t - a x_mu||^2 / 2 s^2)."""

    def __init__(self, train: torch.Tensor, schedule: DDPMSchedule) -> None:
        super().__init__()
        self.register_buffer("points", train)
        self.register_buffer("abar", schedule.alphas_bar.float())

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        abar = self.abar[t][:, None]
        a, s = abar.sqrt(), (1 - abar).sqrt()
        distances = a * torch.cdist(x_t / a, self.points)  # ||x_t - a x_mu||
        weights = torch.softmax(-distances**2 / (2 * s**2), dim=-1)
        return (x_t - a * (weights @ self.points)) / s


class _GaussianEps(nn.Module):
    """E[eps | x_t] = s x_t for x0 ~ N(0, I): a module(x_t, t) that generalises perfectly."""

    def __init__(self, schedule: DDPMSchedule) -> None:
        super().__init__()
        self.register_buffer("abar", schedule.alphas_bar.float())

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return (1 - self.abar[t][:, None]).sqrt() * x_t


# ------------------------------------------------------------------ (a) a user's nn.Module, sampler, metrics
def test_own_module_through_ddim_and_memorisation_metrics():
    """A memorising module copies its training points (f_mem = 1, nearest distance ~ 0); a generalising one
    does not (f_mem ~ 0, samples as far from the training set as fresh data)."""
    d = 8
    train = torch.randn(16, d, generator=_gen(0))
    memorising = EpsModel(_EmpiricalEps(train, SCHEDULE), SCHEDULE)
    noise = SamplerNoise.draw((200, d), _gen(1))
    copies = sample(memorising, SCHEDULE, (200, d), noise=noise, clip_x0=None)
    assert memorization_fraction(copies, train).value == 1.0
    nearest, index = nearest_neighbours(copies, train, k=1)
    assert float(nearest.max()) < 1e-3
    assert len(index.unique()) >= 12  # the samples spread over the training points
    # the same module equals the package's empirical-optimal denoiser through the sampler
    oracle = sample(EmpiricalDenoiser(train), SCHEDULE, (200, d), noise=noise, clip_x0=None)
    torch.testing.assert_close(copies, oracle, atol=1e-4, rtol=0)

    fresh_train, fresh = torch.randn(64, d, generator=_gen(2)), torch.randn(200, d, generator=_gen(3))
    novel = sample(EpsModel(_GaussianEps(SCHEDULE), SCHEDULE), SCHEDULE, (200, d), generator=_gen(4), clip_x0=None)
    assert memorization_fraction(novel, fresh_train).value < 0.05
    d_novel, _ = nearest_neighbours(novel, fresh_train, k=1)
    d_fresh, _ = nearest_neighbours(fresh, fresh_train, k=1)
    assert abs(float(d_novel.median() / d_fresh.median()) - 1) < 0.15


def test_eps_model_passes_index_or_ou_time_and_checks_the_schedule():
    seen = {}

    def module(x_t, t):
        seen["t"] = t
        return torch.zeros_like(x_t)

    x = torch.randn(3, 2)
    EpsModel(module, SCHEDULE)(x, NoiseLevel.at_index(SCHEDULE, 17))
    assert seen["t"].dtype == torch.long and seen["t"].tolist() == [17, 17, 17]
    per_sample = torch.tensor([3, 500, 999])
    EpsModel(module, SCHEDULE)(x, NoiseLevel.at_index(SCHEDULE, per_sample))
    assert torch.equal(seen["t"], per_sample)
    EpsModel(module, time="ou")(x, NoiseLevel.at_index(SCHEDULE, 17))
    assert seen["t"].dtype == x.dtype
    torch.testing.assert_close(seen["t"], torch.full((3,), -0.5 * math.log(SCHEDULE.alpha_bar(17))))
    EpsModel(module, time="ou")(x, NoiseLevel.at_ou_time(0.3))
    torch.testing.assert_close(seen["t"], torch.full((3,), 0.3))
    with pytest.raises(ConfigError, match="schedule"):
        EpsModel(module, SCHEDULE)(x, NoiseLevel.at_index(DDPMSchedule(T=500), 17))
    with pytest.raises(ConfigError, match="index"):
        EpsModel(module, SCHEDULE)(x, NoiseLevel.at_ou_time(0.3))
    with pytest.raises(ConfigError, match="schedule"):
        EpsModel(module)
    with pytest.raises(ConfigError, match="time"):
        EpsModel(module, SCHEDULE, time="sigma")


def test_plain_callable_is_the_same_denoiser_as_its_eps_model():
    """The legacy form f(x_t, i) -> eps and EpsModel give the same samples and losses, bit for bit."""
    module = _GaussianEps(SCHEDULE)

    def plain(x_t, i):
        return module(x_t, torch.full((x_t.shape[0],), i))

    noise = SamplerNoise.draw((50, 4), _gen(5))
    for method in ("ddim", "ancestral"):
        a = sample(plain, SCHEDULE, (50, 4), method=method, noise=noise)
        b = sample(EpsModel(module, SCHEDULE), SCHEDULE, (50, 4), method=method, noise=noise)
        assert torch.equal(a, b)
    x0 = torch.randn(40, 4, generator=_gen(6))
    assert torch.equal(eps_loss_per_level(plain, x0, SCHEDULE, [10, 500]),
                       eps_loss_per_level(EpsModel(module, SCHEDULE), x0, SCHEDULE, [10, 500]))
    assert isinstance(as_denoiser(plain), Denoiser) and as_denoiser(plain).prediction == "eps"
    with pytest.raises(ConfigError, match="denoiser"):
        as_denoiser(3)


# ------------------------------------------------------------------ levels and conversions
def test_noise_levels_in_every_currency():
    level = NoiseLevel.at_index(SCHEDULE, 250)
    abar = SCHEDULE.alpha_bar(250)
    assert (level.a, level.s) == (math.sqrt(abar), math.sqrt(1 - abar))
    assert level.t == pytest.approx(-math.log(level.a), rel=1e-12) and level.index == 250
    ou = NoiseLevel.at_ou_time(0.4)
    assert (ou.a, ou.s, ou.t, ou.index) == (math.exp(-0.4), math.sqrt(-math.expm1(-0.8)), 0.4, None)
    with pytest.raises(ConfigError):
        NoiseLevel.at_index(SCHEDULE, 1000)
    with pytest.raises(ConfigError):
        NoiseLevel.at_ou_time(-1.0)


def test_predict_eps_and_x0_use_the_parametrisation_with_per_sample_levels():
    x = torch.randn(5, 3, generator=_gen(7), dtype=torch.float64)
    x0_hat = torch.randn(5, 3, generator=_gen(8), dtype=torch.float64)
    idx = torch.tensor([1, 10, 100, 500, 900])
    level = NoiseLevel.at_index(SCHEDULE, idx)
    den = CoefficientDenoiser(lambda x_t, a, s: x0_hat)
    a, s = level.a[:, None], level.s[:, None]
    assert torch.equal(predict_eps(den, x, level), (x - a * x0_hat) / s)
    assert predict_x0(den, x, level) is not None and torch.equal(predict_x0(den, x, level), x0_hat)
    eps_den = CoefficientDenoiser(lambda x_t, a, s: x0_hat, prediction="eps")
    assert torch.equal(predict_x0(eps_den, x, level), (x - s * x0_hat) / a)
    with pytest.raises(ConfigError, match="batch shape"):
        predict_eps(den, x, NoiseLevel.at_index(SCHEDULE, idx[:4]))
    with pytest.raises(ConfigError, match="prediction"):
        CoefficientDenoiser(lambda x_t, a, s: x_t, prediction="score")


# ------------------------------------------------------------------ (b) every adapter against its native call
def _wiener(d: int) -> WienerDenoiser:
    g = _gen(9)
    m = torch.randn(d, d, generator=g, dtype=torch.float64)
    return WienerDenoiser(0.1 * torch.randn(d, generator=g, dtype=torch.float64), m @ m.T / d)


def test_wiener_adapter_gives_the_formula_on_flat_and_image_inputs():
    wiener = _wiener(12)
    den = CoefficientDenoiser(wiener)
    x = torch.randn(6, 12, generator=_gen(10))
    for level in (NoiseLevel.at_index(SCHEDULE, 300), NoiseLevel.at_ou_time(0.2),
                  NoiseLevel.at_index(SCHEDULE, torch.arange(6) * 150)):
        a, s = level.a, level.s
        a_col, s_col = (v.float()[:, None] if isinstance(v, torch.Tensor) else v for v in (a, s))
        assert torch.equal(predict_x0(den, x, level), wiener(x, a, s))
        torch.testing.assert_close(predict_eps(den, x, level), (x - a_col * wiener(x, a, s)) / s_col)
        images = x.reshape(6, 3, 2, 2)
        assert torch.equal(predict_eps(den, images, level), predict_eps(den, x, level).reshape(6, 3, 2, 2))


def test_mixture_posterior_mean_adapter_gives_the_exact_eps():
    law = random_mixture(d=4, components=3, seed=1)
    x = law.sample(20, _gen(11))
    level = NoiseLevel.at_index(SCHEDULE, 200)
    den = CoefficientDenoiser(law.posterior_mean)
    assert torch.equal(predict_eps(den, x, level), law.eps(x, level.a, level.s))
    assert predict_eps(den, x.float(), level).dtype == torch.float32


def test_empirical_denoiser_class_equals_the_function():
    train = torch.randn(30, 2, 3, generator=_gen(12))
    x = torch.randn(7, 2, 3, generator=_gen(13))
    den = EmpiricalDenoiser(train, chunk_size=4)
    for level in (NoiseLevel.at_index(SCHEDULE, 40), NoiseLevel.at_index(SCHEDULE, torch.arange(7) * 100)):
        assert torch.equal(den(x, level), empirical_denoiser(x, train, level.a, level.s, chunk_size=4))
        a, s = (v.float()[:, None, None] if isinstance(v, torch.Tensor) else v for v in (level.a, level.s))
        torch.testing.assert_close(predict_eps(den, x, level), (x - a * den(x, level)) / s)
    with pytest.raises(ConfigError, match="train"):
        EmpiricalDenoiser(torch.zeros(0, 3))


def test_mcm_bayes_adapter_at_ou_time():
    model = MixedCumulantModel.create(d=8, beta_u=2, beta_v=3)
    x0 = model.sample(50, _gen(14))
    bayes = MCMBayesDenoiser(model)
    den = OUTimeDenoiser(bayes)
    for t in (0.3, SCHEDULE.ou_time(400)):
        level = NoiseLevel.at_ou_time(t) if t == 0.3 else NoiseLevel.at_index(SCHEDULE, 400)
        x_t = level.a * x0 + level.s * torch.randn(x0.shape, generator=_gen(15), dtype=x0.dtype)
        assert torch.equal(predict_x0(den, x_t, level), bayes(x_t, t))
        assert torch.equal(predict_eps(den, x_t, level), x0_to_eps(bayes(x_t, t), x_t, level.a, level.s))


@pytest.mark.parametrize("t", ["float", "sample", "member"])
def test_committee_adapter_matches_denoise_on_the_ensemble_axis(t):
    net = Committee(d=5, K=2, second_layer="untied")
    params = net.init(3, _gen(16))
    x = torch.randn(3, 4, 5, generator=_gen(17))
    value = {"float": 0.7, "sample": torch.tensor([0.1, 0.5, 1.0, 2.0]),
             "member": torch.rand(3, 1, generator=_gen(18)) + 0.1}[t]
    level = NoiseLevel.at_ou_time(value)
    den = OUTimeDenoiser(partial(net.denoise, params), ensemble=True)
    native = net.denoise(params, x, value)
    assert torch.equal(predict_x0(den, x, level), native)
    a, s = (v.reshape(*v.shape[-2:] if v.ndim == 2 else (1, -1), 1) if isinstance(v, torch.Tensor) else v
            for v in (level.a, level.s))
    torch.testing.assert_close(predict_eps(den, x, level), (x - a * native) / s, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("prediction", ["eps", "x0"])
def test_mlp_is_a_denoiser(prediction):
    model = MLPDenoiser(MLPConfig(d=12, width=16, depth=2, time_dim=8, prediction=prediction), _gen(19))
    x = torch.randn(4, 3, 2, 2, generator=_gen(20))
    assert isinstance(model, Denoiser) and model.prediction == prediction
    for i in (7, torch.tensor([0, 10, 500, 999])):
        level = NoiseLevel.at_index(SCHEDULE, i)
        native = model(x, i, SCHEDULE)
        assert torch.equal(model(x, level), native)
        a, s = (v.float().reshape(-1, 1, 1, 1) if isinstance(v, torch.Tensor) else v for v in (level.a, level.s))
        expected = native if prediction == "eps" else (x - a * native) / s
        torch.testing.assert_close(predict_eps(model, x, level), expected)
        assert torch.equal(model.predict_x0(x, i, SCHEDULE), predict_x0(model, x, level))
    with pytest.raises(ConfigError, match="index"):
        model(x, NoiseLevel.at_ou_time(0.5))
    with pytest.raises(ConfigError, match="schedule"):
        model(x, 7)


def test_ensemble_mlp_is_an_ensemble_denoiser():
    model = EnsembleMLP(EnsembleConfig(3, 5, width=8, depth=2, time_dim=4), _gen(21))
    x = torch.randn(3, 6, 5, generator=_gen(22))
    for i in (17, torch.arange(6) * 100, torch.arange(18).reshape(3, 6) * 50):
        assert torch.equal(predict_eps(model, x, NoiseLevel.at_index(SCHEDULE, i)), model(x, i, SCHEDULE))
    assert model.ensemble and model.prediction == "eps"


def test_unet_is_a_denoiser():
    pytest.importorskip("diffusers")
    config = UNetConfig.preset("tiny")
    model = make_unet(config, _gen(23)).eval()
    x = torch.randn(2, config.channels, config.image_size, config.image_size, generator=_gen(24))
    with torch.no_grad():
        assert torch.equal(model(x, NoiseLevel.at_index(SCHEDULE, 30)), model(x, 30, SCHEDULE))
    assert isinstance(model, Denoiser) and model.prediction == "eps"


# ------------------------------------------------------------------ (c) the example
def test_own_denoiser_example_runs():
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "own_denoiser.py")], capture_output=True,
                         text=True, timeout=300, check=True)
    assert "memorisation fraction" in out.stdout and "fresh data" in out.stdout
