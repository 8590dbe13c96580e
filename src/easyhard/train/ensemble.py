"""Training an ensemble of denoisers, one per data split, in one loop (docs/theory/generalization.md section 4).

Member e is trained on its own finite split D_e (n_e points) with the eps-MSE of Ho et al. (2020):
every step takes, for every member, a batch of ``batch_size`` points of D_e (the split tiled, or drawn
with replacement), fresh indices i ~ U{0..T-1} and eps ~ N(0, I) per example, and minimises

    L = sum_e mean_{b, k} (eps_hat_e(x_i, i) - eps)^2,    x_i = sqrt(abar_i) x0 + sqrt(1 - abar_i) eps,

with Adam. Since the members share no parameters, the sum decouples: each member follows exactly the
trajectory it would follow alone. All randomness comes from one ``torch.Generator`` seeded by
``config.seed``.

Checkpoints are ``checkpoints`` log-spaced steps from ``first`` to ``steps``. At each, the caller's
``on_checkpoint(step, model)`` runs (measurements) and then the training state (model, optimizer,
generator, step, config) is written atomically to ``state.pt``; ``resume=True`` continues from it and a
resumed run equals an uninterrupted one. Non-finite losses stop the run with :class:`DivergenceError`
(checked at checkpoints only, so there is no per-step host synchronisation).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from easyhard._validate import ConfigError, check_choice, check_int_at_least, check_positive
from easyhard.diffusion.ddpm import DDPMSchedule
from easyhard.train.diffusion import STATE_FILE, read_state
from easyhard.train.divergence import DivergenceError

BATCHES = ("tile", "random")


@dataclass(frozen=True)
class EnsembleTrainConfig:
    """steps of Adam (learning rate ``lr``) with ``batch_size`` points per member per step, each with a fresh
    index and noise; ``batches``: "tile" (every point of the split batch_size / n times per step, the CPU
    demonstration of docs/theory/generalization.md) or "random" (drawn with replacement) [choice]; ``checkpoints``
    log-spaced checkpoint steps from ``first`` to ``steps``; ``seed`` of the training generator."""

    steps: int = 8000
    batch_size: int = 128
    lr: float = 1e-3
    checkpoints: int = 24
    first: int = 10
    seed: int = 0
    batches: str = "tile"

    def __post_init__(self) -> None:
        check_int_at_least("steps", self.steps, 1)
        check_int_at_least("batch_size", self.batch_size, 1)
        check_positive("lr", self.lr)
        check_int_at_least("checkpoints", self.checkpoints, 2)
        check_int_at_least("first", self.first, 1)
        check_int_at_least("seed", self.seed, 0)
        check_choice("batches", self.batches, BATCHES)
        if self.first >= self.steps:
            raise ConfigError(f"first must be below steps = {self.steps} (got {self.first})")

    def checkpoint_steps(self) -> list[int]:
        """round(geomspace(first, steps, checkpoints)), deduplicated and increasing; the last is ``steps``."""
        grid = np.unique(np.rint(np.geomspace(self.first, self.steps, self.checkpoints)).astype(int))
        return grid.tolist()

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Splits:
    """Per-member training sets, padded on a leading member axis.

    data: (E, n_max, d), member e's points in rows 0..counts[e]-1; counts: (E,) int64, >= 1.
    """

    data: Tensor
    counts: Tensor

    @classmethod
    def stack(cls, splits: Sequence[Tensor]) -> Splits:
        """Pad a list of E tensors (n_e, d) into (E, max n_e, d) with their counts."""
        if not splits or any(s.ndim != 2 or len(s) == 0 or s.shape[1] != splits[0].shape[1] for s in splits):
            raise ConfigError("splits must be a non-empty list of (n_e, d) tensors with n_e >= 1 and one d")
        n_max = max(len(s) for s in splits)
        data = torch.zeros(len(splits), n_max, splits[0].shape[1], dtype=splits[0].dtype)
        for e, s in enumerate(splits):
            data[e, :len(s)] = s
        return cls(data, torch.tensor([len(s) for s in splits], dtype=torch.long))

    def member(self, e: int) -> Tensor:
        """Member e's training set (n_e, d)."""
        return self.data[e, :int(self.counts[e])]

    def draw(self, batch_size: int, generator: torch.Generator, mode: str = "random") -> Tensor:
        """x0 (E, batch_size, d) from each member's own split: ``mode="random"``, points drawn uniformly with
        replacement; ``mode="tile"``, the split repeated in order (point b mod n_e), so every point appears
        batch_size / n_e times per step (full-batch updates when n_e divides batch_size)."""
        if mode == "tile":
            idx = torch.arange(batch_size, device=self.data.device)[None, :] % self.counts.to(self.data.device)[:, None]
        else:
            u = torch.rand((len(self.counts), batch_size), generator=generator, device=self.data.device)
            idx = (u * self.counts.to(u.device)[:, None]).long()
        return torch.gather(self.data, 1, idx[..., None].expand(-1, -1, self.data.shape[2]))


