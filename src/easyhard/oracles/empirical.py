"""Empirical-optimal (memorising) denoiser of a finite training set {x_mu}, mu = 1..n.

For the empirical measure (1/n) sum_mu delta_{x_mu} and x_t = a x0 + s xi, the MMSE denoiser
and the score are

    D_emp(x_t) = sum_mu w_mu(x_t) x_mu,    w = softmax_mu(-||x_t - a x_mu||^2 / (2 s^2)),
    score(x_t) = (a D_emp(x_t) - x_t) / s^2.

Expanding ||x_t - a x_mu||^2 = ||x_t||^2 - 2a x_t.x_mu + a^2 ||x_mu||^2, the first term does not
depend on mu and cancels in the softmax, so the logits are (a x_t.x_mu - a^2 ||x_mu||^2 / 2) / s^2,
one matrix product per block. The softmax is streamed over chunks of the training set (running
maximum, running normaliser and running weighted sum, rescaled whenever the maximum grows), so
memory is O(query_chunk * chunk_size) rather than O(B * n); training chunks are moved to the
queries' device and dtype one at a time, so ``train`` may stay on the CPU.

:class:`EmpiricalDenoiser` is D_emp of a fixed training set as a :class:`~easyhard.diffusion.Denoiser`
(prediction "x0"), e.g. ``sample(EmpiricalDenoiser(train), schedule, shape)`` reproduces training points.
"""

from __future__ import annotations

import torch
from torch import Tensor

from easyhard._validate import ConfigError, check_int_at_least
from easyhard.diffusion.denoiser import NoiseLevel
from easyhard.diffusion.ou import Coefficient, check_positive_coefficient, per_sample
from easyhard.diffusion.parametrization import x0_to_score


def _per_query(name: str, value: Coefficient, queries: Tensor) -> Coefficient:
    """Validate a float or (B,) coefficient; tensors become (B, 1) in the queries' dtype."""
    value = per_sample(check_positive_coefficient(name, value), queries)
    if isinstance(value, Tensor) and value.ndim > 0 and value.shape != (queries.shape[0], 1):
        raise ConfigError(f"{name} must be a float or a tensor of shape ({queries.shape[0]},) "
                          f"(got shape {tuple(value.shape)})")
    return value


def _slice(value: Coefficient, start: int, stop: int) -> Coefficient:
    """Rows start:stop of a per-query (B, 1) coefficient; floats and 0-dim tensors pass through."""
    return value[start:stop] if isinstance(value, Tensor) and value.ndim == 2 else value


def _denoise_block(queries: Tensor, train: Tensor, a: Coefficient, s: Coefficient,
                   chunk_size: int) -> Tensor:
    """Streaming softmax-weighted mean of the training rows for one block of queries.

    queries: (b, D); train: (n, D) on any device; a, s: floats or (b, 1) tensors. Returns (b, D).
    """
    b = queries.shape[0]
    running_max = torch.full((b, 1), -torch.inf, dtype=queries.dtype, device=queries.device)
    normaliser = torch.zeros((b, 1), dtype=queries.dtype, device=queries.device)
    weighted_sum = torch.zeros_like(queries)
    for start in range(0, train.shape[0], chunk_size):
        chunk = train[start:start + chunk_size].to(device=queries.device, dtype=queries.dtype)
        logits = (a * (queries @ chunk.T) - 0.5 * a**2 * (chunk**2).sum(dim=1)) / s**2
        new_max = torch.maximum(running_max, logits.amax(dim=1, keepdim=True))
        rescale = torch.exp(running_max - new_max)
        weights = torch.exp(logits - new_max)
        normaliser = normaliser * rescale + weights.sum(dim=1, keepdim=True)
        weighted_sum = weighted_sum * rescale + weights @ chunk
        running_max = new_max
    return weighted_sum / normaliser


def empirical_denoiser(x_t: Tensor, train: Tensor, a: Coefficient, s: Coefficient,
                       chunk_size: int = 4096, query_chunk: int = 1024) -> Tensor:
    """D_emp(x_t) = sum_mu softmax_mu(-||x_t - a x_mu||^2 / (2 s^2)) x_mu.

    x_t: (B, ...) floating; train: (n, ...) with the same trailing shape (flattened to D
    features internally; the output has x_t's shape, dtype and device). a, s: floats or
    per-sample tensors of shape (B,). The training set is processed ``chunk_size`` rows and the
    queries ``query_chunk`` rows at a time; the result does not depend on either.
    """
    check_int_at_least("chunk_size", chunk_size, 1)
    check_int_at_least("query_chunk", query_chunk, 1)
    if x_t.ndim < 1 or not x_t.is_floating_point():
        raise ConfigError(f"x_t must be a floating tensor of shape (B, ...) (got {x_t.dtype}, ndim {x_t.ndim})")
    if train.ndim < 1 or train.shape[0] < 1 or train.shape[1:] != x_t.shape[1:]:
        raise ConfigError(f"train must have shape (n, {', '.join(map(str, x_t.shape[1:]))}) with n >= 1 "
                          f"to match x_t (got {tuple(train.shape)})")
    queries = x_t.reshape(x_t.shape[0], -1)
    train_flat = train.reshape(train.shape[0], -1)
    a, s = _per_query("a", a, queries), _per_query("s", s, queries)
    blocks = [
        _denoise_block(queries[start:start + query_chunk], train_flat,
                       _slice(a, start, start + query_chunk), _slice(s, start, start + query_chunk),
                       chunk_size)
        for start in range(0, queries.shape[0], query_chunk)
    ]
    out = torch.cat(blocks) if blocks else torch.empty_like(queries)
    return out.reshape(x_t.shape)


def empirical_score(x_t: Tensor, train: Tensor, a: Coefficient, s: Coefficient,
                    chunk_size: int = 4096, query_chunk: int = 1024) -> Tensor:
    """Score of the noised empirical measure: (a D_emp(x_t) - x_t) / s^2, shaped like x_t."""
    denoised = empirical_denoiser(x_t, train, a, s, chunk_size, query_chunk)
    return x0_to_score(denoised, x_t, a, s)


class EmpiricalDenoiser:
    """D_emp of the training set ``train`` (n, ...) as a Denoiser: ``(x_t, level) -> x0_hat`` =
    :func:`empirical_denoiser` (x_t, train, level.a, level.s) for x_t (B, ...) with train's trailing shape."""

    prediction = "x0"
    ensemble = False

    def __init__(self, train: Tensor, chunk_size: int = 4096, query_chunk: int = 1024) -> None:
        if train.ndim < 1 or train.shape[0] < 1 or not train.is_floating_point():
            raise ConfigError(f"train must be a floating tensor of shape (n, ...) with n >= 1 "
                              f"(got {tuple(train.shape)})")
        self.train = train
        self.chunk_size = check_int_at_least("chunk_size", chunk_size, 1)
        self.query_chunk = check_int_at_least("query_chunk", query_chunk, 1)

    def __call__(self, x_t: Tensor, level: NoiseLevel) -> Tensor:
        return empirical_denoiser(x_t, self.train, level.a, level.s, self.chunk_size, self.query_chunk)
