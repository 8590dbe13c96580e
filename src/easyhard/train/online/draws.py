"""Per-member draws of online SGD that do not depend on the ensemble size E (docs/theory/mcm.md section 8.1).

Member e owns a torch generator seeded by its seed. It draws, in this order, the member's initial
weights, its training set (finite-n mode), and then chunk by chunk its latents (lambda, nu), random
times and training-set orders. Chunks have a fixed length (:data:`easyhard.train.online.driver.CHUNK`),
so a member's numbers are the same in an ensemble of any size and at any position in it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from easyhard.data.mcm import MixedCumulantModel
from easyhard.models import Committee
from easyhard.train.online.config import OnlineSGDConfig


class MemberDraws:
    """Per-member torch generators for initialisation, training sets, latents, times and orders."""

    def __init__(self, seeds: Sequence[int]):
        self.gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
        self.perms: list[torch.Tensor] = []
        self.pos = 0

    def initial_params(self, model: Committee) -> dict[str, torch.Tensor]:
        """One initialisation per member, {name: (E, K, d)} float64."""
        inits = [model.init(1, generator=g, dtype=torch.float64) for g in self.gens]
        return {k: torch.cat([p[k] for p in inits]) for k in model.param_names}

    def training_sets(self, models: Sequence[MixedCumulantModel], n: int) -> torch.Tensor:
        """n samples per member from its data model: (E, n, d) float64."""
        return torch.stack([m.sample(n, g, torch.float64) for m, g in zip(models, self.gens)])

    def state(self) -> dict[str, torch.Tensor]:
        """Generator states, the current pass orders (n,) and the position in them (1,) (for checkpoints)."""
        out = {f"draws.gen.{e}": g.get_state() for e, g in enumerate(self.gens)}
        out |= {f"draws.perm.{e}": p.clone() for e, p in enumerate(self.perms)}
        return out | {"draws.pos": torch.tensor([self.pos])}

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        for e, g in enumerate(self.gens):
            g.set_state(tensors[f"draws.gen.{e}"])
        self.perms = [tensors[f"draws.perm.{e}"] for e in range(len(self.gens)) if f"draws.perm.{e}" in tensors]
        self.pos = int(tensors["draws.pos"][0])

    def chunk(self, models: Sequence[MixedCumulantModel], length: int, config: OnlineSGDConfig,
              skip: Callable) -> dict[str, np.ndarray]:
        """Draws for ``length`` steps: lam, nu (E,C); idx (E,C) in finite mode; tco (E,C,4) = (a, s, c, weight)."""
        E = len(self.gens)
        lam = np.zeros((E, length))
        nu = np.zeros((E, length))
        t = np.full((E, length), config.t)
        for e, gen in enumerate(self.gens):
            if config.n_samples is None:  # float32 draws: torch's float64 normals cost 5x more
                la, n_ = models[e].latents.sample(length, gen, torch.float32)
                lam[e], nu[e] = la.numpy(), n_.numpy()
            if config.t_range is not None:
                lo, hi = config.t_range
                t[e] = (lo + (hi - lo) * torch.rand(length, generator=gen, dtype=torch.float64)).numpy()
        finite = config.n_samples is not None
        idx = self._orders(length, config.n_samples) if finite else np.zeros((E, length), np.int64)
        tt = t if config.t_range is not None else t[:1, :1]  # a fixed t: one (a, s, c, weight), broadcast below
        a = np.exp(-tt)
        s = np.sqrt(-np.expm1(-2 * tt))
        c = np.asarray(skip(torch.from_numpy(tt)), dtype=np.float64) * np.ones_like(tt)
        weight = a * a / (s * s) if config.weighting == "eps" else np.ones_like(tt)
        tco = np.empty((E, length, 4))
        tco[...] = np.stack([a, s, c, weight], -1)
        return {"lam": lam, "nu": nu, "idx": idx, "t": t, "tco": tco}

    def _orders(self, length: int, n: int) -> np.ndarray:
        """Training-set indices for ``length`` steps: passes over range(n), each in a fresh random order."""
        out = np.empty((len(self.gens), length), np.int64)
        filled = 0
        while filled < length:
            if not self.perms or self.pos == n:
                self.perms = [torch.randperm(n, generator=g) for g in self.gens]
                self.pos = 0
            take = min(length - filled, n - self.pos)
            for e, perm in enumerate(self.perms):
                out[e, filled:filled + take] = perm[self.pos:self.pos + take].numpy()
            self.pos += take
            filled += take
        return out
