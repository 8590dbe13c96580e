"""Training a diffusion denoiser on a finite dataset, with exact resume (docs/theory/images.md section 1).

One loop serves a single network and an ensemble, a network whose inputs and outputs carry a leading
member axis E (members share no parameters, so each follows the trajectory it would follow alone).
One step (Ho et al. 2020): draw a mini-batch x0 of the in-memory training set(s), indices i ~ U{0..T-1}
and eps ~ N(0, I) per example, form x_i = sqrt(abar_i) x0 + sqrt(1 - abar_i) eps and minimise

    L = sum_e mean_{b, k} (eps_hat_e(x_i, i) - eps)^2          (one term without a member axis)

with Adam/AdamW, a linear learning-rate warm-up, gradient clipping and an optional EMA of the weights.

At each checkpoint step (:func:`checkpoint_grid`, and step 0 if asked) the caller's ``on_checkpoint``
runs (measurements), then the *training state* ``state.pt`` (model, EMA, optimizer, scheduler, generator
state, step, the caller's config and the log) is written atomically, and, if asked, a *snapshot*
``snapshots/step-XXXXXXX.pt`` (model and EMA weights) and ``train_log.json``. ``resume=True`` continues
from the state: a resumed run ends with the weights of an uninterrupted one (on CPU), and a run stopped
inside a measurement repeats that measurement. Every file is read with ``torch.load(weights_only=True)``.
Non-finite losses stop the run with :class:`DivergenceError` (checked at checkpoints only, so there is
no per-step host synchronisation).

All randomness (mini-batches, noise indices, eps) comes from one ``torch.Generator`` seeded by the
config's seed on the training device, so two runs with the same seed see the same indices and noise.
"""

from __future__ import annotations

import contextlib
import copy
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from easyhard._validate import ConfigError
from easyhard.diffusion import DDPMSchedule
from easyhard.train.divergence import check_loss

STATE_FILE = "state.pt"


def checkpoint_grid(first: int, steps: int, count: int) -> list[int]:
    """round(geomspace(first, steps, count)), deduplicated and increasing, ending at ``steps``; [steps] if
    steps <= first."""
    if steps <= first:
        return [steps]
    return np.unique(np.rint(np.geomspace(first, steps, count)).astype(int)).tolist()


def denoising_loss(model: nn.Module, x0: Tensor, schedule: DDPMSchedule, generator: torch.Generator,
                   member_axis: bool = False) -> Tensor:
    """The eps-MSE mean((model(x_i, i) - eps)^2), i ~ U{0..T-1} (stored base) and eps ~ N(0, I) drawn from
    ``generator`` per example: x0 (B, ...) gives a scalar; with ``member_axis``, x0 (E, B, ...) gives the
    per-member means (E,) (i drawn per member and example)."""
    lead = x0.shape[:2] if member_axis else x0.shape[:1]
    i = torch.randint(0, schedule.T, lead, generator=generator, device=x0.device) + schedule.index_base
    eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    shape = lead + (1,) * (x0.ndim - len(lead))
    a, s = (c.to(x0.dtype).reshape(shape) for c in schedule.coefficients(i))
    squared = (model(a * x0 + s * eps, i, schedule) - eps) ** 2
    return squared.mean(tuple(range(1, x0.ndim))) if member_axis else squared.mean()


@dataclass(frozen=True)
class LoopConfig:
    """What the loop runs, built by a trainer from its config (:meth:`DiffusionTrainConfig.loop`,
    :meth:`EnsembleTrainConfig.loop`).

    identity: the trainer config as a dict, written into the state and compared on resume.
    checkpoints: increasing steps ending at ``steps``; a leading 0 checkpoints the initial model.
    optimizer "adam" | "adamw" with ``lr``, ``weight_decay`` and ``warmup`` linear warm-up steps; ``fused``
    selects the fused (CUDA) Adam kernel. grad_clip, ema_decay: None disables them. member_axis: the model
    is an ensemble (x0 (E, B, ...)). snapshots: also write snapshots and train_log.json. On CUDA: ``bf16``
    autocast, ``channels_last`` for image batches, ``compile`` (torch.compile).
    """

    identity: dict
    steps: int
    checkpoints: tuple[int, ...]
    lr: float
    seed: int
    device: str = "cpu"
    optimizer: str = "adam"
    weight_decay: float = 0.0
    fused: bool = False
    warmup: int = 0
    grad_clip: float | None = None
    ema_decay: float | None = None
    member_axis: bool = False
    snapshots: bool = False
    bf16: bool = False
    channels_last: bool = False
    compile: bool = False


@dataclass
class TrainResult:
    """What a training run recorded: checkpoint steps, the mean training loss between them, throughput
    (examples per second, all members together)."""

    checkpoint_steps: list[int]
    train_loss: list[float]
    images_per_s: float
    snapshots: list[str] = field(default_factory=list)


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


def load_snapshot(path: str | Path, model: nn.Module, ema: bool = False) -> nn.Module:
    """Load a snapshot's weights (``ema=True``: the EMA weights) into ``model``; weights_only loading."""
    from easyhard._io import load_tensors

    tensors, _ = load_tensors(path)
    key = "ema" if ema else "model"
    if key not in tensors:
        raise ConfigError(f"{path} holds no {key} weights")
    model.load_state_dict(tensors[key])
    return model


