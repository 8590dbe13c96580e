"""Exact denoiser of a hierarchical grammar: belief propagation (BP) on its tree, in the log domain, and the
factorised oracles BP_k.

For x_t = sqrt(abar) e(x0) + sqrt(1 - abar) eps with e the unit-norm one-hot (L, q), the posterior
E[e(x0) | x_t] is the vector of leaf marginals of the tree model with leaf evidence
h = sqrt(abar) / (1 - abar) x_t; on a tree, upward and downward messages give them exactly
(docs/theory/grammar.md sections 1.3-1.4). BP_k replaces the top k levels of the tree by independent
root-to-node channels (section 1.5); :func:`factorisation_kl` measures how far BP_k is from exact BP along
a noise schedule (section 1.6).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch
from torch import Tensor

from easyhard._validate import ConfigError, check_int_at_least, check_int_in
from easyhard.data.grammar import HierarchicalGrammar
from easyhard.diffusion.ddpm import DDPMSchedule
from easyhard.diffusion.denoiser import NoiseLevel
from easyhard.oracles.sequences import check_sequence_input, signal_and_noise

#: probabilities are clipped at this value before a KL is taken (docs/theory/grammar.md section 1.6)
KL_CLIP = 1e-8


class BeliefPropagationDenoiser:
    """``denoiser(x_t, abar)`` or ``denoiser(x_t, level)`` -> E[e(x0) | x_t] (*batch, L, q) for the grammar's
    sequences, on x_t's device; an x0-predicting Denoiser of the library samplers (section 1.8).

    factorised: k in [0, depth]; 0 is exact BP, k > 0 the factorised oracle BP_k of
    docs/theory/grammar.md section 1.5 (the top k levels replaced by independent root-to-node channels).
    """

    prediction = "x0"
    ensemble = False

    def __init__(self, grammar: HierarchicalGrammar, *, factorised: int = 0,
                 dtype: torch.dtype = torch.float64) -> None:
        self.grammar = grammar
        self.factorised = check_int_in("factorised", factorised, 0, grammar.depth)
        self.dtype = dtype
        self._pairs = _PairTables.build(grammar, dtype)
        self._log_channels = root_channels(grammar, self.factorised).log().to(dtype)

    @property
    def length(self) -> int:
        """Sequence length L = 2^depth."""
        return self.grammar.length

    @property
    def q(self) -> int:
        """Number of symbols."""
        return self.grammar.q

    def __call__(self, x_t: Tensor, level: float | Tensor | NoiseLevel) -> Tensor:
        """Leaf posteriors (*batch, L, q) in ``dtype``: non-negative, summing to 1 over q. ``level`` is abar (a
        number or a tensor in (0, 1) broadcasting to the batch shape) or a NoiseLevel (abar = a^2 = 1 - s^2);
        the leaf evidence is h = a / s^2 x_t (eq. 1.4)."""
        x_t = check_sequence_input(x_t, self.length, self.q).to(self.dtype)
        a, s = signal_and_noise(level, x_t)
        h = (a / s**2)[..., None, None] * x_t
        return self.posteriors(h.reshape(-1, self.length, self.q)).reshape(x_t.shape)

    def posteriors(self, h: Tensor) -> Tensor:
        """Leaf marginals (B, L, q) of the tree model whose leaf i has log evidence h[:, i] (eq. 1.5-1.7 exact,
        eq. 1.8-1.10 for k > 0)."""
        pairs = self._pairs.to(h.device)
        ups = [torch.log_softmax(h.to(self.dtype), dim=-1)]
        while ups[-1].shape[1] > 2 ** self.factorised:
            ups.append(torch.log_softmax(pairs.up(ups[-1][:, 0::2], ups[-1][:, 1::2]), dim=-1))
        down = self._channel_messages(ups[-1])
        for level in reversed(ups[:-1]):
            to_left, to_right = pairs.down(down, level[:, 0::2], level[:, 1::2])
            down = torch.log_softmax(torch.stack((to_left, to_right), dim=2).flatten(1, 2), dim=-1)
        return torch.softmax(ups[0] + down, dim=-1)

    def _channel_messages(self, up: Tensor) -> Tensor:
        """Log downward messages (B, 2^k, q) into the level-k nodes from their upward messages ``up``: through
        the root-to-node channels P_j (eq. 1.9-1.10); for k = 0 the uniform root law."""
        log_p = self._log_channels.to(up.device)  # (2^k, r, s)
        to_root = torch.log_softmax(torch.logsumexp(log_p + up.unsqueeze(2), dim=-1), dim=-1)  # (B, 2^k, r)
        cavity = to_root.sum(1, keepdim=True) - to_root  # log prod_{i != j} m_i(r)
        return torch.log_softmax(torch.logsumexp(log_p + cavity.unsqueeze(-1), dim=2), dim=-1)


def root_channels(grammar: HierarchicalGrammar, k: int) -> Tensor:
    """Root-to-node channels P (2^k, q, q) float64 of the level-k nodes, left to right:
    P_j = M_{b_1} M_{b_2} ... M_{b_k} with b_1..b_k the left/right turns on the path from the root to node j
    and M_L[a, b] = sum_c M[a, b, c], M_R[a, c] = sum_b M[a, b, c] (docs/theory/grammar.md eq. 1.8); P_j[r, s]
    is the law of node j's symbol given the root symbol r. k = 0 gives the identity."""
    k = check_int_in("k", k, 0, grammar.depth)
    left, right = grammar.productions.sum(2), grammar.productions.sum(1)
    channels = torch.eye(grammar.q, dtype=torch.float64).unsqueeze(0)
    for _ in range(k):
        channels = torch.stack((channels @ left, channels @ right), dim=1).flatten(0, 1)
    return channels


