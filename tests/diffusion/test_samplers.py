"""Samplers: index grids, single-step formulas, the exact-Gaussian sampler floor, shared noise."""

import math

import pytest
import torch

from easyhard._validate import ConfigError
from easyhard.diffusion import CoefficientDenoiser, DDPMSchedule, SamplerNoise, sample, timesteps
from easyhard.oracles.wiener import WienerDenoiser

D = 16


@pytest.fixture(scope="module")
def gaussian():
    """N(mu, Sigma) with d = 16, a random rotation and eigenvalues log-spaced in [1e-3, 1]
    (an image-like steep spectrum, condition number 1e3)."""
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(D, D, generator=g, dtype=torch.float64))
    lam = torch.logspace(-3, 0, D, dtype=torch.float64)
    cov = (q * lam) @ q.T
    mu = 0.3 * torch.randn(D, generator=g, dtype=torch.float64)
    return mu, cov, WienerDenoiser(mu, cov, ridge_factor=0.0)


def _errors(mean, cov_gen, mu, cov):
    """(e_mu, E_Sigma, E_white): ||m - mu|| / sqrt(tr Sigma), ||C - Sigma||_F / ||Sigma||_F,
    ||Sigma^-1/2 C Sigma^-1/2 - I||_F / sqrt(d)."""
    ev, u = torch.linalg.eigh(cov)
    w = (u * ev**-0.5) @ u.T
    return (float((mean - mu).norm() / cov.trace().sqrt()),
            float((cov_gen - cov).norm() / cov.norm()),
            float((w @ cov_gen @ w - torch.eye(D, dtype=cov.dtype)).norm() / math.sqrt(D)))


def _sampled_errors(x, mu, cov):
    return _errors(x.mean(0), torch.cov(x.T, correction=0), mu, cov)


def _exact_ddim_errors(denoiser, schedule, mu, cov, **kwargs):
    """DDIM with a linear (Wiener) denoiser is an affine map x0 = M z + c of the initial noise, so
    the generated law is exactly N(c, M M^T): recover c and M from the inputs 0, e_1, ..., e_d."""
    z = torch.cat([torch.zeros(1, D, dtype=torch.float64), torch.eye(D, dtype=torch.float64)])
    out = sample(denoiser, schedule, z.shape, noise=SamplerNoise(z, 0), clip_x0=None, **kwargs)
    c, m = out[0], (out[1:] - out[0]).T
    return _errors(c, m @ m.T, mu, cov)


def test_timesteps_quadratic_and_linear():
    schedule = DDPMSchedule(T=1000)
    quad = timesteps(schedule, 25, "quadratic")
    assert len(quad) == 25 and quad[0] == 999 and quad[-1] == 0
    assert quad[-2] == round(999 / 24**2) == 2 and quad[1] == round((23 / 24) ** 2 * 999)
    assert all(a > b for a, b in zip(quad, quad[1:]))
    assert timesteps(schedule, 4, "linear") == [999, 666, 333, 0]
    assert timesteps(DDPMSchedule(T=10, index_base=1), 50, "linear") == list(range(10, 0, -1))  # deduplicated
    assert timesteps(schedule, 1) == [999]
    with pytest.raises(ConfigError, match="spacing"):
        timesteps(schedule, 5, "cubic")


def test_timesteps_from_a_start_index_and_a_sampler_started_there():
    schedule = DDPMSchedule(T=500, beta_start=2e-4, beta_end=0.04, index_base=1)
    assert timesteps(schedule, 4, "linear", start=61) == [61, 41, 21, 1]
    assert timesteps(schedule, 100, "linear", start=5) == [5, 4, 3, 2, 1]
    assert timesteps(schedule, 3, start=None) == timesteps(schedule, 3)
    for bad in (0, 501, 2.5, True):
        with pytest.raises(ConfigError, match="start"):
            timesteps(schedule, 3, start=bad)
    # a sampler started at index 1 makes no step: it returns the denoiser's x0-prediction of the given state
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = sample(CoefficientDenoiser(lambda x, a, s: 0.5 * x), schedule, x.shape, method="ancestral", steps=3,
                 clip_x0=None, noise=SamplerNoise(x, 0), start=1)
    torch.testing.assert_close(out, 0.5 * x)