def _make_optimizer(model: nn.Module, loop: LoopConfig) -> torch.optim.Optimizer:
    fused = {"fused": True} if loop.fused else {}
    cls = torch.optim.Adam if loop.optimizer == "adam" else torch.optim.AdamW
    return cls(model.parameters(), lr=loop.lr, weight_decay=loop.weight_decay, **fused)


def _lr_lambda(warmup: int) -> Callable[[int], float]:
    return lambda step: min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0


def _ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema <- decay ema + (1 - decay) model, parameter by parameter (buffers copied)."""
    with torch.no_grad():
        for pe, pm in zip(ema.parameters(), model.parameters()):
            pe.lerp_(pm, 1.0 - decay)
        for be, bm in zip(ema.buffers(), model.buffers()):
            be.copy_(bm)


def train_loop(model: nn.Module, draw: Callable[[torch.Generator], Tensor], schedule: DDPMSchedule,
               loop: LoopConfig, out_dir: str | Path, resume: bool = False,
               on_checkpoint: Callable[[int, nn.Module, nn.Module | None], None] | None = None,
               progress: Callable[[int], None] | None = None) -> TrainResult:
    """Train ``model`` (``model(x_t, i, schedule) -> eps_hat``) on the mini-batches ``draw(generator)`` (x0 on
    ``loop.device``) and write checkpoints to ``out_dir`` (module docstring).

    ``on_checkpoint(step, model, ema)`` runs at every checkpoint step, before the state is saved.
    ``resume=True`` continues from ``out_dir/state.pt`` (ConfigError if it is missing, unreadable or from
    another config); without it an existing state is an error too, so nothing is overwritten.
    """
    from easyhard._io import atomic_write_json, save_tensors

    out = Path(out_dir)
    dev = torch.device(loop.device)
    model = model.to(dev)
    ema = copy.deepcopy(model).requires_grad_(False) if loop.ema_decay is not None else None
    opt = _make_optimizer(model, loop)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(loop.warmup))
    gen = torch.Generator(dev).manual_seed(loop.seed)
    log = {"checkpoint_steps": [], "train_loss": [], "images_per_s": []}
    step = 0
    state_path = out / STATE_FILE
    state = read_state(state_path, loop.identity, resume)
    if state is not None:
        tensors, meta = state
        try:
            model.load_state_dict(tensors["model"])
            if ema is not None:
                ema.load_state_dict(tensors["ema"])
            opt.load_state_dict(tensors["optimizer"])
            sched.load_state_dict(tensors["scheduler"])
            gen.set_state(tensors["generator"])
            step, log = int(meta["step"]), meta["log"]
        except (KeyError, RuntimeError, TypeError, ValueError) as err:  # an older format or a damaged file
            raise ConfigError(f"{state_path} cannot be resumed ({type(err).__name__}: "
                              f"{' '.join(str(err).split())[:120]}); delete it to start over") from None

    def checkpoint(at: int) -> None:
        if on_checkpoint is not None:
            on_checkpoint(at, model, ema)
        weights = {"model": model.state_dict(), **({"ema": ema.state_dict()} if ema is not None else {})}
        if loop.snapshots:
            save_tensors(out / "snapshots" / f"step-{at:07d}.pt", weights, {"step": at})
        saved = {**weights, "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                 "generator": gen.get_state()}
        save_tensors(state_path, saved, {"step": at, "config": loop.identity, "log": log})
        if loop.snapshots:
            atomic_write_json(out / "train_log.json", log)

    if step == 0 and loop.checkpoints[0] == 0:
        checkpoint(0)
    cuda = dev.type == "cuda"
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda and loop.bf16 else contextlib.nullcontext()
    if cuda and loop.channels_last:
        model = model.to(memory_format=torch.channels_last)
    step_fn = torch.compile(model) if cuda and loop.compile else model
    loss_sum = torch.zeros((), device=dev, dtype=torch.float64)
    since, examples, start = 0, 0, time.perf_counter()
    model.train()
    for target in [c for c in loop.checkpoints if c > step]:
        while step < target:
            x0 = draw(gen)
            with autocast:
                per_member = denoising_loss(step_fn, x0, schedule, gen, loop.member_axis)
            loss = per_member.sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if loop.grad_clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), loop.grad_clip)
            opt.step()
            sched.step()
            if ema is not None:
                _ema_update(ema, model, loop.ema_decay)
            loss_sum += loss.detach().double()
            step += 1
            since += 1
            examples += x0.shape[:1 + loop.member_axis].numel()
            if progress is not None:
                progress(1)
        mean_loss = float(loss_sum) / (since * per_member.numel())
        check_loss(mean_loss, step)
        log["checkpoint_steps"].append(step)
        log["train_loss"].append(mean_loss)
        log["images_per_s"].append(examples / max(time.perf_counter() - start, 1e-9))
        checkpoint(step)
        loss_sum.zero_()
        since, examples, start = 0, 0, time.perf_counter()
    snapshots = sorted(str(p) for p in (out / "snapshots").glob("step-*.pt")) if loop.snapshots else []
    rate = float(np.mean(log["images_per_s"])) if log["images_per_s"] else 0.0
    steps = ([0] if loop.checkpoints[0] == 0 else []) + log["checkpoint_steps"]
    return TrainResult(steps, log["train_loss"], rate, snapshots)
