"""Denoisers of noised one-hot sequences, and the noise level they read.

A sequence x0 in {0, ..., q-1}^L is encoded as the one-hot e(x0) (L, q) and noised as
x_t = sqrt(abar) e(x0) + sqrt(1 - abar) eps (docs/theory/grammar.md section 1.3). The sequence denoisers
(:class:`EmpiricalSequenceDenoiser` here, :class:`~easyhard.oracles.grammar_bp.BeliefPropagationDenoiser`)
take x_t of shape (*batch, L, q) with the level either as abar or as a
:class:`~easyhard.diffusion.NoiseLevel` (a = sqrt(abar), s = sqrt(1 - abar)), so they serve both as plain
functions and as x0-predicting Denoisers of the library samplers (docs/theory/grammar.md section 1.8).
"""

from __future__ import annotations

import torch
from torch import Tensor

from easyhard._validate import ConfigError, check_int_at_least, check_open_unit
from easyhard.diffusion.denoiser import NoiseLevel
from easyhard.oracles.empirical import empirical_denoiser


def signal_and_noise(level: float | Tensor | NoiseLevel, x_t: Tensor) -> tuple[Tensor, Tensor]:
    """(a, s) = (sqrt(abar), sqrt(1 - abar)) for ``level`` = abar (a number or a tensor in (0, 1)), or
    (level.a, level.s) for a NoiseLevel; as tensors of the batch shape x_t.shape[:-2] in x_t's dtype and
    device. Tensor values broadcast, right-aligned, to that batch shape."""
    batch = tuple(x_t.shape[:-2])
    if isinstance(level, NoiseLevel):
        a = _batch_values("level.a", level.a, batch, x_t)
        s = _batch_values("level.s", level.s, batch, x_t)
        if not bool(((a > 0) & (a < 1) & (s > 0) & (s < 1)).all()):
            raise ConfigError("level.a and level.s must lie in (0, 1)")
        return a, s
    if not isinstance(level, Tensor):
        level = check_open_unit("abar", level)
    abar = _batch_values("abar", level, batch, x_t)
    if not bool(((abar > 0) & (abar < 1)).all()):
        raise ConfigError("abar must lie in (0, 1)")
    return abar.sqrt(), (1 - abar).sqrt()


def _batch_values(name: str, value: float | Tensor, batch: tuple[int, ...], x_t: Tensor) -> Tensor:
    """``value`` as a tensor expanded to the batch shape, in x_t's dtype and device."""
    value = torch.as_tensor(value, dtype=x_t.dtype, device=x_t.device)
    try:
        ok = torch.broadcast_shapes(value.shape, batch) == batch
    except RuntimeError:
        ok = False
    if not ok:
        raise ConfigError(f"{name} must be a number or a tensor broadcasting to the batch shape {batch} "
                          f"(got shape {tuple(value.shape)})")
    return value.expand(batch)


def check_sequence_input(x_t: Tensor, length: int, q: int) -> Tensor:
    """x_t itself if it is a floating tensor of shape (*batch, length, q) with at least one batch axis."""
    if x_t.dim() < 3 or tuple(x_t.shape[-2:]) != (length, q) or not x_t.is_floating_point():
        raise ConfigError(f"x_t must be a floating tensor of shape (*batch, {length}, {q}) with at least one "
                          f"batch axis (got {x_t.dtype} {tuple(x_t.shape)})")
    return x_t


class EmpiricalSequenceDenoiser:
    """Empirical-optimal denoiser of a finite set of sequences (docs/theory/grammar.md section 1.7):

        D(x_t) = sum_mu w_mu e(x^mu),    w = softmax_mu(-||x_t - sqrt(abar) e(x^mu)||^2 / (2 (1 - abar))),

    the posterior mean of e(x0) when x0 is uniform over the n given sequences. ``sequences`` (n, L) int64
    with symbols in [0, q-1]. Called as ``denoiser(x_t, abar)`` or ``denoiser(x_t, level)`` with x_t
    (*batch, L, q); returns (*batch, L, q) in ``dtype`` on x_t's device (rows sum to 1). The softmax is
    streamed over the set by :func:`easyhard.oracles.empirical.empirical_denoiser`.
    """

    prediction = "x0"
    ensemble = False

    def __init__(self, sequences: Tensor, q: int, dtype: torch.dtype = torch.float64) -> None:
        self.q = check_int_at_least("q", q, 2)
        if sequences.dim() != 2 or sequences.shape[0] < 1 or sequences.dtype != torch.int64:
            raise ConfigError(f"sequences must be an int64 tensor of shape (n, L) with n >= 1 "
                              f"(got {sequences.dtype} {tuple(sequences.shape)})")
        if bool((sequences < 0).any()) or bool((sequences >= q).any()):
            raise ConfigError(f"sequences must hold symbols in [0, {q - 1}]")
        self.length = sequences.shape[1]
        self.dtype = dtype
        self.codes = torch.nn.functional.one_hot(sequences, q).to(dtype)  # (n, L, q)

    def __call__(self, x_t: Tensor, level: float | Tensor | NoiseLevel) -> Tensor:
        """Weighted average (*batch, L, q) of the one-hot sequences, weights as in the class docstring."""
        x_t = check_sequence_input(x_t, self.length, self.q).to(self.dtype)
        a, s = signal_and_noise(level, x_t)
        flat = x_t.reshape(-1, self.length, self.q)
        out = empirical_denoiser(flat, self.codes, a.reshape(-1), s.reshape(-1))
        return out.reshape(x_t.shape)