def test_single_ddim_and_ancestral_steps_match_hand_formulas():
    """Two indices [T-1, 0]: one DDIM / posterior step then x0_hat at index 0, checked by hand."""
    schedule = DDPMSchedule(T=100)
    denoiser = lambda x, i: 0.5 * x + 0.01 * i  # noqa: E731  (any deterministic eps map)
    noise = SamplerNoise.draw((3, 4), torch.Generator().manual_seed(1), dtype=torch.float64)
    x = noise.initial

    def x0_hat(x, i):
        a, s = schedule.coefficients(i)
        return (x - s * denoiser(x, i)) / a

    a0, s0 = schedule.coefficients(0)
    x_ddim = a0 * x0_hat(x, 99) + s0 * denoiser(x, 99)
    got = sample(denoiser, schedule, x.shape, steps=2, spacing="linear", heun=False, clip_x0=None, noise=noise)
    torch.testing.assert_close(got, x0_hat(x_ddim, 0))

    ab_i, ab_j = schedule.alpha_bar(99), schedule.alpha_bar(0)
    beta = 1 - ab_i / ab_j
    mean = math.sqrt(ab_j) * beta / (1 - ab_i) * x0_hat(x, 99) + math.sqrt(1 - beta) * (1 - ab_j) / (1 - ab_i) * x
    z = torch.randn(x.shape, generator=noise.step_generator(), dtype=x.dtype)
    x_anc = mean + math.sqrt((1 - ab_j) / (1 - ab_i) * beta) * z
    got = sample(denoiser, schedule, x.shape, method="ancestral", steps=2, spacing="linear",
                 clip_x0=None, noise=noise)
    torch.testing.assert_close(got, x0_hat(x_anc, 0))


def test_clip_bounds_output():
    schedule = DDPMSchedule(T=50)
    out = sample(lambda x, i: -3 * x, schedule, (8, 5), steps=5, generator=torch.Generator().manual_seed(0))
    assert out.abs().max() <= 2.0 + 1e-6 and out.dtype == torch.float32


def test_exact_ddim_heun_quadratic_floor_beats_linear_euler(gaussian):
    """Exact pushforward (no sampling noise). Measured: Heun-quadratic-25 E_Sigma 0.021,
    E_white 0.022 (cf. 0.026 in docs/theory/images.md section 9); Euler-quadratic-25 0.124 / 0.194;
    Euler-linear-50 0.081 / 0.362; e_mu 0.0014 for all."""
    mu, cov, wiener = gaussian
    schedule = DDPMSchedule()
    denoiser = CoefficientDenoiser(wiener)
    kw = dict(dtype=torch.float64)
    e_mu, e_cov, e_white = _exact_ddim_errors(denoiser, schedule, mu, cov, steps=25, spacing="quadratic", heun=True, **kw)
    assert e_mu < 0.01 and e_cov < 0.05 and e_white < 0.05
    _, e_cov_euler, e_white_euler = _exact_ddim_errors(denoiser, schedule, mu, cov, steps=25,
                                                       spacing="quadratic", heun=False, **kw)
    _, e_cov_lin, e_white_lin = _exact_ddim_errors(denoiser, schedule, mu, cov, steps=50,
                                                   spacing="linear", heun=False, **kw)
    assert e_white_euler > 3 * e_white and e_cov_euler > 3 * e_cov  # Heun matters
    assert e_white_lin > 10 * e_white and e_cov_lin > 2 * e_cov


def test_sampled_ddim_and_ancestral_match_gaussian(gaussian):
    """Sampled moments, n samples. Sampling floor of E_Sigma for iid Gaussian samples:
    sqrt(1 + (tr Sigma)^2 / ||Sigma||_F^2) / sqrt(n) ~ 0.011 at n = 20k, 0.016 at 10k, so the bound
    0.06 / 0.07 are > 2x (sampling floor + sampler floor). Measured over seeds 0-3 at n = 20k:
    DDIM-Heun-quad-25 E_Sigma 0.022-0.031 (E_white 0.033-0.036), ancestral-1000 0.015-0.022
    (E_white 0.092-0.096: the final x0_hat at index 0 shrinks the 1e-3 modes by ~9%); ancestral
    at n = 10k in float32 (used here for speed): 0.032 / 0.10."""
    mu, cov, wiener = gaussian
    schedule = DDPMSchedule()
    denoiser = CoefficientDenoiser(wiener)
    x = sample(denoiser, schedule, (20000, D), generator=torch.Generator().manual_seed(1),
               clip_x0=None, dtype=torch.float64)
    e_mu, e_cov, _ = _sampled_errors(x, mu, cov)
    assert e_mu < 0.03 and e_cov < 0.06
    x = sample(denoiser, schedule, (10000, D), method="ancestral", steps=schedule.T, spacing="linear",
               generator=torch.Generator().manual_seed(2), clip_x0=None)
    e_mu, e_cov, e_white = _sampled_errors(x.double(), mu, cov)
    assert e_mu < 0.03 and e_cov < 0.07 and e_white < 0.2


