"""Training a diffusion denoiser on a finite dataset, with exact resume (docs/theory/images.md section 1).

One step (Ho et al. 2020): draw a mini-batch x0 of the in-memory training set, indices i ~ U{0..T-1}
and eps ~ N(0, I), form x_i = sqrt(abar_i) x0 + sqrt(1 - abar_i) eps and minimise the eps-MSE
mean((model(x_i, i) - eps)^2) with Adam/AdamW, a linear learning-rate warm-up, gradient clipping and
an optional EMA of the weights.

Checkpoints at step 0 and ``per_decade`` log-spaced steps per decade from ``first`` to the end:

- a *snapshot* ``snapshots/step-XXXXXXX.pt`` (model and EMA weights only) for measurements;
- the *training state* ``state.pt`` (model, EMA, optimizer, scheduler, generator states, step and the
  config), written atomically, from which ``resume=True`` continues exactly: on CPU a resumed run ends
  with the weights of an uninterrupted one. Every file is read with ``torch.load(weights_only=True)``.

All randomness (mini-batch indices, noise indices, eps) comes from one ``torch.Generator`` seeded by
``config.seed`` on the training device, so two runs with the same seed (e.g. the real and the clone arm)
see the same indices and noise. The dataset lives on the device; there is no DataLoader.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from easyhard._validate import ConfigError, check_choice, check_int_at_least, check_nonnegative, check_positive
from easyhard.diffusion import DDPMSchedule
from easyhard.train.divergence import DivergenceError

OPTIMIZERS = ("adam", "adamw")
STATE_FILE = "state.pt"


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
        check_positive("lr", self.lr)
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
        """0 and ``per_decade`` log-spaced steps per decade from ``first`` to ``steps`` (deduplicated, sorted)."""
        if self.steps <= self.first:
            return [0, self.steps]
        decades = math.log10(self.steps / self.first)
        n = max(2, int(math.ceil(decades * self.per_decade)) + 1)
        grid = np.unique(np.rint(np.geomspace(self.first, self.steps, n)).astype(int))
        return [0, *grid.tolist()]

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainResult:
    """What a training run recorded: checkpoint steps, the mean training loss between them, throughput."""

    checkpoint_steps: list[int]
    train_loss: list[float]
    images_per_s: float
    snapshots: list[str] = field(default_factory=list)


def _lr_lambda(warmup: int) -> Callable[[int], float]:
    return lambda step: min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0


def _make_optimizer(model: nn.Module, config: DiffusionTrainConfig) -> torch.optim.Optimizer:
    fused = {"fused": True} if config.device.startswith("cuda") else {}
    cls = torch.optim.Adam if config.optimizer == "adam" else torch.optim.AdamW
    return cls(model.parameters(), lr=config.lr, weight_decay=config.weight_decay, **fused)


def _ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema <- decay ema + (1 - decay) model, parameter by parameter (buffers copied)."""
    with torch.no_grad():
        for pe, pm in zip(ema.parameters(), model.parameters()):
            pe.lerp_(pm, 1.0 - decay)
        for be, bm in zip(ema.buffers(), model.buffers()):
            be.copy_(bm)


def denoising_loss(model: nn.Module, x0: torch.Tensor, schedule: DDPMSchedule,
                   generator: torch.Generator) -> torch.Tensor:
    """mean((model(x_i, i) - eps)^2) with i ~ U{0..T-1} (stored base) and eps ~ N(0, I) drawn from ``generator``."""
    i = torch.randint(0, schedule.T, (len(x0),), generator=generator, device=x0.device) + schedule.index_base
    eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    a, s = schedule.coefficients(i)
    shape = (-1,) + (1,) * (x0.ndim - 1)
    x_t = a.to(x0.dtype).reshape(shape) * x0 + s.to(x0.dtype).reshape(shape) * eps
    return ((model(x_t, i, schedule) - eps) ** 2).mean()


def read_state(state_path: Path, config: dict, resume: bool) -> tuple[dict, dict] | None:
    """The saved training state (tensors, meta) to resume from, or None for a fresh run.

    ``resume=True`` needs ``state_path`` written with the same ``config`` (ConfigError if it is missing,
    unreadable or from another config); without it an existing state is an error, so nothing is overwritten.
    """
    from easyhard._io import load_tensors

    if not resume:
        if state_path.exists():
            raise ConfigError(f"{state_path} exists: pass resume to continue that run, or use a new folder")
        return None
    if not state_path.exists():
        raise ConfigError(f"nothing to resume: {state_path} does not exist")
    tensors, meta = load_tensors(state_path)
    if meta.get("config") != json.loads(json.dumps(config)):
        raise ConfigError(f"{state_path} was written with another training config; use a new --out")
    return tensors, meta


