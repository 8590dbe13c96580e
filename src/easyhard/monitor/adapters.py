"""One line from a user's model to the :class:`~easyhard.diffusion.denoiser.Denoiser` interface.

Every adapter returns an :class:`AdaptedDenoiser`: a Denoiser (``prediction``, ``__call__(x_t, level)``) with a
``schedule`` attribute, the :class:`~easyhard.diffusion.DDPMSchedule` on which the monitor builds and samples its
levels. A call takes x_t of any shape (B, ...) (images (B, C, H, W) or vectors (B, d)) and

- runs under ``torch.no_grad()`` (a monitor never builds a graph in the user's training loop);
- puts the model, when it is an nn.Module, in eval mode for the call only (dropout off) and then restores the
  train/eval flag of every submodule exactly as the caller left it (a plain function is called as it is);
- feeds the model x_t cast to the dtype and device of its first floating-point parameter or buffer (the model's
  own; x_t unchanged for a plain function) and returns the output in x_t's dtype and device.

Adapters and the network call each makes (x_t = a x0 + s eps at the level; a, s, t of :class:`NoiseLevel`):

    diffusers(unet, scheduler)      unet(x_t, t).sample, t = step index (B,) long; epsilon -> eps, sample -> x0,
                                    v_prediction -> eps = a v + s x_t (since v = a eps - s x0, a^2 + s^2 = 1)
    edm(D)                          x0_hat = D(x_t / a, sigma = s / a)             (VE form x = x0 + sigma n)
    edm_raw(F, sigma_data)          edm(D) with D(x, sigma) = c_skip x + c_out F(c_in x, c_noise)
    callable_eps(fn, schedule)      fn(x_t, t) -> eps, t = step index (B,) long   (:class:`EpsModel`)
    easyhard_model(model, schedule) model(x_t, level) (easyhard's networks already are Denoisers)
    member(ensemble, e, schedule)   row e of ensemble(x_t broadcast to (E, B, ...), level)

Index-based adapters (all but ``edm``/``edm_raw``) accept only levels at the steps of their own schedule
(``NoiseLevel.at_index(adapter.schedule, i)``); a level of another schedule raises ConfigError.
:func:`check_output` calls a denoiser once to catch a wrong output shape or non-finite output before a run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from itertools import chain
from typing import Any

import torch
from torch import Tensor, nn

from easyhard._validate import ConfigError, check_choice, check_int_at_least, check_int_in, check_positive
from easyhard.diffusion.ddpm import DDPMSchedule
from easyhard.diffusion.denoiser import PREDICTIONS, Denoiser, EpsModel, NoiseLevel, as_step
from easyhard.diffusion.ou import per_sample

#: diffusers' ``beta_schedule`` names and the DDPMSchedule kind each maps to
BETA_SCHEDULES = {"linear": "linear", "squaredcos_cap_v2": "cosine"}
#: diffusers' ``prediction_type`` names and what the adapter returns for each
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
#: largest relative difference accepted between DDPMSchedule.alphas_bar (float64) and a diffusers scheduler's
#: alphas_cumprod (float32): float32 rounding alone reaches 1.3e-5 (the cosine schedule's clipped last beta
#: 0.999 is stored as 0.99900001), and any other schedule differs by orders of magnitude more
ALPHAS_RTOL = 1e-4
#: values of alphas_cumprod below this are float32 underflow (long linear schedules), not a mismatch
_ALPHAS_ATOL = 1e-30


class AdaptedDenoiser:
    """A Denoiser around a model call ``call(x, level) -> prediction`` (module docstring for the call rules).

    prediction: "eps" or "x0"; schedule: the DDPMSchedule of the levels; module: the nn.Module whose mode, dtype
    and device the call respects (None for a plain function); ensemble: True for inputs (E, B, ...).
    """

    def __init__(self, call: Callable[[Tensor, NoiseLevel], Tensor], prediction: str, schedule: DDPMSchedule,
                 module: Any = None, ensemble: bool = False) -> None:
        check_choice("prediction", prediction, PREDICTIONS)
        if not isinstance(schedule, DDPMSchedule):
            raise ConfigError(f"schedule must be a DDPMSchedule (got {type(schedule).__name__})")
        self.call, self.prediction, self.schedule = call, prediction, schedule
        self.module, self.ensemble = module, bool(ensemble)

    def __call__(self, x_t: Tensor, level: NoiseLevel) -> Tensor:
        """The model's prediction at ``level``, shaped like x_t, in x_t's dtype and device."""
        with torch.no_grad(), _evaluating(self.module):
            out = self.call(_as_model_input(x_t, self.module), level)
        if not isinstance(out, Tensor):
            raise ConfigError(f"the model must return a tensor shaped like x_t (got {type(out).__name__})")
        return out.to(device=x_t.device, dtype=x_t.dtype)


@contextmanager
def _evaluating(module: Any) -> Iterator[None]:
    """Eval mode inside the block; afterwards every submodule's ``training`` flag is what it was before."""
    if not isinstance(module, nn.Module):
        yield
        return
    flags = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


