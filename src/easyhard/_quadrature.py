"""Quadrature rules (nodes, weights) used by the exact computations.

All rules integrate against a probability measure: ``sum(weights) == 1`` and
``E f(X) ~= sum_i weights[i] * f(nodes[i])``. Nodes come from NumPy/SciPy and are returned
as float64 torch tensors so that every formula has one (torch) implementation.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from numpy.polynomial.hermite_e import hermegauss
from numpy.polynomial.legendre import leggauss


@functools.lru_cache(maxsize=32)
def _gauss_hermite_np(n: int) -> tuple[np.ndarray, np.ndarray]:
    nodes, weights = hermegauss(n)
    return nodes, weights / math.sqrt(2 * math.pi)


def gauss_hermite(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Gauss-Hermite rule for g ~ N(0, 1): exact for polynomials of degree <= 2n - 1.

    Returns ``(nodes, weights)``, each of shape (n,), float64.
    """
    nodes, weights = _gauss_hermite_np(n)
    return torch.from_numpy(nodes.copy()), torch.from_numpy(weights.copy())


def composite_legendre(edges: list[float], per_panel: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Composite Gauss-Legendre rule for Lebesgue measure on [edges[0], edges[-1]].

    The interval is split at ``edges`` (put kinks and discontinuities there) and each panel gets
    ``per_panel`` Gauss-Legendre nodes. Weights sum to the interval length (not normalised).
    """
    x, w = leggauss(per_panel)
    nodes, weights = [], []
    for lo, hi in zip(edges[:-1], edges[1:]):
        half = 0.5 * (hi - lo)
        nodes.append(lo + half * (x + 1))
        weights.append(half * w)
    return torch.from_numpy(np.concatenate(nodes)), torch.from_numpy(np.concatenate(weights))


def gaussian_panels(breakpoints: tuple[float, ...] = (), n_panels: int = 24, per_panel: int = 12,
                    half_width: float = 9.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Rule for lambda ~ N(0, 1) that stays accurate for integrands with jumps at ``breakpoints``.

    Composite Gauss-Legendre on [-half_width, half_width] (panel edges include the breakpoints)
    with the standard normal density folded into the weights, renormalised to sum to 1 (the
    mass beyond 9 standard deviations, 2e-19, is dropped).
    """
    edges = set(np.linspace(-half_width, half_width, n_panels + 1).tolist())
    edges.update(float(b) for b in breakpoints)
    nodes, weights = composite_legendre(sorted(edges), per_panel)
    weights = weights * torch.exp(-0.5 * nodes**2) / math.sqrt(2 * math.pi)
    return nodes, weights / weights.sum()
