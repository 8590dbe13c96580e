"""Reverse process of the sequence setting: ancestral DDPM sampling of one-hot sequences with an x0-predicting
denoiser of token probabilities, then the argmax token at each position (docs/theory/grammar.md section 1.8).

Each step i -> j draws x_j from the DDPM posterior q(x_j | x_i, x0 = x0_hat) of
:func:`easyhard.diffusion.sample` (method "ancestral", no clipping), with x0_hat (*batch, L, q) the denoiser's
probabilities; the last prediction, at the first step of the schedule, is read as tokens by its argmax. Works
for any x0- or eps-predicting Denoiser on (*batch, L, q), an ensemble (batch (E, B)) included: the function
only forwards to :func:`~easyhard.diffusion.sample`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from easyhard._validate import ConfigError, check_int_at_least
from easyhard.diffusion.ddpm import DDPMSchedule
from easyhard.diffusion.denoiser import Denoiser
from easyhard.diffusion.samplers import SamplerNoise, sample


def sample_sequences(denoiser: Denoiser, schedule: DDPMSchedule, n_or_shape: int | Sequence[int], steps: int,
                     noise: SamplerNoise | None = None, generator: torch.Generator | None = None, *,
                     dtype: torch.dtype = torch.float64, start: int | None = None) -> Tensor:
    """Sequences int64 (*batch, L) from the ancestral DDPM reverse process on ``steps`` linearly respaced
    indices of ``schedule`` (``steps = schedule.T``: every step), tokens = argmax of the last x0_hat
    (docs/theory/grammar.md eq. 1.13).

    n_or_shape: the state shape (*batch, L, q), or a number n of sequences for a denoiser with attributes
    ``length`` and ``q`` (the sequence oracles), meaning (n, length, q). Randomness: ``noise`` (common random
    numbers, :class:`~easyhard.diffusion.SamplerNoise`) if given, else ``generator`` (None: torch's default);
    the state lives on the noise's (else the generator's, else the CPU) device, in ``noise.initial``'s dtype
    or else ``dtype``. ``start``: the index the reverse process starts from (default the last); with it,
    ``noise.initial`` is the state x_start to denoise, e.g. noised sequences for a U-turn.
    """
    if isinstance(n_or_shape, int):
        n = check_int_at_least("n_or_shape", n_or_shape, 1)
        if not (hasattr(denoiser, "length") and hasattr(denoiser, "q")):
            raise ConfigError("n_or_shape must be a shape (*batch, L, q) for a denoiser without the attributes "
                              "length and q")
        shape = (n, denoiser.length, denoiser.q)
    else:
        shape = tuple(n_or_shape)
        if len(shape) < 3:
            raise ConfigError(f"n_or_shape must be a number or a shape (*batch, L, q) (got {shape})")
    device = generator.device if generator is not None else torch.device("cpu")
    x0 = sample(denoiser, schedule, shape, method="ancestral", steps=steps, spacing="linear", clip_x0=None,
                generator=generator, noise=noise, device=device, dtype=dtype, start=start)
    return x0.argmax(dim=-1)