def _as_model_input(x_t: Tensor, module: Any) -> Tensor:
    """x_t in the dtype and device of the module's first floating-point parameter or buffer (x_t itself if none)."""
    if isinstance(module, nn.Module):
        for tensor in chain(module.parameters(), module.buffers()):
            if tensor.is_floating_point():
                return x_t.to(device=tensor.device, dtype=tensor.dtype)
    return x_t


def _per_sample_sigma(level: NoiseLevel, x: Tensor) -> Tensor:
    """sigma = s / a of the level as a tensor (B,) in x's dtype and device."""
    sigma = torch.as_tensor(level.s, dtype=torch.float64) / torch.as_tensor(level.a, dtype=torch.float64)
    return sigma.to(device=x.device).expand(x.shape[0]).to(x.dtype).contiguous()


# ----------------------------------------------------------------------------------------------------- diffusers
def schedule_from_diffusers(scheduler: Any) -> DDPMSchedule:
    """The DDPMSchedule (index base 0, as diffusers' timesteps 0..T-1) of a diffusers scheduler's ``config``.

    beta_schedule "linear" -> DDPMSchedule("linear", T, beta_start, beta_end); "squaredcos_cap_v2" ->
    DDPMSchedule("cosine", T) (Nichol-Dhariwal, offset 0.008, max beta 0.999); T = num_train_timesteps. Missing
    keys take diffusers' defaults (1000, 1e-4, 0.02, "linear"). Verified: when the scheduler has
    ``alphas_cumprod``, |abar_k - alphas_cumprod_k| <= ALPHAS_RTOL abar_k for every k (float32 tolerance), else
    ConfigError. Custom ``trained_betas`` and other beta schedules raise ConfigError.
    """
    config = getattr(scheduler, "config", None)
    if not isinstance(config, Mapping):
        raise ConfigError(f"scheduler must have a .config mapping like diffusers' schedulers "
                          f"(got {type(scheduler).__name__})")
    if config.get("trained_betas") is not None:
        raise ConfigError(f"scheduler trained_betas must be None: custom betas are not supported (beta_schedule "
                          f"must be one of {', '.join(BETA_SCHEDULES)})")
    name = check_choice("scheduler beta_schedule", config.get("beta_schedule", "linear"), tuple(BETA_SCHEDULES))
    T = config.get("num_train_timesteps", 1000)
    if BETA_SCHEDULES[name] == "linear":
        schedule = DDPMSchedule("linear", T, config.get("beta_start", 1e-4), config.get("beta_end", 0.02))
    else:
        schedule = DDPMSchedule("cosine", T)
    alphas_cumprod = getattr(scheduler, "alphas_cumprod", None)
    if alphas_cumprod is not None:
        _verify_alphas(schedule, torch.as_tensor(alphas_cumprod, dtype=torch.float64).cpu(), name)
    return schedule


def _verify_alphas(schedule: DDPMSchedule, alphas_cumprod: Tensor, name: str) -> None:
    """ConfigError unless alphas_cumprod (T,) equals schedule.alphas_bar to ALPHAS_RTOL relative."""
    ours = schedule.alphas_bar
    if alphas_cumprod.shape != ours.shape:
        raise ConfigError(f"scheduler.alphas_cumprod must have num_train_timesteps = {schedule.T} entries "
                          f"(got shape {tuple(alphas_cumprod.shape)})")
    excess = (ours - alphas_cumprod).abs() - (ALPHAS_RTOL * ours + _ALPHAS_ATOL)
    if bool((excess > 0).any()):
        k = int(excess.argmax())
        relative = float((ours[k] - alphas_cumprod[k]).abs() / ours[k])
        raise ConfigError(f"scheduler.alphas_cumprod differs from the {name} schedule of its config (relative "
                          f"difference {relative:.3g} at step {k}, tolerance {ALPHAS_RTOL:g}); modified betas "
                          f"(e.g. rescale_betas_zero_snr) are not supported")


def _unet_sample(out: Any) -> Tensor:
    """The tensor of a diffusers model output (its ``.sample``) or the tensor itself."""
    return out.sample if hasattr(out, "sample") else out


