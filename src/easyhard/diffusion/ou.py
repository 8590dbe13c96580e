"""Continuous Ornstein-Uhlenbeck (variance-preserving) forward process, theory convention.

    x_t = a_t x0 + s_t xi,    a_t = exp(-t),    s_t^2 = Delta_t = 1 - exp(-2t),    xi ~ N(0, I),

with dimensionless time t > 0. The helpers for checking and broadcasting coefficients (a, s, t)
live here too because every other forward-process module uses them: a coefficient is a float
(one value for the whole batch) or a tensor of shape (B,) (one value per sample), which is
reshaped to (B, 1, ..., 1) before it meets a batch of shape (B, ...).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from easyhard._validate import ConfigError, check_positive

Coefficient = float | Tensor


def check_positive_coefficient(name: str, value: Coefficient) -> Coefficient:
    """Check that ``value`` (a float or a tensor of any shape) is finite and > 0 everywhere.

    Returns a float for a float input and the tensor itself otherwise; raises ConfigError.
    """
    if not isinstance(value, Tensor):
        return check_positive(name, value)
    if value.numel() == 0:
        raise ConfigError(f"{name} must be a non-empty tensor of values > 0 (got an empty tensor)")
    if not bool(torch.isfinite(value).all()) or not bool((value > 0).all()):
        raise ConfigError(f"{name} must be finite and > 0 everywhere (got min {value.min().item():g})")
    return value


def per_sample(value: Coefficient, like: Tensor) -> Coefficient:
    """Shape a coefficient so that it broadcasts against the batch ``like`` (B, ...).

    A float is returned unchanged. A tensor of shape (B,) with B == like.shape[0] is reshaped to
    (B, 1, ..., 1) (one value per sample); any other tensor must already broadcast to
    ``like.shape``. Tensors are cast to ``like``'s dtype and device.
    """
    if not isinstance(value, Tensor):
        return value
    if value.ndim == 1 and like.ndim >= 1 and value.shape[0] == like.shape[0]:
        value = value.reshape(value.shape[0], *([1] * (like.ndim - 1)))
    try:
        broadcast = torch.broadcast_shapes(value.shape, like.shape)
    except RuntimeError:
        broadcast = None
    if broadcast != like.shape:
        raise ConfigError(f"coefficient of shape {tuple(value.shape)} must be a float, shape (B,) "
                          f"or broadcastable to the batch shape {tuple(like.shape)}")
    return value.to(dtype=like.dtype, device=like.device)


def ou_coefficients(t: Coefficient) -> tuple[Coefficient, Coefficient]:
    """OU signal and noise scales at time t > 0: a_t = exp(-t), s_t = sqrt(1 - exp(-2t)).

    ``t`` is a float (returns floats) or a tensor of any shape (returns tensors of that shape).
    s_t is computed as sqrt(-expm1(-2t)), accurate for small t.
    """
    t = check_positive_coefficient("t", t)
    if isinstance(t, Tensor):
        if not t.is_floating_point():
            t = t.to(torch.float64)
        return torch.exp(-t), torch.sqrt(-torch.expm1(-2 * t))
    return math.exp(-t), math.sqrt(-math.expm1(-2 * t))


def _standard_normal_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    """xi ~ N(0, I) with x's shape, dtype and device, drawn on the generator's device."""
    device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=device).to(x.device)


def perturb(x0: Tensor, a: Coefficient, s: Coefficient,
            generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Noise a clean batch with given coefficients: x = a x0 + s xi, xi ~ N(0, I).

    x0: (B, ...); a, s: floats or per-sample tensors of shape (B,) (or broadcastable to x0).
    ``generator=None`` uses torch's default generator. Returns ``(x, xi)``, both shaped like x0.
    """
    a = per_sample(check_positive_coefficient("a", a), x0)
    s = per_sample(check_positive_coefficient("s", s), x0)
    xi = _standard_normal_like(x0, generator)
    return a * x0 + s * xi, xi


def ou_noise(x0: Tensor, t: Coefficient,
             generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Sample the OU process at time t: x_t = exp(-t) x0 + sqrt(1 - exp(-2t)) xi.

    x0: (B, ...); t: float or per-sample tensor of shape (B,) (reshaped to (B, 1, ..., 1)).
    Returns ``(x_t, xi)`` with x0's dtype and device.
    """
    a, s = ou_coefficients(t)
    return perturb(x0, a, s, generator)
