"""Training an ensemble of denoisers, one per data split, in one loop (docs/theory/generalization.md section 4).

Member e is trained on its own finite split D_e (n_e points) with the eps-MSE of Ho et al. (2020):
every step takes, for every member, a batch of ``batch_size`` points of D_e (the split tiled, or drawn
with replacement), fresh indices i ~ U{0..T-1} and eps ~ N(0, I) per example, and minimises

    L = sum_e mean_{b, k} (eps_hat_e(x_i, i) - eps)^2,    x_i = sqrt(abar_i) x0 + sqrt(1 - abar_i) eps,

with Adam: the loop of :func:`easyhard.train.finite.train_loop` on a model with a leading member axis.
Since the members share no parameters, the sum decouples: each member follows exactly the trajectory it
would follow alone. Token sequences (splits of int64 sequences (n_e, L)) are trained the same way with
``loss=sequence_loss``, the token cross-entropy of docs/theory/generalization.md section 8.5, and usually
an EMA of the weights (``ema_decay``; section 12). Checkpoints are ``checkpoints`` log-spaced steps from
``first`` to ``steps``; at each the caller's ``on_checkpoint(step, model)`` runs (measurements, on the EMA
weights when there is an EMA) and then the training state is written to ``state.pt``, from which
``resume=True`` continues exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from easyhard._validate import ConfigError, check_choice, check_int_at_least, check_lr, check_open_unit, check_seed
from easyhard.diffusion.ddpm import DDPMSchedule

# STATE_FILE and read_state stay importable from here (callers of the former module)
from easyhard.train.finite import STATE_FILE, Loss, LoopConfig, checkpoint_grid, denoising_loss, read_state, train_loop

BATCHES = ("tile", "random")


@dataclass(frozen=True)
class EnsembleTrainConfig:
    """steps of Adam (learning rate ``lr``) with ``batch_size`` points per member per step, each with a fresh
    index and noise; ``batches``: "tile" (every point of the split batch_size / n times per step, the CPU
    demonstration of docs/theory/generalization.md) or "random" (drawn with replacement) [choice]; ``checkpoints``
    log-spaced checkpoint steps from ``first`` to ``steps``; ``seed`` of the training generator; ``ema_decay``
    in (0, 1): keep the EMA e <- ema_decay e + (1 - ema_decay) w of the weights after every step and measure it
    at the checkpoints (None: no EMA, the live weights are measured), with ``ema_warmup`` the decay
    min(ema_decay, (1 + s) / (10 + s)) after step s; ``lr_schedule`` "constant" or "sequences"
    (the learning-rate factor of docs/theory/generalization.md section 8.5: 1 -> 0.5 linearly over ``lr_warm``
    steps, then a cosine to 0.1 at the end; :class:`~easyhard.train.finite.LoopConfig`)."""

    steps: int = 8000
    batch_size: int = 128
    lr: float = 1e-3
    checkpoints: int = 24
    first: int = 10
    seed: int = 0
    batches: str = "tile"
    ema_decay: float | None = None
    ema_warmup: bool = False
    lr_schedule: str = "constant"
    lr_warm: int = 0

    def __post_init__(self) -> None:
        check_int_at_least("steps", self.steps, 1)
        check_int_at_least("batch_size", self.batch_size, 1)
        check_lr("lr", self.lr)
        check_int_at_least("checkpoints", self.checkpoints, 2)
        check_int_at_least("first", self.first, 1)
        check_int_at_least("seed", self.seed, 0)
        check_choice("batches", self.batches, BATCHES)
        check_seed("seed", self.seed)
        if self.ema_decay is not None:
            object.__setattr__(self, "ema_decay", check_open_unit("ema_decay", self.ema_decay))
        if self.first >= self.steps:
            raise ConfigError(f"steps must be above first = {self.first}, the first checkpoint (got {self.steps})")
        self.loop(torch.device("cpu"))  # the schedule's own checks (lr_schedule, lr_warm)

    def checkpoint_steps(self) -> list[int]:
        """``checkpoints`` log-spaced steps from ``first`` to ``steps`` (:func:`checkpoint_grid`)."""
        return checkpoint_grid(self.first, self.steps, self.checkpoints)

    def loop(self, device: torch.device) -> LoopConfig:
        """The loop settings for an ensemble whose splits live on ``device``: Adam, no warm-up or clipping, the
        EMA of ``ema_decay`` and the learning-rate schedule."""
        return LoopConfig(identity=self.to_dict(), steps=self.steps, checkpoints=tuple(self.checkpoint_steps()),
                          lr=self.lr, seed=self.seed, device=str(device), ema_decay=self.ema_decay, member_axis=True,
                          lr_schedule=self.lr_schedule, lr_warm=self.lr_warm, ema_warmup=self.ema_warmup)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Splits:
    """Per-member training sets, padded on a leading member axis.

    data: (E, n_max, d), member e's points (or int64 token sequences of length d) in rows 0..counts[e]-1;
    counts: (E,) int64, >= 1.
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

    def draw(self, batch_size: int, generator: torch.Generator, mode: str = "random", step: int = 0) -> Tensor:
        """x0 (E, batch_size, d) from each member's own split: ``mode="random"``, points drawn uniformly with
        replacement; ``mode="tile"``, the split repeated in order and continued across steps (point
        (step * batch_size + b) mod n_e), so every point appears batch_size / n_e times per step on average and
        exactly lcm(batch_size, n_e) / n_e times in every lcm(batch_size, n_e) / batch_size consecutive steps.
        When n_e divides batch_size every step is the same full-batch update (point b mod n_e)."""
        if mode == "tile":
            counts = self.counts.to(self.data.device)[:, None]
            start = (step * batch_size) % counts  # (E, 1): the cursor, reduced before adding to stay small
            idx = (start + torch.arange(batch_size, device=self.data.device)[None, :]) % counts
        else:
            u = torch.rand((len(self.counts), batch_size), generator=generator, device=self.data.device)
            idx = (u * self.counts.to(u.device)[:, None]).long()
        return torch.gather(self.data, 1, idx[..., None].expand(-1, -1, self.data.shape[2]))