def diffusers(unet: Any, scheduler: Any) -> AdaptedDenoiser:
    """An unconditional diffusers UNet2DModel, called ``unet(x_t, t).sample`` with t the LongTensor (B,) of step
    indices 0..T-1, trained with ``scheduler`` (DDPMScheduler, DDIMScheduler or any object with such a ``.config``).

    Schedule: :func:`schedule_from_diffusers`. prediction_type "epsilon" -> eps_hat = output; "sample" ->
    x0_hat = output; "v_prediction" -> eps_hat = a v + s x_t, which is eps for v = a eps - s x0 and
    x_t = a x0 + s eps because a^2 + s^2 = 1. ``unet`` may also return a plain tensor.
    """
    schedule = schedule_from_diffusers(scheduler)
    prediction_type = check_choice("prediction_type", scheduler.config.get("prediction_type", "epsilon"),
                                   PREDICTION_TYPES)
    network = EpsModel(lambda x, t: _unet_sample(unet(x, t)), schedule)  # the index call unet(x_t, t_long)

    def call(x: Tensor, level: NoiseLevel) -> Tensor:
        out = network(x, level)
        if prediction_type == "v_prediction":
            return per_sample(level.a, out) * out + per_sample(level.s, out) * x
        return out

    return AdaptedDenoiser(call, "x0" if prediction_type == "sample" else "eps", schedule, unet)


# ----------------------------------------------------------------------------------------------------------- EDM
def edm(denoise_fn: Callable[[Tensor, Tensor], Tensor], schedule: DDPMSchedule | None = None) -> AdaptedDenoiser:
    """An EDM denoiser D(x, sigma) -> x0_hat of the variance-exploding form x = x0 + sigma n (Karras et al. 2022).

    A VP level x_t = a x0 + s eps is x_t / a = x0 + (s / a) eps, so x0_hat = D(x_t / a, sigma = s / a), with sigma
    a tensor (B,) in the dtype of D's input (x_t's, or D's parameters' for an nn.Module). Any level works (no step
    index needed); ``schedule`` (default DDPMSchedule(), linear with T = 1000) is where the monitor places its
    levels.
    """
    schedule = DDPMSchedule() if schedule is None else schedule

    def call(x: Tensor, level: NoiseLevel) -> Tensor:
        return denoise_fn(x / per_sample(level.a, x), _per_sample_sigma(level, x))

    return AdaptedDenoiser(call, "x0", schedule, denoise_fn)


class _EDMPreconditioned(nn.Module):
    """D(x, sigma) = c_skip x + c_out F(c_in x, c_noise) of a raw network F (Karras et al. 2022, table 1):

        c_skip = sd^2 / (sigma^2 + sd^2),   c_out = sigma sd / sqrt(sigma^2 + sd^2),
        c_in = 1 / sqrt(sigma^2 + sd^2),    c_noise = ln(sigma) / 4,        sd = sigma_data.

    x: (B, ...), sigma: (B,); F is registered as a submodule when it is an nn.Module.
    """

    def __init__(self, network: Callable[[Tensor, Tensor], Tensor], sigma_data: float) -> None:
        super().__init__()
        self.network, self.sigma_data = network, check_positive("sigma_data", sigma_data)

    def forward(self, x: Tensor, sigma: Tensor) -> Tensor:
        sd = self.sigma_data
        norm2 = sigma**2 + sd**2  # (B,)
        shape = (-1,) + (1,) * (x.ndim - 1)
        c_skip = (sd**2 / norm2).reshape(shape)
        c_out = (sigma * sd / torch.sqrt(norm2)).reshape(shape)
        c_in = torch.rsqrt(norm2).reshape(shape)
        return c_skip * x + c_out * self.network(c_in * x, torch.log(sigma) / 4)


def edm_raw(network: Callable[[Tensor, Tensor], Tensor], sigma_data: float = 0.5,
            schedule: DDPMSchedule | None = None) -> AdaptedDenoiser:
    """A raw EDM network F(c_in x, c_noise) with EDM's preconditioning: :func:`edm` of
    D(x, sigma) = c_skip x + c_out F(c_in x, c_noise), c_skip = sd^2/(sigma^2+sd^2),
    c_out = sigma sd/sqrt(sigma^2+sd^2), c_in = 1/sqrt(sigma^2+sd^2), c_noise = ln(sigma)/4, sd = sigma_data."""
    return edm(_EDMPreconditioned(network, sigma_data), schedule)


# ------------------------------------------------------------------------------------------- plain and easyhard
def callable_eps(fn: Callable[[Tensor, Tensor], Tensor], schedule: DDPMSchedule) -> AdaptedDenoiser:
    """A callable fn(x_t, t) -> eps_hat with t the LongTensor (B,) of step indices of ``schedule`` (in its index
    base): :class:`~easyhard.diffusion.denoiser.EpsModel` with the adapter's call rules."""
    if not isinstance(schedule, DDPMSchedule):
        raise ConfigError(f"schedule must be a DDPMSchedule (got {type(schedule).__name__})")
    return AdaptedDenoiser(EpsModel(fn, schedule), "eps", schedule, fn)


