"""Random hierarchical grammar on a full binary tree: construction, sampling, grammaticality, exact marginals.

A symbol in {0, ..., q-1} at the root is drawn uniformly; every node of the tree emits an ordered pair of
children with probability ``productions[a, b, c] = P(left = b, right = c | parent = a)``; the 2^depth
leaves, read left to right, form the sequence. Each ordered pair (b, c) belongs to at most one parent, so
a sequence has at most one parse. Construction and formulas: docs/theory/grammar.md sections 1.1-1.2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from easyhard._validate import ConfigError, check_int_at_least, check_nonnegative, check_seed

#: the deepest tree accepted (2^10 = 1024 leaves)
MAX_DEPTH = 10


@dataclass(frozen=True, eq=False)
class HierarchicalGrammar:
    """A grammar of depth ``depth`` over ``q`` symbols; ``productions`` is (q, q, q) float64, each parent's
    (q, q) table sums to 1, and no ordered pair has positive probability under two parents."""

    depth: int
    q: int
    productions: Tensor

    def __post_init__(self) -> None:
        _check_depth(self.depth)
        check_int_at_least("q", self.q, 2)
        p = self.productions
        if p.shape != (self.q, self.q, self.q) or p.dtype != torch.float64:
            raise ConfigError(f"productions must be a float64 tensor of shape ({self.q}, {self.q}, {self.q}) "
                              f"(got {p.dtype} {tuple(p.shape)})")
        if not bool(torch.isfinite(p).all()) or bool((p < 0).any()):
            raise ConfigError("productions must be finite and >= 0")
        if not torch.allclose(p.sum((1, 2)), torch.ones(self.q, dtype=p.dtype), rtol=0, atol=1e-12):
            raise ConfigError("productions must sum to 1 over (left, right) for every parent")
        if bool(((p > 0).sum(0) > 1).any()):
            raise ConfigError("productions must give every ordered pair (left, right) to at most one parent")

    @classmethod
    def create(cls, depth: int = 4, q: int = 6, q_eff: int = 4, sigma: float = 1.0,
               seed: int = 0) -> HierarchicalGrammar:
        """The seeded random grammar of docs/theory/grammar.md section 1.1: each parent owns ``q_eff`` of the
        q^2 ordered pairs (disjoint across parents), with softmax weights of logits sigma * N(0, 1).
        The same arguments give the same tensor on every machine (CPU generator)."""
        _check_depth(depth)
        q = check_int_at_least("q", q, 2)
        q_eff = check_int_at_least("q_eff", q_eff, 1)
        if q_eff > q:
            raise ConfigError(f"q_eff must be an integer in [1, q = {q}] (got {q_eff})")
        sigma = check_nonnegative("sigma", sigma)
        generator = torch.Generator().manual_seed(check_seed("seed", seed))
        groups = torch.randperm(q * q, generator=generator).view(q, q)
        values = sigma * torch.randn(q, q_eff, generator=generator, dtype=torch.float64)
        logits = torch.full((q, q * q), -math.inf, dtype=torch.float64)
        logits.scatter_(1, groups[:, :q_eff], values)
        return cls(depth=depth, q=q, productions=torch.softmax(logits, dim=1).view(q, q, q))

    @property
    def length(self) -> int:
        """Number of leaves L = 2^depth."""
        return 2 ** self.depth

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        """``n`` sequences (n, L) int64 on ``generator``'s device, drawn root first, level by level; the same
        generator state gives the same sequences."""
        n = check_int_at_least("n", n, 1)
        flat = self.productions.to(generator.device).view(self.q, self.q * self.q)
        level = torch.randint(self.q, (n, 1), generator=generator, device=generator.device)
        for _ in range(self.depth):
            pairs = torch.multinomial(flat[level.reshape(-1)], 1, generator=generator).view(n, -1)
            level = torch.stack((pairs // self.q, pairs % self.q), dim=2).view(n, -1)
        return level

    def draw_splits(self, sizes: list[int] | tuple[int, ...], n_test: int,
                    generator: torch.Generator) -> tuple[list[Tensor], Tensor]:
        """Training splits and a held-out test set (docs/theory/grammar.md section 1.2): split j holds
        ``sizes[j]`` independent draws (n_j, L); the test set holds ``n_test`` further draws none of which equals
        (in content) a sequence of any split, found by rejection. ConfigError if the grammar's support is too
        small to give them within 64 rounds of draws."""
        sizes = [check_int_at_least("sizes", n, 1) for n in sizes]
        n_test = check_int_at_least("n_test", n_test, 1)
        pool = self.sample(sum(sizes), generator)
        seen = set(map(tuple, pool.tolist()))
        test: list[Tensor] = []
        have = 0
        for _ in range(64):
            cand = self.sample(2 * (n_test - have) + 64, generator)
            fresh = torch.tensor([tuple(row) not in seen for row in cand.tolist()], dtype=torch.bool,
                                 device=cand.device)
            test.append(cand[fresh][:n_test - have])
            have += len(test[-1])
            if have == n_test:
                return list(torch.split(pool, sizes)), torch.cat(test)
        raise ConfigError(f"n_test = {n_test} held-out sequences unseen in the splits could not be drawn: the "
                          f"grammar's support is too small for these sizes")

    def one_hot(self, x: Tensor, dtype: torch.dtype = torch.float64) -> Tensor:
        """Unit-norm one-hot encoding (n, L, q) of sequences ``x`` (n, L)."""
        return torch.nn.functional.one_hot(self._check_sequences(x), self.q).to(dtype)

    def is_grammatical(self, x: Tensor) -> Tensor:
        """Bool (n,): True where ``x`` (n, L) has a parse, i.e. bottom-up every adjacent pair at every level
        is a production of some (necessarily unique) parent."""
        x = self._check_sequences(x)
        owner = self._owner().to(x.device)
        ok = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        level = x
        while level.shape[1] > 1:
            parents = owner[level[:, 0::2], level[:, 1::2]]
            ok &= (parents >= 0).all(dim=1)
            level = parents.clamp(min=0)
        return ok

    def leaf_marginals(self) -> Tensor:
        """Exact single-site marginals (L, q) float64 of the leaves: the uniform root pushed down through the
        left and right child laws (docs/theory/grammar.md section 1.2, eq. 1.3)."""
        left, right = self.productions.sum(2), self.productions.sum(1)
        level = torch.full((1, self.q), 1.0 / self.q, dtype=torch.float64)
        for _ in range(self.depth):
            level = torch.stack((level @ left, level @ right), dim=1).view(-1, self.q)
        return level

    def _owner(self) -> Tensor:
        """(q, q) int64: the parent owning the ordered pair (b, c), or -1 where the pair is forbidden."""
        allowed = self.productions > 0
        return torch.where(allowed.any(0), allowed.to(torch.int64).argmax(0), -1)

    def _check_sequences(self, x: Tensor) -> Tensor:
        if x.dim() != 2 or x.shape[1] != self.length or x.dtype != torch.int64:
            raise ConfigError(f"x must be an int64 tensor of shape (n, {self.length}) (got {x.dtype} "
                              f"{tuple(x.shape)})")
        if x.numel() and (bool((x < 0).any()) or bool((x >= self.q).any())):
            raise ConfigError(f"x must hold symbols in [0, {self.q - 1}]")
        return x


def _check_depth(depth: int) -> int:
    depth = check_int_at_least("depth", depth, 1)
    if depth > MAX_DEPTH:
        raise ConfigError(f"depth must be an integer in [1, {MAX_DEPTH}] (got {depth})")
    return depth
