"""Training a diffusion denoiser on a finite dataset, with exact resume (docs/theory/images.md section 1).

One loop serves a single network and an ensemble, a network whose inputs and outputs carry a leading
member axis E (members share no parameters, so each follows the trajectory it would follow alone).
One step (Ho et al. 2020): draw a mini-batch x0 of the in-memory training set(s), indices i ~ U{0..T-1}
and eps ~ N(0, I) per example, form x_i = sqrt(abar_i) x0 + sqrt(1 - abar_i) eps and minimise

    L = sum_e mean_{b, k} (eps_hat_e(x_i, i) - eps)^2          (one term without a member axis)

with Adam/AdamW, a linear learning-rate warm-up, gradient clipping and an optional EMA of the weights.
The per-member loss is a parameter of the loop: :func:`denoising_loss` (the eps-MSE above, the default)
or :func:`sequence_loss`, the token cross-entropy of an x0-logit network on noised one-hot sequences
(docs/theory/generalization.md section 8.5).

At each checkpoint step (:func:`checkpoint_grid`, and step 0 if asked) the caller's ``on_checkpoint``
runs (measurements), then the *training state* ``state.pt`` (model, EMA, optimizer, scheduler, generator
state, step, the caller's config and the log) is written atomically, and, if asked, a *snapshot*
``snapshots/step-XXXXXXX.pt`` (model and EMA weights) and ``train_log.json``. ``resume=True`` continues
from the state: a resumed run ends with the weights of an uninterrupted one (on CPU), and a run stopped
inside a measurement repeats that measurement. Every file is read with ``torch.load(weights_only=True)``.
A state is used only after its checksum and a schema check against the live run (:func:`check_state`:
config, step in [0, steps], every tensor of the live key, dtype and shape and finite, the optimizer and
scheduler at that step); anything else is a :class:`~easyhard._io.CorruptedFile` naming the file and
:data:`RESTART_HINT`, raised before anything is loaded.
Non-finite losses stop the run with :class:`DivergenceError` (checked at checkpoints only, so there is
no per-step host synchronisation).

All randomness (mini-batches, noise indices, eps) comes from one ``torch.Generator`` seeded by the
config's seed on the training device, so two runs with the same seed see the same indices and noise.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from easyhard._io import CorruptedFile, nonfinite_path
from easyhard._validate import ConfigError, check_choice, check_int_at_least, check_int_in
from easyhard.diffusion import DDPMSchedule
from easyhard.train.divergence import check_loss

STATE_FILE = "state.pt"
#: what to do with a saved state that cannot be used (the CLI's --restart reaches runs as RunContext.restart)
RESTART_HINT = "rerun with --restart to discard it and start over"
_LOG_KEYS = ("checkpoint_steps", "train_loss", "images_per_s")
LR_SCHEDULES = ("constant", "sequences")
#: a per-member training loss: loss(model, x0, schedule, generator, member_axis) -> (E,) or a scalar
Loss = Callable[[nn.Module, Tensor, DDPMSchedule, torch.Generator, bool], Tensor]


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


@functools.lru_cache(maxsize=16)
def _alpha_bar_table(schedule: DDPMSchedule, device: torch.device) -> Tensor:
    """abar_k, k = 0..T-1 (0-based storage), float64 on ``device``; cached, so a training step makes no
    host-to-device copy (and no synchronisation) to look it up."""
    return schedule.alphas_bar.to(device)


def sequence_loss(model: nn.Module, x0: Tensor, schedule: DDPMSchedule, generator: torch.Generator,
                  member_axis: bool = True) -> Tensor:
    """Token cross-entropy of an x0-logit network (docs/theory/generalization.md section 8.5; noising of
    docs/theory/grammar.md section 1.3): i ~ U over the schedule's indices (stored base) and eps ~ N(0, I) of
    shape x0.shape + (q,), drawn from ``generator`` in that order, x_i = sqrt(abar_i) e(x0) + sqrt(1 - abar_i) eps
    with e the one-hot encoding, and

        loss = mean_{b, l} -log softmax(model.logits(x_i, i))[x0_{b, l}].

    x0: int64 tokens (E, B, L) with ``member_axis`` (one index per member and sequence; returns the per-member
    means (E,)) or (B, L) without (returns a scalar). ``model`` has ``logits(x_t, i)`` and ``config.q``
    (:class:`~easyhard.models.transformer.EnsembleTransformer`); x_i has the dtype of its parameters."""
    q = model.config.q
    dtype = next(model.parameters()).dtype
    lead = x0.shape[:2] if member_axis else x0.shape[:1]
    k = torch.randint(0, schedule.T, lead, generator=generator, device=x0.device)
    eps = torch.randn((*x0.shape, q), generator=generator, device=x0.device, dtype=dtype)
    abar = _alpha_bar_table(schedule, x0.device)[k].reshape(lead + (1,) * (x0.ndim + 1 - len(lead)))
    x_t = abar.sqrt().to(dtype) * F.one_hot(x0, q).to(dtype) + (1 - abar).sqrt().to(dtype) * eps
    logits = model.logits(x_t, k + schedule.index_base)
    nll = F.cross_entropy(logits.reshape(-1, q), x0.reshape(-1), reduction="none").view(x0.shape)
    return nll.mean(tuple(range(1, x0.ndim))) if member_axis else nll.mean()


@dataclass(frozen=True)
class LoopConfig:
    """What the loop runs, built by a trainer from its config (:meth:`DiffusionTrainConfig.loop`,
    :meth:`EnsembleTrainConfig.loop`).

    identity: the trainer config as a dict, written into the state and compared on resume.
    checkpoints: increasing steps ending at ``steps``; a leading 0 checkpoints the initial model.
    optimizer "adam" | "adamw" with ``lr``, ``weight_decay`` and ``warmup`` linear warm-up steps; ``fused``
    selects the fused (CUDA) Adam kernel. lr_schedule: "constant" after the warm-up, or "sequences" (the
    learning-rate factor of docs/theory/generalization.md section 8.5, with ``lr_warm`` in [0, steps - 1]
    steps of linear decay from 1 to 0.5; :meth:`lr_factor`). grad_clip, ema_decay: None disables them;
    ema_warmup: the decay after optimizer step s (1-based) is min(ema_decay, (1 + s) / (10 + s)), so the average
    forgets the initial weights within tens of steps (:meth:`ema_factor`).
    member_axis: the model is an ensemble (x0 (E, B, ...)). snapshots: also write snapshots and
    train_log.json. On CUDA: ``bf16`` autocast, ``channels_last`` for image batches, ``compile`` (torch.compile).
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
    lr_schedule: str = "constant"
    lr_warm: int = 0
    ema_warmup: bool = False

    def ema_factor(self, step: int) -> float:
        """The EMA decay applied after optimizer step ``step`` (1-based): ``ema_decay``, or with ``ema_warmup``
        min(ema_decay, (1 + step) / (10 + step))."""
        if self.ema_decay is None:
            raise ConfigError("ema_factor needs ema_decay")
        return min(self.ema_decay, (1 + step) / (10 + step)) if self.ema_warmup else self.ema_decay

    def __post_init__(self) -> None:
        check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        if self.lr_schedule == "sequences":
            object.__setattr__(self, "lr_warm", check_int_in("lr_warm", self.lr_warm, 0, self.steps - 1))
        else:
            object.__setattr__(self, "lr_warm", check_int_at_least("lr_warm", self.lr_warm, 0))

    def lr_factor(self, step: int) -> float:
        """The learning rate of optimizer step ``step`` (0-based) is ``lr * lr_factor(step)``: the warm-up
        min(1, (step + 1) / warmup) (1 without warm-up), for lr_schedule "sequences" times

            1 - 0.5 step / lr_warm                                              for step < lr_warm,
            0.1 + 0.2 (1 + cos(pi (step - lr_warm) / (steps - lr_warm)))        for step >= lr_warm

        (1 -> 0.5 linearly, then a cosine from 0.5 to 0.1 at ``steps``; docs/theory/generalization.md section 8.5)."""
        warm = min(1.0, (step + 1) / self.warmup) if self.warmup > 0 else 1.0
        if self.lr_schedule == "constant":
            return warm
        if step < self.lr_warm:
            return warm * (1 - 0.5 * step / self.lr_warm)
        return warm * (0.1 + 0.2 * (1 + math.cos(math.pi * (step - self.lr_warm) / (self.steps - self.lr_warm))))