def train_ensemble(model: nn.Module, splits: Splits, schedule: DDPMSchedule, config: EnsembleTrainConfig,
                   out_dir: str | Path, resume: bool = False,
                   on_checkpoint: Callable[[int, nn.Module], None] | None = None,
                   progress: Callable[[int], None] | None = None, loss: Loss = denoising_loss) -> list[float]:
    """Train every member of ``model`` on its split with the per-member ``loss``: :func:`denoising_loss` (the
    default) for ``model(x_t (E, B, d), i (E, B), schedule) -> eps_hat``, or
    :func:`~easyhard.train.finite.sequence_loss` for an x0-logit network on token splits (E, n, L).

    ``on_checkpoint(step, net)`` gets the EMA model when ``config.ema_decay`` is set, else the live model, in
    eval mode (the live model is switched back to training afterwards). Returns the mean training loss per
    checkpoint interval, averaged over members. ``resume=True`` continues from ``out_dir/state.pt``
    (ConfigError if missing, CorruptedFile if it cannot be used: :func:`~easyhard.train.finite.check_state`);
    without it an existing state is an error, so nothing is overwritten.
    """

    def measure(step: int, net: nn.Module, ema: nn.Module | None) -> None:
        evaluated = net if ema is None else ema
        evaluated.eval()
        try:
            on_checkpoint(step, evaluated)
        finally:
            net.train()

    result = train_loop(model, lambda gen, step: splits.draw(config.batch_size, gen, config.batches, step), schedule,
                        config.loop(splits.data.device), out_dir, resume, None if on_checkpoint is None else measure,
                        progress, loss)
    return result.train_loss
