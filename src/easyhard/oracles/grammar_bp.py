"""Exact denoiser of a hierarchical grammar: belief propagation (BP) on its tree, in the log domain.

For x_t = sqrt(abar) e(x0) + sqrt(1 - abar) eps with e the unit-norm one-hot (L, q), the posterior
E[e(x0) | x_t] is the vector of leaf marginals of the tree model with leaf evidence
h = sqrt(abar) / (1 - abar) x_t; on a tree, upward and downward messages give them exactly
(docs/theory/grammar.md sections 1.3-1.4).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from easyhard._validate import ConfigError, check_open_unit
from easyhard.data.grammar import HierarchicalGrammar


class BeliefPropagationDenoiser:
    """``denoiser(x_t, abar)`` -> E[e(x0) | x_t] (B, L, q) for the grammar's sequences, on x_t's device."""

    def __init__(self, grammar: HierarchicalGrammar, dtype: torch.dtype = torch.float64) -> None:
        self.grammar = grammar
        self.dtype = dtype
        self._log_productions = grammar.productions.log().to(dtype)

    def __call__(self, x_t: Tensor, abar: float | Tensor) -> Tensor:
        """Leaf posteriors (B, L, q) in ``dtype``: non-negative, summing to 1 over q. ``abar`` is a number or a
        (B,) tensor in (0, 1)."""
        g = self.grammar
        if x_t.dim() != 3 or x_t.shape[1:] != (g.length, g.q):
            raise ConfigError(f"x_t must have shape (B, {g.length}, {g.q}) (got {tuple(x_t.shape)})")
        x_t = x_t.to(self.dtype)
        coef = _evidence_scale(abar, x_t)
        return self.posteriors(coef.view(-1, 1, 1) * x_t)

    def posteriors(self, h: Tensor) -> Tensor:
        """Leaf marginals (B, L, q) of the tree model whose leaf i has log evidence h[:, i] (eq. 1.4-1.6)."""
        log_m = self._log_productions.to(h.device)
        ups = [torch.log_softmax(h.to(self.dtype), dim=-1)]
        while ups[-1].shape[1] > 1:
            left, right = ups[-1][:, 0::2], ups[-1][:, 1::2]
            over_right = _sum_right(log_m, right)
            ups.append(torch.log_softmax(torch.logsumexp(over_right + left.unsqueeze(2), dim=-1), dim=-1))
        down = torch.full_like(ups[-1], -math.log(self.grammar.q))
        for level in reversed(ups[:-1]):
            left, right = level[:, 0::2], level[:, 1::2]
            to_left = torch.logsumexp(down.unsqueeze(-1) + _sum_right(log_m, right), dim=2)
            to_right = torch.logsumexp(down.unsqueeze(-1) + _sum_left(log_m, left), dim=2)
            down = torch.log_softmax(torch.stack((to_left, to_right), dim=2).flatten(1, 2), dim=-1)
        return torch.softmax(ups[0] + down, dim=-1)


def _sum_right(log_m: Tensor, right: Tensor) -> Tensor:
    """log sum_c M[a, b, c] u_R(c) -> (B, m, a, b)."""
    return torch.logsumexp(log_m + right[:, :, None, None, :], dim=-1)


def _sum_left(log_m: Tensor, left: Tensor) -> Tensor:
    """log sum_b M[a, b, c] u_L(b) -> (B, m, a, c)."""
    return torch.logsumexp(log_m + left[:, :, None, :, None], dim=-2)


def _evidence_scale(abar: float | Tensor, x_t: Tensor) -> Tensor:
    """sqrt(abar) / (1 - abar) as a (B,) or scalar tensor on x_t's device; abar must lie in (0, 1)."""
    if isinstance(abar, Tensor):
        abar = abar.to(device=x_t.device, dtype=x_t.dtype)
        if abar.dim() > 1 or (abar.dim() == 1 and abar.shape[0] != x_t.shape[0]):
            raise ConfigError(f"abar must be a number or a tensor of shape ({x_t.shape[0]},) "
                              f"(got {tuple(abar.shape)})")
        if not bool(((abar > 0) & (abar < 1)).all()):
            raise ConfigError("abar must lie in (0, 1)")
    else:
        abar = torch.tensor(check_open_unit("abar", abar), dtype=x_t.dtype, device=x_t.device)
    return abar.sqrt() / (1 - abar)
