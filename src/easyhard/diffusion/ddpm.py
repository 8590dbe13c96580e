"""Discrete DDPM forward process and its map to OU time.

    x_i = sqrt(abar_i) x0 + sqrt(1 - abar_i) eps,    abar_i = prod_{j <= i} (1 - beta_j),

so step i is the OU process (``easyhard.diffusion.ou``) at time t_i = -ln(abar_i) / 2, with
a = sqrt(abar_i) = exp(-t_i) and s = sqrt(1 - abar_i).

Index convention (``index_base``): the schedule is stored as 0-based arrays ``betas[k]`` and
``alphas_bar[k] = prod_{j <= k} (1 - betas[j])`` for k = 0..T-1. With ``index_base=0`` the
public methods take i = 0..T-1 and use k = i; with ``index_base=1`` they take i = 1..T and use
k = i - 1 (so ``alpha_bar(1)`` is ``1 - betas[0]`` in both readings of "the first step").
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import torch
from torch import Tensor

from easyhard._validate import (ConfigError, check_choice, check_open_unit, check_positive,
                                check_schedule_length)
from easyhard.diffusion.ou import Coefficient, check_positive_coefficient, perturb

Index = int | Tensor

SCHEDULE_KINDS = ("linear", "cosine")
_COSINE_MAX_BETA = 0.999


def linear_betas(T: int, beta_start: float, beta_end: float) -> Tensor:
    """Ho et al. (2020): beta_k = beta_start + (beta_end - beta_start) k / (T - 1), k = 0..T-1.

    Returns a float64 tensor of shape (T,).
    """
    return torch.linspace(beta_start, beta_end, T, dtype=torch.float64)


def cosine_betas(T: int, offset: float = 0.008, max_beta: float = _COSINE_MAX_BETA) -> Tensor:
    """Nichol & Dhariwal (2021) cosine schedule, float64 tensor of shape (T,).

        f(u) = cos^2((u / T + offset) / (1 + offset) * pi / 2),
        betas[k] = min(1 - f(k + 1) / f(k), max_beta),    k = 0..T-1,

    i.e. the 0-based step k ends at the paper's continuous step u = k + 1, so that before
    clipping alphas_bar[k] = f(k + 1) / f(0). With the default offset only the last step
    (f(T) = 0, beta = 1) is clipped.
    """
    u = torch.arange(T + 1, dtype=torch.float64)
    f = torch.cos((u / T + offset) / (1 + offset) * (math.pi / 2)) ** 2
    return (1 - f[1:] / f[:-1]).clamp(max=max_beta)


@dataclasses.dataclass(frozen=True)
class DDPMSchedule:
    """A validated DDPM noise schedule together with its index convention.

    kind: "linear" (uses beta_start, beta_end) or "cosine" (uses cosine_offset; beta_start and
        beta_end are stored but unused).
    T: number of steps (>= 1).
    beta_start, beta_end: linear schedule endpoints, 0 < beta_start <= beta_end < 1. The
        standard 1e-4..0.02 gives abar_{T-1} = 4.0e-5 at T = 1000; beta_end = 0.01 gives
        abar_{T-1} = 6.3e-3, so the terminal state is then not pure noise.
    index_base: 0 (indices 0..T-1) or 1 (indices 1..T); see the module docstring.
    cosine_offset: the offset s = 0.008 of Nichol & Dhariwal (2021).
    """

    kind: str = "linear"
    T: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    index_base: int = 0
    cosine_offset: float = 0.008

    def __post_init__(self) -> None:
        check_choice("kind", self.kind, SCHEDULE_KINDS)
        object.__setattr__(self, "T", check_schedule_length("T", self.T, 1))
        object.__setattr__(self, "beta_start", check_open_unit("beta_start", self.beta_start))
        object.__setattr__(self, "beta_end", check_open_unit("beta_end", self.beta_end))
        if self.beta_end < self.beta_start:
            raise ConfigError(f"beta_end must be >= beta_start = {self.beta_start:g} "
                              f"(got {self.beta_end:g})")
        if isinstance(self.index_base, bool) or self.index_base not in (0, 1):
            raise ConfigError(f"index_base must be 0 or 1 (got {self.index_base!r})")
        object.__setattr__(self, "index_base", int(self.index_base))
        object.__setattr__(self, "cosine_offset", check_positive("cosine_offset", self.cosine_offset))

    # ----------------------------------------------------------------- schedule arrays (0-based)
    @functools.cached_property
    def _betas(self) -> Tensor:
        if self.kind == "linear":
            return linear_betas(self.T, self.beta_start, self.beta_end)
        return cosine_betas(self.T, self.cosine_offset)

    @functools.cached_property
    def _alphas_bar(self) -> Tensor:
        return torch.cumprod(1 - self._betas, dim=0)

    @property
    def betas(self) -> Tensor:
        """beta_k for k = 0..T-1 (0-based storage), float64 tensor of shape (T,)."""
        return self._betas.clone()

    @property
    def alphas_bar(self) -> Tensor:
        """abar_k = prod_{j <= k} (1 - beta_j) for k = 0..T-1 (0-based storage), float64 (T,)."""
        return self._alphas_bar.clone()

    @property
    def ou_times(self) -> Tensor:
        """t_k = -ln(abar_k) / 2 for k = 0..T-1 (0-based storage), float64 (T,), increasing."""
        return -0.5 * torch.log(self._alphas_bar)

    @property
    def indices(self) -> range:
        """The valid step indices in the stored base: range(index_base, index_base + T)."""
        return range(self.index_base, self.index_base + self.T)

    # ----------------------------------------------------------------- per-index quantities
    def _storage_index(self, i: Index) -> Index:
        """Validate a step index in the stored base and return the 0-based storage index."""
        low, high = self.index_base, self.index_base + self.T - 1
        message = f"step index i must be an integer in [{low}, {high}] (index_base={low})"
        if isinstance(i, Tensor):
            if i.is_floating_point() or i.is_complex() or i.dtype == torch.bool:
                raise ConfigError(f"{message}; got a tensor of dtype {i.dtype}")
            if i.numel() and (int(i.min()) < low or int(i.max()) > high):
                raise ConfigError(f"{message} (got values in [{int(i.min())}, {int(i.max())}])")
            return i.to(torch.long) - low
        if isinstance(i, bool) or int(i) != i or not low <= int(i) <= high:
            raise ConfigError(f"{message} (got {i!r})")
        return int(i) - low

    def _lookup(self, values: Tensor, i: Index) -> Coefficient:
        k = self._storage_index(i)
        if isinstance(k, Tensor):
            return values.to(k.device)[k]
        return float(values[k])

    def alpha_bar(self, i: Index) -> Coefficient:
        """abar at step i (stored base): a float for an int, a float64 tensor for a LongTensor."""
        return self._lookup(self._alphas_bar, i)

    def ou_time(self, i: Index) -> Coefficient:
        """OU time of step i: t_i = -ln(abar_i) / 2 (float for an int, tensor for a LongTensor)."""
        return self._lookup(self.ou_times, i)

    def coefficients(self, i: Index) -> tuple[Coefficient, Coefficient]:
        """(a, s) = (sqrt(abar_i), sqrt(1 - abar_i)) at step i (floats or float64 tensors)."""
        abar = self.alpha_bar(i)
        if isinstance(abar, Tensor):
            return torch.sqrt(abar), torch.sqrt(1 - abar)
        return math.sqrt(abar), math.sqrt(1 - abar)

    def index_for_ou_time(self, t: Coefficient) -> Index:
        """Step index (stored base) whose OU time -ln(abar_i)/2 is nearest to t > 0.

        ``t`` is a float (returns an int) or a tensor of any shape (returns a LongTensor).
        """
        t = check_positive_coefficient("t", t)
        times = self.ou_times
        if isinstance(t, Tensor):
            distance = (t.to(torch.float64).cpu().unsqueeze(-1) - times).abs()
            return (distance.argmin(dim=-1) + self.index_base).to(t.device)
        return int((times - t).abs().argmin()) + self.index_base

    def add_noise(self, x0: Tensor, i: Index,
                  generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Sample step i: x_i = sqrt(abar_i) x0 + sqrt(1 - abar_i) eps, eps ~ N(0, I).

        x0: (B, ...); i: int or LongTensor of shape (B,) (per-sample steps, stored base).
        Returns ``(x_i, eps)`` with x0's dtype and device.
        """
        a, s = self.coefficients(i)
        return perturb(x0, a, s, generator)

    # ----------------------------------------------------------------- serialisation
    def to_dict(self) -> dict[str, Any]:
        """All fields as plain Python values, for saving the convention with a checkpoint."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DDPMSchedule:
        """Inverse of :meth:`to_dict`. Every field must be present (so that a checkpoint cannot
        silently fall back to a default index convention) and no other key is allowed."""
        names = {field.name for field in dataclasses.fields(cls)}
        missing, unknown = sorted(names - data.keys()), sorted(data.keys() - names)
        if missing or unknown:
            raise ConfigError(f"DDPMSchedule dict must have exactly the keys {', '.join(sorted(names))} "
                              f"(missing: {missing}, unknown: {unknown})")
        return cls(**data)