@dataclass
class TrainResult:
    """What a training run recorded: checkpoint steps, the mean training loss between them, throughput
    (examples per second, all members together)."""

    checkpoint_steps: list[int]
    train_loss: list[float]
    images_per_s: float
    snapshots: list[str] = field(default_factory=list)


def read_state(state_path: Path, config: dict, resume: bool, steps: int | None = None) -> tuple[dict, dict] | None:
    """The saved training state (tensors, meta) to resume from, or None for a fresh run.

    ``resume=True`` needs ``state_path`` written with the same ``config``: a missing file is a ConfigError,
    and a file that is unreadable, fails its checksum, belongs to another config or whose meta is not a step
    in [0, ``steps``] with its log (:func:`check_meta`) raises :class:`~easyhard._io.CorruptedFile`, one line
    naming the file and ending with :data:`RESTART_HINT`. Without ``resume`` an existing state is an error, so
    nothing is overwritten. The tensors are checked against the live model by :func:`check_tensors`.
    """
    from easyhard._io import load_tensors

    if not resume:
        if state_path.exists():
            raise ConfigError(f"{state_path} exists: pass resume to continue that run, or use a new folder")
        return None
    if not state_path.exists():
        raise ConfigError(f"nothing to resume: {state_path} does not exist")
    tensors, meta = load_tensors(state_path, RESTART_HINT)
    check_meta(state_path, meta, config, steps)
    return tensors, meta