def ensemble_loss(model: nn.Module, x0: Tensor, schedule: DDPMSchedule, generator: torch.Generator) -> Tensor:
    """Per-member eps-MSE (E,): mean_{b,k} (model(x_i, i)_e - eps)^2 with i ~ U{0..T-1}, eps ~ N(0, I)
    drawn per member and example. x0: (E, B, d)."""
    i = torch.randint(0, schedule.T, x0.shape[:2], generator=generator, device=x0.device) + schedule.index_base
    eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    a, s = (c.to(x0.dtype)[..., None] for c in schedule.coefficients(i))
    return ((model(a * x0 + s * eps, i, schedule) - eps) ** 2).mean((1, 2))


def train_ensemble(model: nn.Module, splits: Splits, schedule: DDPMSchedule, config: EnsembleTrainConfig,
                   out_dir: str | Path, resume: bool = False,
                   on_checkpoint: Callable[[int, nn.Module], None] | None = None,
                   progress: Callable[[int], None] | None = None) -> list[float]:
    """Train every member of ``model`` (``model(x_t (E, B, d), i (E, B), schedule)``) on its split.

    Returns the mean training loss per checkpoint interval, averaged over members. ``resume=True``
    continues from ``out_dir/state.pt`` (ConfigError if missing, unreadable or from another config);
    without it an existing state is an error, so nothing is overwritten.
    """
    from easyhard._io import save_tensors

    out = Path(out_dir)
    state_path = out / STATE_FILE
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    gen = torch.Generator(splits.data.device).manual_seed(config.seed)
    step, losses = 0, []
    state = read_state(state_path, config.to_dict(), resume)
    if state is not None:
        tensors, meta = state
        model.load_state_dict(tensors["model"])
        opt.load_state_dict(tensors["optimizer"])
        gen.set_state(tensors["generator"])
        step, losses = int(meta["step"]), list(meta["losses"])
    checkpoints = [c for c in config.checkpoint_steps() if c > step]
    loss_sum = torch.zeros((), dtype=torch.float64, device=splits.data.device)
    since = 0
    for target in checkpoints:
        while step < target:
            loss = ensemble_loss(model, splits.draw(config.batch_size, gen, config.batches), schedule, gen).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.detach()
            step += 1
            since += 1
            if progress is not None:
                progress(1)
        mean_loss = float(loss_sum) / (since * len(splits.counts))
        if not math.isfinite(mean_loss):
            raise DivergenceError(f"ensemble training diverged (non-finite loss) by step {step}; lower lr")
        losses.append(mean_loss)
        loss_sum.zero_()
        since = 0
        if on_checkpoint is not None:
            on_checkpoint(step, model)
        save_tensors(state_path, {"model": model.state_dict(), "optimizer": opt.state_dict(),
                                  "generator": gen.get_state()},
                     {"step": step, "config": config.to_dict(), "losses": losses})
    return losses
