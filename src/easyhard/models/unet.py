"""DDPM U-Net for images: a thin factory over diffusers' ``UNet2DModel`` (docs/theory/images.md section 1).

The network itself is diffusers' implementation (Ho et al. 2020 architecture: residual blocks with
GroupNorm, sinusoidal time embedding, self-attention at the listed resolutions); this module only
maps a validated :class:`UNetConfig` onto it and wraps it in the package's denoiser contract
(:class:`~easyhard.diffusion.Denoiser`, prediction "eps")

    forward(x_t, level) = forward(x_t, i, schedule) -> eps_hat,    x_t: (B, C, H, W),    i: int or LongTensor (B,),

i.e. eps-prediction for x_t = sqrt(abar_i) x0 + sqrt(1 - abar_i) eps at the step level
``NoiseLevel.at_index(schedule, i)``. diffusers is an optional dependency (the "unet" extra) and is
imported only when a U-Net is built.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any

import torch
from torch import Tensor, nn

from easyhard._validate import ConfigError, check_int_at_least
from easyhard.diffusion.ddpm import DDPMSchedule, Index
from easyhard.diffusion.denoiser import NoiseLevel, as_step

MISSING_EXTRA = "the U-Net needs the 'unet' extra: pip install 'easyhard[unet]'"


@dataclass(frozen=True)
class UNetConfig:
    """Hyper-parameters of the U-Net (defaults: the "small" preset of docs/theory/images.md section 1, about 4-8M parameters).

    image_size: side of the square input, divisible by 2^(len(multipliers) - 1).
    channels: input (= output) channels.
    base_width: channels of the first level; level l has base_width * multipliers[l].
    multipliers: per-level width multipliers (>= 1 each); every level but the last halves the
        resolution, so level l works at image_size / 2^l.
    layers_per_block: residual blocks per level.
    attention_resolutions: resolutions (sides) with self-attention; each must be a level's side.
    dropout: in [0, 1).
    """

    image_size: int = 32
    channels: int = 3
    base_width: int = 32
    multipliers: tuple[int, ...] = (1, 2, 2)
    layers_per_block: int = 2
    attention_resolutions: tuple[int, ...] = (16,)
    dropout: float = 0.1

    def __post_init__(self) -> None:
        for name in ("image_size", "channels", "base_width", "layers_per_block"):
            object.__setattr__(self, name, check_int_at_least(name, getattr(self, name), 1))
        multipliers = tuple(self.multipliers)
        if not multipliers:
            raise ConfigError("multipliers must be a non-empty tuple of integers >= 1 (got ())")
        multipliers = tuple(check_int_at_least("multipliers entries", m, 1) for m in multipliers)
        object.__setattr__(self, "multipliers", multipliers)
        factor = 2 ** (len(multipliers) - 1)
        if self.image_size % factor:
            raise ConfigError(f"image_size must be divisible by 2^(len(multipliers) - 1) = {factor} "
                              f"(got {self.image_size})")
        sides = self.resolutions
        attention = tuple(int(r) for r in self.attention_resolutions)
        if any(r not in sides for r in attention):
            raise ConfigError(f"attention_resolutions must be among the level sides {sides} "
                              f"(got {attention})")
        object.__setattr__(self, "attention_resolutions", attention)
        dropout = float(self.dropout)
        if not (math.isfinite(dropout) and 0 <= dropout < 1):
            raise ConfigError(f"dropout must lie in [0, 1) (got {self.dropout!r})")
        object.__setattr__(self, "dropout", dropout)

    @property
    def resolutions(self) -> tuple[int, ...]:
        """Side of the feature maps at each level: image_size / 2^l."""
        return tuple(self.image_size // 2**level for level in range(len(self.multipliers)))

    @property
    def norm_groups(self) -> int:
        """GroupNorm groups: gcd(32, base_width) [choice: 32 as in Ho et al. when the width allows]."""
        return math.gcd(32, self.base_width)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> UNetConfig:
        """A named preset ("small": the default of docs/theory/images.md section 1; "tiny": CPU tests) with optional overrides."""
        if name not in UNET_PRESETS:
            raise ConfigError(f"preset must be one of {', '.join(UNET_PRESETS)} (got {name!r})")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ConfigError(f"preset overrides must be UNetConfig fields (unknown: {', '.join(unknown)})")
        return replace(UNET_PRESETS[name], **overrides)


UNET_PRESETS: dict[str, UNetConfig] = {
    "small": UNetConfig(),
    "tiny": UNetConfig(image_size=8, channels=3, base_width=8, multipliers=(1, 2), layers_per_block=1,
                       attention_resolutions=(4,), dropout=0.0),
}


def n_parameters(module: nn.Module) -> int:
    """Number of trainable parameters (elements) of a module."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


class UNetDenoiser(nn.Module):
    """Wraps a diffusers ``UNet2DModel`` as ``forward(x_t, level) -> eps_hat`` (shape of x_t), a Denoiser;
    ``forward(x_t, i, schedule)`` is the same call.

    The time input of the U-Net is the DDPM index i in the schedule's index base.
    """

    prediction = "eps"

    def __init__(self, unet: nn.Module, config: UNetConfig) -> None:
        super().__init__()
        self.unet = unet
        self.config = config

    def forward(self, x_t: Tensor, i: Index | NoiseLevel, schedule: DDPMSchedule | None = None) -> Tensor:
        i, schedule = as_step(i, schedule)
        c = self.config
        if x_t.shape[1:] != (c.channels, c.image_size, c.image_size):
            raise ConfigError(f"x_t must have shape (B, {c.channels}, {c.image_size}, {c.image_size}) "
                              f"(got {tuple(x_t.shape)})")
        schedule.alpha_bar(i)  # validates i against the schedule
        if isinstance(i, Tensor):
            timesteps = i.to(device=x_t.device, dtype=torch.long).expand(x_t.shape[0])
        else:
            timesteps = torch.full((x_t.shape[0],), int(i), dtype=torch.long, device=x_t.device)
        return self.unet(x_t, timesteps).sample

    @property
    def n_parameters(self) -> int:
        return n_parameters(self)


def make_unet(config: UNetConfig, generator: torch.Generator | None = None) -> UNetDenoiser:
    """Build the diffusers U-Net described by ``config`` and wrap it (:class:`UNetDenoiser`).

    diffusers initialises its layers from torch's global RNG. With a ``generator``, a seed is drawn
    from it and the network is built inside ``torch.random.fork_rng`` seeded with it, so equal
    generators give equal networks and the caller's global RNG state is left untouched.
    Raises ConfigError (one line naming the extra) when diffusers is not installed.
    """
    try:
        from diffusers import UNet2DModel
    except ImportError:
        raise ConfigError(MISSING_EXTRA) from None
    down, up = [], []
    for side in config.resolutions:
        attention = side in config.attention_resolutions
        down.append("AttnDownBlock2D" if attention else "DownBlock2D")
        up.append("AttnUpBlock2D" if attention else "UpBlock2D")
    kwargs = dict(
        sample_size=config.image_size,
        in_channels=config.channels,
        out_channels=config.channels,
        block_out_channels=tuple(config.base_width * m for m in config.multipliers),
        layers_per_block=config.layers_per_block,
        down_block_types=tuple(down),
        up_block_types=tuple(reversed(up)),
        dropout=config.dropout,
        norm_num_groups=config.norm_groups,
        time_embedding_type="positional",
        flip_sin_to_cos=True,
        freq_shift=0,
    )
    if generator is None:
        unet = UNet2DModel(**kwargs)
    else:
        seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            unet = UNet2DModel(**kwargs)
    return UNetDenoiser(unet, config)
