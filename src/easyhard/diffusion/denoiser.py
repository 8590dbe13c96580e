"""One denoiser interface for networks, oracles and a user's own model.

A :class:`Denoiser` is any object with

    prediction: str                                   # "eps" or "x0": what __call__ returns
    __call__(x_t: Tensor, level: NoiseLevel) -> Tensor  # shaped like x_t

for x_t = a x0 + s xi at the noise level ``level``. The samplers (:func:`easyhard.diffusion.sample`) and the
metrics that take a predictor (:mod:`easyhard.metrics.images`, :mod:`easyhard.metrics.generalization`)
accept any Denoiser and read the other space through :func:`predict_eps` / :func:`predict_x0`, which
use the conversions of :mod:`easyhard.diffusion.parametrization`:

    eps_hat = (x_t - a x0_hat) / s,        x0_hat = (x_t - s eps_hat) / a.

Noise level. A :class:`NoiseLevel` carries every currency a denoiser may need, so none is lost:
the coefficients (a, s), the OU time t (a = e^-t, s^2 = 1 - e^-2t) and, for a level at a step of a
DDPM schedule, the step index i with its :class:`~easyhard.diffusion.DDPMSchedule`:

    NoiseLevel.at_index(schedule, i):  a = sqrt(abar_i), s = sqrt(1 - abar_i), t = -ln(abar_i) / 2, index i;
    NoiseLevel.at_ou_time(t):          a = e^-t, s = sqrt(1 - e^-2t), no index.

DDPM-index networks read (index, schedule) (:func:`as_step`), OU-time models read t, oracles read (a, s).
The samplers and metrics build their levels with ``at_index``; a network defined only at the steps of a
schedule raises ConfigError at a level without an index.

Shapes. x_t is (*batch, *data): batch = (B,) for a plain denoiser, (E, B) for an ensemble denoiser
(E independent members on a leading axis, marked by the optional attribute ``ensemble = True``). The
values of a level are Python numbers (one level for the whole batch) or tensors that broadcast,
right-aligned as in NumPy, to the batch shape: (B,) one level per sample (for an ensemble: shared by the
members), (E, 1) one per member, (E, B) one per member and sample.

Satisfying the protocol:

- :class:`~easyhard.models.MLPDenoiser`, :class:`~easyhard.models.UNetDenoiser` and
  :class:`~easyhard.models.EnsembleMLP` directly: ``model(x_t, level)`` (their training form
  ``model(x_t, i, schedule)`` still works);
- a function ``f(x_t (B, d), a, s)``: ``CoefficientDenoiser(f)``, e.g. the Wiener denoiser
  ``CoefficientDenoiser(WienerDenoiser(mu, cov))`` or a Gaussian mixture's exact posterior mean
  ``CoefficientDenoiser(mixture.posterior_mean)``;
- a function ``f(x_t, t)`` of OU time: ``OUTimeDenoiser(f)``, e.g. ``OUTimeDenoiser(MCMBayesDenoiser(model))``
  or a committee with its parameters ``OUTimeDenoiser(partial(committee.denoise, params), ensemble=True)``;
- the empirical-optimal denoiser of a finite set directly: ``EmpiricalDenoiser(train)`` (easyhard.oracles);
- a plain callable ``f(x_t, i) -> eps_hat`` (i an int step index) is still accepted by the samplers and
  metrics (:func:`as_denoiser`).

A user's own eps-predicting ``torch.nn.Module`` called as ``module(x_t, t)`` with t the integer timestep
index of a schedule (as in diffusers), as a LongTensor (B,), is one line away from every sampler and
diagnostic::

    denoiser = EpsModel(my_module, schedule)              # module(x_t, t), t: LongTensor (B,) of step indices
    samples = sample(denoiser, schedule, (1000, d))       # DDIM
    EpsModel(my_module, time="ou")                        # continuous time: t = OU time, float tensor (B,)

(see ``examples/own_denoiser.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from easyhard._validate import ConfigError, check_choice
from easyhard.diffusion.ddpm import DDPMSchedule, Index
from easyhard.diffusion.ou import Coefficient, ou_coefficients
from easyhard.diffusion.parametrization import convert

PREDICTIONS = ("eps", "x0")
TIMES = ("index", "ou")


@dataclass(frozen=True, eq=False)
class NoiseLevel:
    """The noise level of x_t = a x0 + s xi in every currency (module docstring): coefficients (a, s),
    OU time t, and the step index with its schedule when the level is a step of a DDPM schedule.

    Build with :meth:`at_index` or :meth:`at_ou_time`. Values are floats or tensors (per-sample levels,
    float64 for a, s, t; shape rules in the module docstring).
    """

    a: Coefficient
    s: Coefficient
    t: Coefficient
    index: Index | None = None
    schedule: DDPMSchedule | None = None

    @classmethod
    def at_index(cls, schedule: DDPMSchedule, i: Index) -> NoiseLevel:
        """Step i of ``schedule`` (int or LongTensor, stored base): a = sqrt(abar_i), s = sqrt(1 - abar_i),
        t = -ln(abar_i) / 2 (:meth:`DDPMSchedule.coefficients`, :meth:`DDPMSchedule.ou_time`)."""
        a, s = schedule.coefficients(i)
        return cls(a, s, schedule.ou_time(i), i, schedule)

    @classmethod
    def at_ou_time(cls, t: Coefficient) -> NoiseLevel:
        """OU time t > 0: a = e^-t, s = sqrt(1 - e^-2t) (:func:`~easyhard.diffusion.ou_coefficients`); no index."""
        a, s = ou_coefficients(t)
        return cls(a, s, t)


@runtime_checkable
class Denoiser(Protocol):
    """prediction ("eps" or "x0") and ``__call__(x_t, level) -> prediction`` shaped like x_t (module docstring).

    Optional attribute: ``ensemble`` (True for inputs (E, B, ...) with a leading ensemble axis; default False).
    """

    prediction: str

    def __call__(self, x_t: Tensor, level: NoiseLevel) -> Tensor: ...


def as_step(i: Index | NoiseLevel, schedule: DDPMSchedule | None = None) -> tuple[Index, DDPMSchedule]:
    """(index, schedule) of a network call ``model(x_t, level)`` or ``model(x_t, i, schedule)``.

    A level must be a schedule step (:meth:`NoiseLevel.at_index`); a plain index needs its schedule.
    """
    if isinstance(i, NoiseLevel):
        if i.index is None:
            raise ConfigError("level must be a step of a DDPM schedule (NoiseLevel.at_index) for a network "
                              "defined at step indices (got a level without an index)")
        if schedule is not None and schedule != i.schedule:
            raise ConfigError("schedule must be the level's schedule or None when a NoiseLevel is given")
        return i.index, i.schedule
    if schedule is None:
        raise ConfigError("schedule must be given with a step index i (or pass a NoiseLevel)")
    return i, schedule


def _aligned(value: Coefficient, x_t: Tensor, batch_ndim: int) -> Coefficient:
    """A level value broadcast (right-aligned) to the batch shape x_t.shape[:batch_ndim], with singleton
    axes appended for the data axes; floats pass through."""
    if not isinstance(value, Tensor):
        return value
    batch = tuple(x_t.shape[:batch_ndim])
    try:
        ok = torch.broadcast_shapes(value.shape, batch) == batch
    except RuntimeError:
        ok = False
    if not ok or value.ndim > batch_ndim:
        raise ConfigError(f"level values must be floats or tensors broadcastable to the batch shape {batch} "
                          f"(got shape {tuple(value.shape)})")
    return value.reshape(value.shape + (1,) * (x_t.ndim - batch_ndim))


def _predict(denoiser: Denoiser, x_t: Tensor, level: NoiseLevel, space: str) -> Tensor:
    pred = denoiser(x_t, level)
    batch_ndim = 2 if getattr(denoiser, "ensemble", False) else 1
    a, s = _aligned(level.a, x_t, batch_ndim), _aligned(level.s, x_t, batch_ndim)
    return convert(pred, denoiser.prediction, space, x_t, a, s)


def predict_eps(denoiser: Denoiser, x_t: Tensor, level: NoiseLevel) -> Tensor:
    """eps_hat of ``denoiser`` at ``level``: its output, or (x_t - a x0_hat) / s for an x0-predictor."""
    return _predict(denoiser, x_t, level, "eps")


def predict_x0(denoiser: Denoiser, x_t: Tensor, level: NoiseLevel) -> Tensor:
    """x0_hat of ``denoiser`` at ``level``: its output, or (x_t - s eps_hat) / a for an eps-predictor."""
    return _predict(denoiser, x_t, level, "x0")


class _IndexEps:
    """A plain callable ``f(x_t, i) -> eps_hat`` at the step index of the level."""

    prediction = "eps"

    def __init__(self, fn: Callable[[Tensor, Index], Tensor]) -> None:
        self.fn = fn

    def __call__(self, x_t: Tensor, level: NoiseLevel) -> Tensor:
        return self.fn(x_t, as_step(level)[0])


def as_denoiser(denoiser: Denoiser | Callable[[Tensor, Index], Tensor]) -> Denoiser:
    """``denoiser`` itself if it is a :class:`Denoiser`; a plain callable ``f(x_t, i) -> eps_hat`` (i a step
    index of the level's schedule) is wrapped as an eps-predicting Denoiser."""
    if isinstance(denoiser, Denoiser):
        check_choice("denoiser.prediction", denoiser.prediction, PREDICTIONS)
        return denoiser
    if not callable(denoiser):
        raise ConfigError(f"denoiser must be a Denoiser or a callable f(x_t, i) (got {type(denoiser).__name__})")
    return _IndexEps(denoiser)


class CoefficientDenoiser:
    """Denoiser from ``fn(x_t (B, d), a, s) -> prediction``, e.g. ``WienerDenoiser`` or
    ``GaussianMixture.posterior_mean``.

    Inputs (B, ...) are flattened to (B, d) and the output is reshaped back, in x_t's dtype and device.
    """

    ensemble = False

    def __init__(self, fn: Callable[[Tensor, Coefficient, Coefficient], Tensor], prediction: str = "x0") -> None:
        check_choice("prediction", prediction, PREDICTIONS)
        self.fn, self.prediction = fn, prediction

    def __call__(self, x_t: Tensor, level: NoiseLevel) -> Tensor:
        flat = x_t.reshape(x_t.shape[0], -1)
        return self.fn(flat, level.a, level.s).reshape(x_t.shape).to(device=x_t.device, dtype=x_t.dtype)


class OUTimeDenoiser:
    """Denoiser from ``fn(x_t, t) -> prediction`` at the level's OU time t (e.g. ``MCMBayesDenoiser``, or
    ``partial(committee.denoise, params)`` with ``ensemble=True``). x_t is passed unchanged."""

    def __init__(self, fn: Callable[[Tensor, Coefficient], Tensor], prediction: str = "x0",
                 ensemble: bool = False) -> None:
        check_choice("prediction", prediction, PREDICTIONS)
        self.fn, self.prediction, self.ensemble = fn, prediction, bool(ensemble)

    def __call__(self, x_t: Tensor, level: NoiseLevel) -> Tensor:
        return self.fn(x_t, level.t)


class EpsModel:
    """A user's eps-predicting ``module(x_t, t)`` for x_t of shape (B, ...) as a :class:`Denoiser`.

    time="index": t is the integer step index of ``schedule`` (its stored base), a LongTensor (B,) on
    x_t's device, as diffusers' models take it; levels must be steps of ``schedule``.
    time="ou": t is the OU time -ln(abar)/2 (= -ln a), a tensor (B,) in x_t's dtype; ``schedule`` is not
    needed and levels of any schedule or OU time work.
    """

    prediction = "eps"
    ensemble = False

    def __init__(self, module: nn.Module | Callable[[Tensor, Tensor], Tensor], schedule: DDPMSchedule | None = None,
                 time: str = "index") -> None:
        check_choice("time", time, TIMES)
        if time == "index" and schedule is None:
            raise ConfigError("schedule must be given for time='index' (the schedule the module was trained on)")
        self.module, self.schedule, self.time = module, schedule, time

    def __call__(self, x_t: Tensor, level: NoiseLevel) -> Tensor:
        batch = x_t.shape[0]
        if self.time == "index":
            i, _ = as_step(level, self.schedule)
            t = torch.as_tensor(i, dtype=torch.long, device=x_t.device).expand(batch)
        else:
            t = torch.as_tensor(level.t, dtype=x_t.dtype, device=x_t.device).expand(batch)
        return self.module(x_t, t)