def _check_denoiser(name: str, model: Any) -> None:
    if not isinstance(model, Denoiser):
        raise ConfigError(f"{name} must be a Denoiser: prediction ('eps' or 'x0') and model(x_t, level) "
                          f"(got {type(model).__name__})")
    check_choice(f"{name}.prediction", model.prediction, PREDICTIONS)


def easyhard_model(model: Denoiser, schedule: DDPMSchedule) -> AdaptedDenoiser:
    """easyhard's own networks (MLPDenoiser, UNetDenoiser, EnsembleMLP, ...): model(x_t, level) with the schedule
    attached; levels must be steps of ``schedule``. An ensemble model keeps ``ensemble = True`` (inputs
    (E, B, ...)); :func:`member` gives one member with inputs (B, ...)."""
    _check_denoiser("model", model)

    def call(x: Tensor, level: NoiseLevel) -> Tensor:
        as_step(level, schedule)  # ConfigError unless the level is a step of this schedule
        return model(x, level)

    return AdaptedDenoiser(call, model.prediction, schedule, model, getattr(model, "ensemble", False))


def member(ensemble_denoiser: Denoiser, e: int, schedule: DDPMSchedule) -> AdaptedDenoiser:
    """Member e of an ensemble Denoiser (``ensemble = True``, inputs (E, B, ...), E = ``config.members``):
    x_t (B, ...) -> ensemble(x_t broadcast to (E, B, ...), level)[e].

    The broadcast is a view (no copy of x_t), but every call evaluates all E members: E times the cost of one
    member, in exchange for exactness with any stacked-weights ensemble (EnsembleMLP: x_t (B, d)).
    """
    _check_denoiser("ensemble_denoiser", ensemble_denoiser)
    if not getattr(ensemble_denoiser, "ensemble", False):
        raise ConfigError("ensemble_denoiser must be an ensemble Denoiser (ensemble = True, inputs (E, B, ...)); "
                          "use easyhard_model for a single model")
    members = getattr(getattr(ensemble_denoiser, "config", None), "members", None)
    if members is None:
        raise ConfigError("ensemble_denoiser must have config.members (the ensemble size E)")
    e = check_int_in("e", e, 0, members - 1)

    def call(x: Tensor, level: NoiseLevel) -> Tensor:
        as_step(level, schedule)  # ConfigError unless the level is a step of this schedule
        return ensemble_denoiser(x.expand(members, *x.shape), level)[e]

    return AdaptedDenoiser(call, ensemble_denoiser.prediction, schedule, ensemble_denoiser)


# ------------------------------------------------------------------------------------------------------ checking
def check_output(denoiser: Denoiser, example_x: Tensor, batch: int = 4) -> None:
    """Call ``denoiser`` once at the middle step i = indices[T // 2] of ``denoiser.schedule`` on
    x_t = a x0 + s eps, x0 the first ``batch`` rows of ``example_x`` (data (B, ...); (E, B, ...) for an ensemble
    denoiser, then the first ``batch`` of axis 1) and eps ~ N(0, I) from a fixed seed.

    ConfigError (one line) when the call fails, when the output shape differs from x_t's, or when the output is
    not finite.
    """
    batch = check_int_at_least("batch", batch, 1)
    schedule = getattr(denoiser, "schedule", None)
    if not isinstance(schedule, DDPMSchedule):
        raise ConfigError("denoiser must have a schedule attribute (a DDPMSchedule): wrap the model with an "
                          "adapter of easyhard.monitor.adapters")
    if not isinstance(example_x, Tensor) or not example_x.is_floating_point():
        raise ConfigError(f"example_x must be a floating-point tensor of data (got "
                          f"{getattr(example_x, 'dtype', type(example_x).__name__)})")
    x0 = example_x[:, :batch] if getattr(denoiser, "ensemble", False) else example_x[:batch]
    i = schedule.indices[schedule.T // 2]
    level = NoiseLevel.at_index(schedule, i)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0), dtype=x0.dtype).to(x0.device)
    x_t = level.a * x0 + level.s * noise
    try:
        out = denoiser(x_t, level)
    except (RuntimeError, TypeError) as err:
        raise ConfigError(f"calling the model on x_t of shape {tuple(x_t.shape)} at step {i} failed "
                          f"({type(err).__name__}: {_summary(err)})") from None
    if not isinstance(out, Tensor) or out.shape != x_t.shape:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ConfigError(f"model output shape {shape} differs from the data shape {tuple(x_t.shape)}")
    if not bool(torch.isfinite(out).all()):
        raise ConfigError(f"the model returned NaN or inf at step {i}")


def _summary(err: BaseException) -> str:
    """An exception's message on one line (whitespace collapsed), at most 300 characters."""
    return " ".join(str(err).split())[:300]

