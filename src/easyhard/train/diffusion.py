"""Training a diffusion denoiser on an in-memory dataset (docs/theory/images.md section 1): the settings and
the mini-batches of :func:`easyhard.train.finite.train_loop`.

Checkpoints at step 0 and ``per_decade`` log-spaced steps per decade from ``first`` to the end, each with a
snapshot ``snapshots/step-XXXXXXX.pt`` (model and EMA weights) for measurements and the training state
``state.pt`` from which ``resume=True`` continues exactly. Mini-batches are drawn uniformly with replacement
from the dataset, which lives on the device (there is no DataLoader).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from easyhard._validate import (ConfigError, check_choice, check_int_at_least, check_lr, check_nonnegative,
                                check_positive)
from easyhard.diffusion import DDPMSchedule
# STATE_FILE, read_state, load_snapshot and TrainResult stay importable from here (callers of the former module)
from easyhard.train.finite import (
    STATE_FILE,
    LoopConfig,
    TrainResult,
    checkpoint_grid,
    load_snapshot,
    read_state,
    train_loop,
)

OPTIMIZERS = ("adam", "adamw")


@dataclass(frozen=True)
class DiffusionTrainConfig:
    """Training settings. Defaults: the CPU patch demo of docs/theory/images.md section 9.

    lr with ``warmup`` linear warm-up steps then constant; grad_clip None disables clipping; ema_decay
    None disables the EMA. Checkpoints: step 0 and ``per_decade`` log-spaced steps per decade from
    ``first`` to ``steps``. On CUDA: ``bf16`` autocast, ``channels_last`` and ``compile`` (torch.compile).
    """

    steps: int = 10_000
    batch_size: int = 256
    lr: float = 2e-3
    warmup: int = 100
    optimizer: str = "adam"
    weight_decay: float = 0.0
    grad_clip: float | None = 1.0
    ema_decay: float | None = None
    per_decade: int = 10
    first: int = 100
    seed: int = 0
    device: str = "cpu"
    bf16: bool = True
    channels_last: bool = True
    compile: bool = False

    def __post_init__(self):
        check_int_at_least("steps", self.steps, 1)
        check_int_at_least("batch_size", self.batch_size, 1)
        check_lr("lr", self.lr)
        check_int_at_least("warmup", self.warmup, 0)
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_nonnegative("weight_decay", self.weight_decay)
        if self.grad_clip is not None:
            check_positive("grad_clip", self.grad_clip)
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ConfigError(f"ema_decay must lie in (0, 1) or be None (got {self.ema_decay})")
        check_int_at_least("per_decade", self.per_decade, 1)
        check_int_at_least("first", self.first, 1)
        check_int_at_least("seed", self.seed, 0)
        if self.device != "cpu" and not self.device.startswith("cuda"):
            raise ConfigError(f"device must be cpu or cuda[:N] (got {self.device!r})")

    def checkpoint_steps(self) -> list[int]:
        """0 and ``per_decade`` log-spaced steps per decade from ``first`` to ``steps`` (:func:`checkpoint_grid`)."""
        count = max(2, int(math.ceil(math.log10(self.steps / self.first) * self.per_decade)) + 1)
        return [0, *checkpoint_grid(self.first, self.steps, count)]

    def loop(self, images: bool) -> LoopConfig:
        """The loop settings; ``images``: the data are image batches (N, C, H, W), for ``channels_last``."""
        return LoopConfig(identity=self.to_dict(), steps=self.steps, checkpoints=tuple(self.checkpoint_steps()),
                          lr=self.lr, seed=self.seed, device=self.device, optimizer=self.optimizer,
                          weight_decay=self.weight_decay, fused=self.device.startswith("cuda"), warmup=self.warmup,
                          grad_clip=self.grad_clip, ema_decay=self.ema_decay, snapshots=True, bf16=self.bf16,
                          channels_last=self.channels_last and images, compile=self.compile)

    def to_dict(self) -> dict:
        return asdict(self)


def train_diffusion(model: nn.Module, data: torch.Tensor, schedule: DDPMSchedule, config: DiffusionTrainConfig,
                    out_dir: str | Path, resume: bool = False,
                    on_checkpoint: Callable[[int, nn.Module, nn.Module | None], None] | None = None,
                    progress: Callable[[int], None] | None = None) -> TrainResult:
    """Train ``model`` (``model(x_t, i, schedule) -> eps_hat``) on ``data`` (n, ...) and write checkpoints.

    ``on_checkpoint(step, model, ema)`` runs at every checkpoint step (measurements), before the state is
    saved. ``resume=True`` continues from ``out_dir/state.pt`` (ConfigError if it is missing, CorruptedFile if it
    cannot be used: :func:`~easyhard.train.finite.check_state`); without it an existing state is an error too,
    so nothing is overwritten.
    """
    dev = torch.device(config.device)
    data = data.to(dev)

    def draw(gen: torch.Generator, step: int) -> torch.Tensor:
        """``batch_size`` points drawn uniformly with replacement: (batch_size, ...)."""
        return data[torch.randint(0, len(data), (config.batch_size,), generator=gen, device=dev)]

    return train_loop(model, draw, schedule, config.loop(images=data.ndim == 4), out_dir, resume, on_checkpoint,
                      progress)