def train_diffusion(model: nn.Module, data: torch.Tensor, schedule: DDPMSchedule, config: DiffusionTrainConfig,
                    out_dir: str | Path, resume: bool = False,
                    on_checkpoint: Callable[[int, nn.Module, nn.Module | None], None] | None = None,
                    progress: Callable[[int], None] | None = None) -> TrainResult:
    """Train ``model`` (``model(x_t, i, schedule) -> eps_hat``) on ``data`` (n, ...) and write checkpoints.

    ``on_checkpoint(step, model, ema)`` runs at every checkpoint step (measurements), after the state is
    saved. ``resume=True`` continues from ``out_dir/state.pt`` (ConfigError if it is missing, unreadable
    or from another config); without it an existing state is an error too, so nothing is overwritten.
    """
    from easyhard._io import atomic_write_json, save_tensors

    out = Path(out_dir)
    dev = torch.device(config.device)
    data = data.to(dev)
    model = model.to(dev)
    ema = None
    if config.ema_decay is not None:
        import copy

        ema = copy.deepcopy(model).requires_grad_(False)
    opt = _make_optimizer(model, config)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(config.warmup))
    gen = torch.Generator(dev).manual_seed(config.seed)
    ckpts = set(config.checkpoint_steps())
    log = {"checkpoint_steps": [], "train_loss": [], "images_per_s": []}
    step = 0
    state_path = out / STATE_FILE
    state = read_state(state_path, config.to_dict(), resume)
    if state is not None:
        tensors, meta = state
        model.load_state_dict(tensors["model"])
        if ema is not None:
            ema.load_state_dict(tensors["ema"])
        opt.load_state_dict(tensors["optimizer"])
        sched.load_state_dict(tensors["scheduler"])
        gen.set_state(tensors["generator"])
        step, log = int(meta["step"]), meta["log"]

    def save(at: int) -> None:
        snap = {"model": model.state_dict(), **({"ema": ema.state_dict()} if ema is not None else {})}
        save_tensors(out / "snapshots" / f"step-{at:07d}.pt", snap, {"step": at})
        state = {**snap, "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "generator": gen.get_state()}
        save_tensors(state_path, state, {"step": at, "config": config.to_dict(), "log": log})
        atomic_write_json(out / "train_log.json", log)

    if step == 0:
        save(0)
        if on_checkpoint is not None:
            on_checkpoint(0, model, ema)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" and config.bf16 else None
    if dev.type == "cuda" and config.channels_last and data.ndim == 4:
        model = model.to(memory_format=torch.channels_last)
    step_fn = torch.compile(model) if config.compile and dev.type == "cuda" else model
    loss_sum = torch.zeros((), device=dev, dtype=torch.float64)
    since, start = 0, time.perf_counter()
    model.train()
    while step < config.steps:
        idx = torch.randint(0, len(data), (config.batch_size,), generator=gen, device=dev)
        if autocast is not None:
            with autocast:
                loss = denoising_loss(step_fn, data[idx], schedule, gen)
        else:
            loss = denoising_loss(step_fn, data[idx], schedule, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        opt.step()
        sched.step()
        if ema is not None:
            _ema_update(ema, model, config.ema_decay)
        loss_sum += loss.detach().double()
        step += 1
        since += 1
        if progress is not None:
            progress(1)
        if step in ckpts or step == config.steps:
            mean_loss = float(loss_sum) / since
            if not math.isfinite(mean_loss):
                raise DivergenceError(f"training diverged (non-finite loss) by step {step}; lower lr")
            elapsed = time.perf_counter() - start
            log["checkpoint_steps"].append(step)
            log["train_loss"].append(mean_loss)
            log["images_per_s"].append(since * config.batch_size / max(elapsed, 1e-9))
            save(step)
            if on_checkpoint is not None:
                on_checkpoint(step, model, ema)
            loss_sum.zero_()
            since, start = 0, time.perf_counter()
    snapshots = sorted(str(p) for p in (out / "snapshots").glob("step-*.pt"))
    rate = float(np.mean(log["images_per_s"])) if log["images_per_s"] else 0.0
    return TrainResult([0, *log["checkpoint_steps"]], log["train_loss"], rate, snapshots)


def load_snapshot(path: str | Path, model: nn.Module, ema: bool = False) -> nn.Module:
    """Load a snapshot's weights (``ema=True``: the EMA weights) into ``model``; weights_only loading."""
    from easyhard._io import load_tensors

    tensors, _ = load_tensors(path)
    key = "ema" if ema else "model"
    if key not in tensors:
        raise ConfigError(f"{path} holds no {key} weights")
    model.load_state_dict(tensors[key])
    return model