def _unusable(path: Path, reason: str) -> CorruptedFile:
    return CorruptedFile(path, reason, RESTART_HINT)


def check_meta(path: Path, meta: dict, config: dict, steps: int | None) -> int:
    """The step of a state's ``meta``, verified: written with ``config``, an int in [0, ``steps``] (any
    step >= 0 when ``steps`` is None), and a log of finite losses and rates whose checkpoints end at that step.
    Raises :class:`~easyhard._io.CorruptedFile` naming ``path`` otherwise."""
    if meta.get("config") != json.loads(json.dumps(config)):
        raise CorruptedFile(path, "written with another training config", f"use a new --out, or {RESTART_HINT}")
    step = meta.get("step")
    if type(step) is not int or step < 0 or (steps is not None and step > steps):
        raise _unusable(path, f"step {step!r} is not an integer in [0, {'inf' if steps is None else steps}]")
    log = meta.get("log")
    if not isinstance(log, dict) or set(log) != set(_LOG_KEYS) or not all(isinstance(log[k], list) for k in _LOG_KEYS):
        raise _unusable(path, f"its log is not the lists {', '.join(_LOG_KEYS)}")
    at = log["checkpoint_steps"]
    if (any(len(log[k]) != len(at) for k in _LOG_KEYS) or any(type(s) is not int for s in at)
            or at != sorted(set(at)) or (at[-1] if at else 0) != step or (at and at[0] < 1)):
        raise _unusable(path, f"its log's checkpoint steps do not end at step {step}")
    if any(type(x) not in (int, float) or not math.isfinite(x) for x in log["train_loss"] + log["images_per_s"]):
        raise _unusable(path, "its log holds a non-finite or non-numeric loss or rate")
    return step


