"""Samplers for DDPM-schedule denoisers: deterministic DDIM (optionally Heun) and ancestral DDPM.

The denoiser is any :class:`~easyhard.diffusion.denoiser.Denoiser` (eps- or x0-predicting), evaluated
at ``NoiseLevel.at_index(schedule, i)`` for the step indices i below and read in eps space through
:func:`~easyhard.diffusion.denoiser.predict_eps`: a network (``MLPDenoiser``, ``UNetDenoiser``,
``EnsembleMLP``), the exact Gaussian denoiser ``CoefficientDenoiser(WienerDenoiser(mu, cov))`` or a
user's module ``EpsModel(module, schedule)``. A plain callable ``denoiser(x_t, i) -> eps_hat`` (i an int
step index in the schedule's base) is accepted too (:func:`~easyhard.diffusion.denoiser.as_denoiser`).

Time grid. ``steps`` indices i_{K-1} > ... > i_0 = index_base (:func:`timesteps`):
    quadratic:  i_k = round((k / (steps - 1))^2 (T - 1)),   linear: i_k = round(k (T - 1) / (steps - 1)),
plus index_base, deduplicated. The sampler starts from x ~ N(0, I) at i_{K-1} [choice: the
standard start; abar_{T-1} = 4e-5 for the default linear schedule] and ends with one last step
from i_0 to the clean state (sigma = 0), i.e. it returns x0_hat(x_{i_0}).

DDIM (eta = 0, Song et al. 2021) is the probability-flow ODE in the EDM variables
(Karras et al. 2022)

    x_tilde = x_t / sqrt(abar),   sigma = sqrt((1 - abar) / abar),   d x_tilde / d sigma = eps_hat,

and one DDIM step i -> j is its Euler step, x_tilde_j = x_tilde_i + (sigma_j - sigma_i) eps_hat_i,
equivalently x_j = sqrt(abar_j) x0_hat + sqrt(1 - abar_j) eps_hat. With ``heun=True`` every step
except the last (to sigma = 0) is corrected by Heun's method: eps_hat_j is evaluated at the Euler
end point and x_tilde_j = x_tilde_i + (sigma_j - sigma_i) (eps_hat_i + eps_hat_j) / 2, so 25 steps
cost 2 * 25 - 1 = 49 evaluations.

Ancestral sampling draws x_j ~ q(x_j | x_i, x0 = x0_hat) (Ho et al. 2020, strided as in
Nichol & Dhariwal 2021): with alpha = abar_i / abar_j, beta = 1 - alpha,

    mean = sqrt(abar_j) beta / (1 - abar_i) x0_hat + sqrt(alpha) (1 - abar_j) / (1 - abar_i) x_i,
    var  = beta_tilde = (1 - abar_j) / (1 - abar_i) beta,

which for consecutive indices is the DDPM posterior with beta_tilde_i. The last step returns x0_hat.

Clipping: with ``clip_x0=c`` each x0_hat is clamped to [-c, c] and eps_hat recomputed from it,
eps_hat = (x_t - sqrt(abar) x0_hat) / sqrt(1 - abar), before it is used.

Common random numbers: a :class:`SamplerNoise` holds the initial state x_{i_{K-1}} and a seed for
the per-step noise of the ancestral sampler. Passing the same object to runs with two denoisers
gives both exactly the same initial state and the same per-step noise sequence (drawn in the same
order from a dedicated generator), so differences between their samples come from the denoisers
only. For an ensemble denoiser acting on (E, B, ...) the noise may have the trailing shape (B, ...):
it is then shared by all E members (the coupled sampler of docs/theory/generalization.md section 1).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from easyhard._validate import ConfigError, check_choice, check_int_at_least, check_positive
from easyhard.diffusion.ddpm import DDPMSchedule
from easyhard.diffusion.denoiser import Denoiser, NoiseLevel, as_denoiser, predict_eps

METHODS = ("ddim", "ancestral")
SPACINGS = ("quadratic", "linear")


def timesteps(schedule: DDPMSchedule, steps: int, spacing: str = "quadratic", start: int | None = None) -> list[int]:
    """Decreasing step indices (schedule's base) from ``start`` (default: the last index, index_base + T - 1)
    down to index_base.

    With top = start - index_base: quadratic: round((k/(steps-1))^2 top), linear: round(k top/(steps-1)),
    k = 0..steps-1, deduplicated (so fewer than ``steps`` when steps > top + 1 or the quadratic grid collides
    at small k). ``steps=1`` gives the single top index.
    """
    steps = check_int_at_least("steps", steps, 1)
    check_choice("spacing", spacing, SPACINGS)
    top = schedule.T - 1
    if start is not None:
        if isinstance(start, bool) or not isinstance(start, int) or not 0 <= start - schedule.index_base <= top:
            raise ConfigError(f"start must be a step index in [{schedule.index_base}, {schedule.index_base + top}] "
                              f"(got {start!r})")
        top = start - schedule.index_base
    if steps == 1:
        grid = [top]
    else:
        power = 2 if spacing == "quadratic" else 1
        grid = [round((k / (steps - 1)) ** power * top) for k in range(steps)]
    return sorted({g + schedule.index_base for g in grid}, reverse=True)


@dataclass(frozen=True)
class SamplerNoise:
    """Shared randomness for :func:`sample` (common random numbers across denoisers).

    initial: the starting state x ~ N(0, I), shape (B, ...) of the samples.
    step_seed: seed of a dedicated ``torch.Generator`` (on ``initial``'s device) from which the
        ancestral sampler draws its per-step noise in step order; DDIM ignores it.
    """

    initial: Tensor
    step_seed: int

    @classmethod
    def draw(cls, shape: Sequence[int], generator: torch.Generator, *,
             device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> SamplerNoise:
        """Draw the initial state (shape ``shape``) and then the per-step seed from ``generator``."""
        device = torch.device(device) if device is not None else generator.device
        initial = torch.randn(tuple(shape), generator=generator, dtype=dtype, device=generator.device).to(device)
        step_seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
        return cls(initial, step_seed)

    def to(self, device: torch.device | str) -> SamplerNoise:
        """The same noise with ``initial`` on ``device`` (the per-step noise then comes from a generator there)."""
        return SamplerNoise(self.initial.to(device), self.step_seed)

    def step_generator(self) -> torch.Generator:
        """A fresh generator for the per-step noise (identical for every call)."""
        return torch.Generator(device=self.initial.device).manual_seed(self.step_seed)


def _x0_and_eps(denoiser: Denoiser, x: Tensor, i: int, schedule: DDPMSchedule,
                clip_x0: float | None) -> tuple[Tensor, Tensor]:
    """(x0_hat, eps_hat) at step i, with x0_hat clipped and eps_hat made consistent if asked."""
    level = NoiseLevel.at_index(schedule, i)
    a, s = level.a, level.s
    eps = predict_eps(denoiser, x, level)
    if eps.shape != x.shape:
        raise ConfigError(f"denoiser output must have the shape of x_t {tuple(x.shape)} (got {tuple(eps.shape)})")
    x0 = (x - s * eps) / a
    if clip_x0 is not None:
        x0 = x0.clamp(-clip_x0, clip_x0)
        eps = (x - a * x0) / s
    return x0, eps


def _ddim(denoiser: Denoiser, x: Tensor, indices: list[int], schedule: DDPMSchedule,
          heun: bool, clip_x0: float | None) -> Tensor:
    x0, eps = _x0_and_eps(denoiser, x, indices[0], schedule, clip_x0)
    for i, j in zip(indices[:-1], indices[1:]):
        abar_i, abar_j = schedule.alpha_bar(i), schedule.alpha_bar(j)
        sigma_i, sigma_j = ((1 - abar_i) / abar_i) ** 0.5, ((1 - abar_j) / abar_j) ** 0.5
        x_tilde = x / abar_i**0.5
        x_next = abar_j**0.5 * (x_tilde + (sigma_j - sigma_i) * eps)  # DDIM / Euler step
        x0_next, eps_next = _x0_and_eps(denoiser, x_next, j, schedule, clip_x0)
        if heun:
            x_next = abar_j**0.5 * (x_tilde + (sigma_j - sigma_i) * 0.5 * (eps + eps_next))
            x0_next, eps_next = _x0_and_eps(denoiser, x_next, j, schedule, clip_x0)
        x, x0, eps = x_next, x0_next, eps_next
    return x0  # last step, to sigma = 0 (no Heun correction)


def _ancestral(denoiser: Denoiser, x: Tensor, indices: list[int], schedule: DDPMSchedule,
               clip_x0: float | None, step_generator: torch.Generator | None, noise_shape: tuple[int, ...]) -> Tensor:
    noise_device = step_generator.device if step_generator is not None else x.device
    for i, j in zip(indices[:-1], indices[1:]):
        x0, _ = _x0_and_eps(denoiser, x, i, schedule, clip_x0)
        abar_i, abar_j = schedule.alpha_bar(i), schedule.alpha_bar(j)
        alpha = abar_i / abar_j
        beta = 1 - alpha
        mean = (abar_j**0.5 * beta / (1 - abar_i)) * x0 + (alpha**0.5 * (1 - abar_j) / (1 - abar_i)) * x
        std = ((1 - abar_j) / (1 - abar_i) * beta) ** 0.5
        z = torch.randn(noise_shape, generator=step_generator, dtype=x.dtype, device=noise_device)
        x = mean + std * z.to(x.device)  # z broadcasts over any leading (ensemble) axes
    x0, _ = _x0_and_eps(denoiser, x, indices[-1], schedule, clip_x0)
    return x0


@torch.no_grad()
def sample(denoiser: Denoiser | Callable[[Tensor, int], Tensor], schedule: DDPMSchedule, shape: Sequence[int], *,
           method: str = "ddim", steps: int = 25, spacing: str = "quadratic", heun: bool = True,
           clip_x0: float | None = 2.0, generator: torch.Generator | None = None,
           noise: SamplerNoise | None = None, device: torch.device | str = "cpu",
           dtype: torch.dtype = torch.float32, start: int | None = None) -> Tensor:
    """Generate samples of shape ``shape`` (B, ...) with a Denoiser (or ``denoiser(x_t, i) -> eps_hat``).

    method: "ddim" (deterministic, Heun-corrected if ``heun``) or "ancestral" (``heun`` ignored);
    steps, spacing: the index grid of :func:`timesteps` (``steps=schedule.T`` with linear spacing
    is the full 1000-step ancestral sampler); clip_x0: clamp x0_hat to [-clip_x0, clip_x0], or None.
    start: the index the grid starts from (default the last, index_base + T - 1); with it, ``noise.initial``
    is the state x_start to denoise (e.g. noised data: a U-turn), not necessarily pure noise.
    Randomness: ``noise`` (a :class:`SamplerNoise` whose ``initial`` has shape ``shape``, or a trailing part
    of it, broadcast over the leading axes together with every per-step draw) if given,
    else drawn from ``generator`` (None: torch's default generator), initial state first.
    Returns x0_hat after the last step, shape ``shape``, on ``noise.initial``'s device/dtype if
    ``noise`` is given, else on ``device`` with ``dtype``.
    """
    check_choice("method", method, METHODS)
    denoiser = as_denoiser(denoiser)
    if clip_x0 is not None:
        clip_x0 = check_positive("clip_x0", clip_x0)
    indices = timesteps(schedule, steps, spacing, start)
    shape = tuple(shape)
    if noise is None:
        gen_device = generator.device if generator is not None else torch.device(device)
        initial = torch.randn(shape, generator=generator, dtype=dtype, device=gen_device).to(device)
        step_generator = generator
    else:
        noise_shape = tuple(noise.initial.shape)
        if not 1 <= len(noise_shape) <= len(shape) or shape[len(shape) - len(noise_shape):] != noise_shape:
            raise ConfigError(f"noise.initial must have the sample shape {shape} or a trailing part of it "
                              f"(got {noise_shape})")
        initial = noise.initial.expand(shape)
        step_generator = noise.step_generator()
    if method == "ddim":
        return _ddim(denoiser, initial.clone(), indices, schedule, heun, clip_x0)
    return _ancestral(denoiser, initial.clone(), indices, schedule, clip_x0, step_generator,
                      noise_shape if noise is not None else shape)