def factorisation_kl(grammar: HierarchicalGrammar, schedule: DDPMSchedule, ks: Sequence[int],
                     indices: Sequence[int], n: int, generator: torch.Generator) -> Tensor:
    """KL(BP_0 || BP_k) at the steps ``indices`` of ``schedule`` (docs/theory/grammar.md section 1.6, eq. 1.11):
    the mean over n sequences x0 ~ grammar of sum_i KL(p_0,i || p_k,i), probabilities clipped at 1e-8, with
    p_k the BP_k posterior at x_t = sqrt(abar) e(x0) + sqrt(1 - abar) eps. One draw of x0 and eps (from
    ``generator``, on its device) serves every k and every step (common random numbers), so the curves are
    smooth in the step. Returns float64 (len(ks), len(indices)) in nats."""
    ks = [check_int_in("ks", k, 0, grammar.depth) for k in ks]
    indices = list(indices)
    if not ks or not indices:
        raise ConfigError("ks and indices must be non-empty")
    n = check_int_at_least("n", n, 1)
    codes = grammar.one_hot(grammar.sample(n, generator))
    eps = torch.randn(codes.shape, generator=generator, dtype=torch.float64, device=codes.device)
    exact = BeliefPropagationDenoiser(grammar)
    approximations = [BeliefPropagationDenoiser(grammar, factorised=k) for k in ks]
    columns = []
    for i in indices:
        abar = schedule.alpha_bar(i)
        x_t = math.sqrt(abar) * codes + math.sqrt(1 - abar) * eps
        reference = exact(x_t, abar)
        columns.append(torch.stack([_clipped_kl(reference, bp(x_t, abar)).mean() for bp in approximations]))
    return torch.stack(columns, dim=1)


def _clipped_kl(p: Tensor, r: Tensor) -> Tensor:
    """sum over positions and symbols of p log(p / r) with both clipped at KL_CLIP: (B, L, q) -> (B,)."""
    p, r = p.clamp(min=KL_CLIP), r.clamp(min=KL_CLIP)
    return (p * (p.log() - r.log())).sum((-2, -1))


@dataclass(frozen=True)
class _PairTables:
    """The productions indexed by ordered child pair, which has at most one parent (docs/theory/grammar.md
    section 1.4): weight[b, c] = log M[owner(b, c), b, c] (-inf for a forbidden pair, whose owner is stored
    as 0), and each parent's pairs as flat indices b q + c, padded to the largest count (pad log weight -inf).
    The messages (1.5)-(1.6) then cost O(q^2) per node instead of O(q^3)."""

    weight: Tensor  # (q, q) log M of the owner
    owner: Tensor  # (q, q) int64
    parent_pairs: Tensor  # (q, width) int64 flat pair indices, owned ones first
    parent_pad: Tensor  # (q, width) 0 for an owned pair, -inf for padding

    @classmethod
    def build(cls, grammar: HierarchicalGrammar, dtype: torch.dtype) -> _PairTables:
        """The tables of ``grammar`` on the CPU, weights in ``dtype``."""
        allowed = grammar.productions > 0  # (a, b, c)
        counts = allowed.flatten(1).sum(1)
        width = int(counts.max())
        order = allowed.flatten(1).to(torch.int64).argsort(dim=1, descending=True, stable=True)
        pad = torch.where(torch.arange(width) < counts[:, None], 0.0, -math.inf).to(dtype)
        return cls(grammar.productions.sum(0).log().to(dtype), allowed.to(torch.int64).argmax(0),
                   order[:, :width], pad)

    def to(self, device: torch.device) -> _PairTables:
        """The tables on ``device``."""
        return _PairTables(*(getattr(self, f.name).to(device) for f in fields(self)))

    def up(self, left: Tensor, right: Tensor) -> Tensor:
        """log sum_{b,c} M[a, b, c] u_L(b) u_R(c) (B, m, a) from log messages u_L, u_R (B, m, q) (eq. 1.5)."""
        pair = (self.weight + left.unsqueeze(-1) + right.unsqueeze(-2)).flatten(-2)  # (B, m, q^2)
        return torch.logsumexp(pair[..., self.parent_pairs] + self.parent_pad, dim=-1)

    def down(self, parent: Tensor, left: Tensor, right: Tensor) -> tuple[Tensor, Tensor]:
        """log sum_{a,c} d_P(a) M[a, b, c] u_R(c) and log sum_{a,b} d_P(a) M[a, b, c] u_L(b), each (B, m, q),
        from the parent's log downward message d_P and the children's log upward messages (eq. 1.6)."""
        base = self.weight + parent[..., self.owner]  # (B, m, b, c)
        return (torch.logsumexp(base + right.unsqueeze(-2), dim=-1),
                torch.logsumexp(base + left.unsqueeze(-1), dim=-2))