def _same_value(a: object, b: object) -> bool:
    """Equality of plain saved values, tuples and lists alike (a saved tuple may come back as either)."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same_value(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def _check_like(path: Path, name: str, saved: object, live: object) -> None:
    """``saved`` has the structure of ``live``: the same dict keys and list lengths, and tensors of the same
    dtype and shape, floating ones finite. Other leaves are not compared (the caller checks them)."""
    if isinstance(live, Tensor):
        if not isinstance(saved, Tensor):
            raise _unusable(path, f"{name} is a {type(saved).__name__}, not a tensor")
        if saved.dtype != live.dtype or saved.shape != live.shape:
            raise _unusable(path, f"{name} is {saved.dtype} {tuple(saved.shape)}, expected {live.dtype} "
                                  f"{tuple(live.shape)}")
        if saved.is_floating_point() and not bool(torch.isfinite(saved).all()):
            raise _unusable(path, f"{name} holds non-finite values")
    elif isinstance(live, dict):
        if not isinstance(saved, dict):
            raise _unusable(path, f"{name} is a {type(saved).__name__}, not a dict")
        for which, keys in (("lacks", set(live) - set(saved)), ("has unexpected", set(saved) - set(live))):
            if keys:
                raise _unusable(path, f"{name or 'the state'} {which} {', '.join(sorted(map(repr, keys)))}")
        for key in live:
            _check_like(path, f"{name}.{key}" if name else str(key), saved[key], live[key])
    elif isinstance(live, (list, tuple)):
        if not isinstance(saved, (list, tuple)) or len(saved) != len(live):
            raise _unusable(path, f"{name} is not a list of {len(live)}")
        for i, (a, b) in enumerate(zip(saved, live)):
            _check_like(path, f"{name}[{i}]", a, b)


def _check_optimizer(path: Path, saved: dict, live: dict, params: list[Tensor], step: int,
                     lr_factor: Callable[[int], float]) -> None:
    """Adam/AdamW state: the live param groups (hyperparameters equal, the learning rate ``lr_factor``'s at
    ``step``), and per parameter an update count in [1, ``step``] with finite moments of the parameter's dtype
    and shape, the second moments >= 0."""
    if not isinstance(saved, dict) or set(saved) != {"state", "param_groups"}:
        raise _unusable(path, "optimizer is not an optimizer state")
    if not isinstance(saved["param_groups"], list) or len(saved["param_groups"]) != len(live["param_groups"]):
        raise _unusable(path, f"optimizer.param_groups is not a list of {len(live['param_groups'])}")
    for g, (group, ref) in enumerate(zip(saved["param_groups"], live["param_groups"])):
        if not isinstance(group, dict) or set(group) != set(ref):
            raise _unusable(path, f"optimizer.param_groups[{g}] holds other settings")
        if any(not _same_value(group[k], ref[k]) for k in ref if k != "lr"):
            raise _unusable(path, f"optimizer.param_groups[{g}] holds other settings")
        if not _same_value(group["lr"], ref["initial_lr"] * lr_factor(step)):
            raise _unusable(path, f"optimizer.param_groups[{g}].lr is not the learning rate of step {step}")
    state = saved["state"]
    if not isinstance(state, dict) or not set(state) <= set(range(len(params))):
        raise _unusable(path, "optimizer.state is not per-parameter state")
    for index, entry in state.items():
        amsgrad = any(index in group["params"] and group.get("amsgrad") for group in live["param_groups"])
        p = params[index].detach()
        moments = ("exp_avg", "exp_avg_sq", *(("max_exp_avg_sq",) if amsgrad else ()))
        _check_like(path, f"optimizer.state[{index}]", entry,
                    {"step": torch.zeros((), dtype=torch.float32), **{k: p for k in moments}})
        taken = float(entry["step"])  # steps this parameter was updated: every step unless it had no gradient
        if taken != int(taken) or not 1 <= taken <= float(torch.tensor(step, dtype=torch.float32)):
            raise _unusable(path, f"optimizer.state[{index}].step is {taken:g}, not an integer in [1, {step}]")
        if any(bool((entry[k] < 0).any()) for k in moments[1:]):
            raise _unusable(path, f"optimizer.state[{index}] holds a negative second moment")


def check_tensors(path: Path, tensors: dict, step: int, live: dict, params: list[Tensor],
                  lr_factor: Callable[[int], float]) -> None:
    """``tensors`` of a saved state at ``step`` can replace the ``live`` state ({"model", ["ema",] "optimizer",
    "scheduler", "generator"}, ``params`` the optimizer's parameters in order, ``lr_factor`` its learning-rate
    factor per step, :meth:`LoopConfig.lr_factor`): the same
    keys, every tensor of the live dtype and shape and finite (:func:`_check_like`), the optimizer's state that of
    ``step`` Adam steps and the scheduler at ``step``. Raises :class:`~easyhard._io.CorruptedFile` naming
    ``path`` otherwise; nothing is loaded here."""
    _check_like(path, "", {k: None for k in tensors}, {k: None for k in live})
    for key in ("model", "ema", "generator"):
        if key in live:
            _check_like(path, key, tensors[key], live[key])
    _check_optimizer(path, tensors["optimizer"], live["optimizer"], params, step, lr_factor)
    scheduler, ref = tensors["scheduler"], live["scheduler"]
    if not isinstance(scheduler, dict) or set(scheduler) != set(ref) or not _same_value(scheduler["last_epoch"], step):
        raise _unusable(path, f"scheduler is not a warm-up schedule at step {step}")
    if not _same_value(scheduler["base_lrs"], ref["base_lrs"]) or nonfinite_path(scheduler) is not None:
        raise _unusable(path, "scheduler holds other or non-finite learning rates")


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


def _lr_lambda(loop: LoopConfig) -> Callable[[int], float]:
    """:meth:`LoopConfig.lr_factor` as a plain function (LambdaLR saves no state for those)."""
    return lambda step: loop.lr_factor(step)


def _ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema <- decay ema + (1 - decay) model, parameter by parameter (buffers copied)."""
    with torch.no_grad():
        for pe, pm in zip(ema.parameters(), model.parameters()):
            pe.lerp_(pm, 1.0 - decay)
        for be, bm in zip(ema.buffers(), model.buffers()):
            be.copy_(bm)