def test_shared_noise_gives_common_random_numbers(gaussian):
    mu, cov, wiener = gaussian
    schedule = DDPMSchedule(T=200)
    den_a = CoefficientDenoiser(wiener)
    den_b = CoefficientDenoiser(WienerDenoiser(mu, cov, ridge_factor=0.0))  # identical, separate object
    noise = SamplerNoise.draw((64, D), torch.Generator().manual_seed(5))
    for method in ("ddim", "ancestral"):
        kw = dict(method=method, steps=20, noise=noise)
        first = sample(den_a, schedule, (64, D), **kw)
        assert torch.equal(first, sample(den_b, schedule, (64, D), **kw))
        other = SamplerNoise.draw((64, D), torch.Generator().manual_seed(6))
        assert (first - sample(den_a, schedule, (64, D), method=method, steps=20, noise=other)).abs().max() > 0.1
    # ancestral noise beyond the initial state: same x_T, different step seed -> different samples
    swapped = SamplerNoise(noise.initial, noise.step_seed + 1)
    a = sample(den_a, schedule, (64, D), method="ancestral", steps=20, noise=noise)
    b = sample(den_a, schedule, (64, D), method="ancestral", steps=20, noise=swapped)
    assert (a - b).abs().max() > 0.1
    # DDIM is deterministic given x_T: the step seed is irrelevant
    assert torch.equal(sample(den_a, schedule, (64, D), noise=noise), sample(den_a, schedule, (64, D), noise=swapped))


def test_generator_path_is_reproducible_and_shape_checked(gaussian):
    _, _, wiener = gaussian
    schedule = DDPMSchedule(T=100)
    den = CoefficientDenoiser(wiener)
    x1 = sample(den, schedule, (4, 1, 4, 4), generator=torch.Generator().manual_seed(3), steps=10)
    x2 = sample(den, schedule, (4, 1, 4, 4), generator=torch.Generator().manual_seed(3), steps=10)
    assert x1.shape == (4, 1, 4, 4) and torch.equal(x1, x2)
    noise = SamplerNoise.draw((4, D), torch.Generator().manual_seed(0))
    with pytest.raises(ConfigError, match="noise.initial"):
        sample(den, schedule, (5, D), noise=noise)
    with pytest.raises(ConfigError, match="method"):
        sample(den, schedule, (4, D), method="euler", noise=noise)


@pytest.mark.parametrize("method", ["ddim", "ancestral"])
def test_noise_is_shared_across_a_leading_ensemble_axis(method):
    """Noise of shape (B, d) drives every member of an (E, B, d) ensemble exactly as it drives one model alone."""
    schedule = DDPMSchedule(T=50)
    scales = torch.tensor([0.5, 1.0, 2.0])[:, None, None]

    def ensemble(x, i):
        return torch.tanh(scales * x)

    noise = SamplerNoise.draw((7, 4), torch.Generator().manual_seed(0))
    together = sample(ensemble, schedule, (3, 7, 4), method=method, steps=6, noise=noise)
    for e in range(3):
        alone = sample(lambda x, i: torch.tanh(scales[e] * x), schedule, (7, 4), method=method, steps=6, noise=noise)
        torch.testing.assert_close(together[e], alone, rtol=0, atol=0)
    with pytest.raises(ConfigError, match="trailing part"):
        sample(ensemble, schedule, (3, 7, 4), method=method, steps=6, noise=SamplerNoise.draw((3, 7), torch.Generator()))