def _fresh_state(model: nn.Module, loop: LoopConfig) -> tuple[nn.Module | None, torch.optim.Optimizer,
                                                                torch.optim.lr_scheduler.LRScheduler, torch.Generator]:
    """(EMA copy or None, optimizer, warm-up scheduler, generator) of a run of ``model`` that starts now."""
    ema = copy.deepcopy(model).requires_grad_(False) if loop.ema_decay is not None else None
    opt = _make_optimizer(model, loop)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(loop))
    return ema, opt, sched, torch.Generator(torch.device(loop.device)).manual_seed(loop.seed)


def _state_dicts(model: nn.Module, ema: nn.Module | None, opt: torch.optim.Optimizer,
                 sched: torch.optim.lr_scheduler.LRScheduler, gen: torch.Generator) -> dict:
    """What ``state.pt`` holds: {"model", ["ema",] "optimizer", "scheduler", "generator"}."""
    return {"model": model.state_dict(), **({"ema": ema.state_dict()} if ema is not None else {}),
            "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "generator": gen.get_state()}


def check_state(state_path: Path, model: nn.Module, loop: LoopConfig) -> int:
    """The step of the training state ``state_path`` after the checks of :func:`train_loop` resuming ``model``
    (freshly built, not trained) under ``loop``: :func:`read_state` and :func:`check_tensors`. ConfigError if
    it does not exist, :class:`~easyhard._io.CorruptedFile` if it cannot be used; ``model`` is not changed."""
    tensors, meta = read_state(Path(state_path), loop.identity, True, loop.steps)
    ema, opt, sched, gen = _fresh_state(model, loop)
    check_tensors(Path(state_path), tensors, meta["step"], _state_dicts(model, ema, opt, sched, gen),
                  list(model.parameters()), loop.lr_factor)
    return meta["step"]


def train_loop(model: nn.Module, draw: Callable[[torch.Generator, int], Tensor], schedule: DDPMSchedule,
               loop: LoopConfig, out_dir: str | Path, resume: bool = False,
               on_checkpoint: Callable[[int, nn.Module, nn.Module | None], None] | None = None,
               progress: Callable[[int], None] | None = None, loss: Loss = denoising_loss) -> TrainResult:
    """Train ``model`` on the mini-batches ``draw(generator, step)`` (x0 on ``loop.device``; ``step`` counts from 0)
    by minimising the sum over
    members of ``loss(model, x0, schedule, generator, loop.member_axis)`` (per-member losses (E,) or a scalar;
    default :func:`denoising_loss`, for ``model(x_t, i, schedule) -> eps_hat``; :func:`sequence_loss` for
    token sequences) and write checkpoints to ``out_dir`` (module docstring).

    ``on_checkpoint(step, model, ema)`` runs at every checkpoint step, before the state is saved.
    ``resume=True`` continues from ``out_dir/state.pt``: ConfigError if it is missing, CorruptedFile (before
    anything is loaded) if it fails the checks of :func:`check_state`; without it an existing state is an
    error too, so nothing is overwritten.
    """
    from easyhard._io import atomic_write_json, save_tensors

    out = Path(out_dir)
    model = model.to(torch.device(loop.device))
    ema, opt, sched, gen = _fresh_state(model, loop)
    log = {"checkpoint_steps": [], "train_loss": [], "images_per_s": []}
    step = 0
    state_path = out / STATE_FILE
    state = read_state(state_path, loop.identity, resume, loop.steps)
    if state is not None:
        tensors, meta = state
        check_tensors(state_path, tensors, meta["step"], _state_dicts(model, ema, opt, sched, gen),
                      list(model.parameters()), loop.lr_factor)
        try:
            model.load_state_dict(tensors["model"])
            if ema is not None:
                ema.load_state_dict(tensors["ema"])
            opt.load_state_dict(tensors["optimizer"])
            sched.load_state_dict(tensors["scheduler"])
            gen.set_state(tensors["generator"])
        except (KeyError, RuntimeError, TypeError, ValueError) as err:  # what the checks above cannot see
            raise _unusable(state_path, f"{type(err).__name__}: {' '.join(str(err).split())[:120]}") from None
        step, log = meta["step"], meta["log"]

    def checkpoint(at: int) -> None:
        if on_checkpoint is not None:
            on_checkpoint(at, model, ema)
        saved = _state_dicts(model, ema, opt, sched, gen)
        if loop.snapshots:
            weights = {k: saved[k] for k in ("model", "ema") if k in saved}
            save_tensors(out / "snapshots" / f"step-{at:07d}.pt", weights, {"step": at})
        save_tensors(state_path, saved, {"step": at, "config": loop.identity, "log": log})
        if loop.snapshots:
            atomic_write_json(out / "train_log.json", log)

    if step == 0 and loop.checkpoints[0] == 0:
        checkpoint(0)
    dev = torch.device(loop.device)
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
            x0 = draw(gen, step)
            with autocast:
                per_member = loss(step_fn, x0, schedule, gen, loop.member_axis)
            total = per_member.sum()
            opt.zero_grad(set_to_none=True)
            total.backward()
            if loop.grad_clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), loop.grad_clip)
            opt.step()
            sched.step()
            if ema is not None:
                _ema_update(ema, model, loop.ema_factor(step + 1))
            loss_sum += total.detach().double()
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
