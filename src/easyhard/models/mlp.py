"""MLP denoiser for flattened images or patches (docs/theory/images.md section 9).

    h_1 = act(W_1 x_in + b_1 + e_1(i)),    h_l = act(W_l h_{l-1} + b_l + e_l(i)),    F = W_out h_L + b_out,

with L = ``depth`` hidden layers of width ``width`` and a time embedding e_l(i) added to every
hidden pre-activation: the DDPM index i (as a float) is embedded sinusoidally
(Ho et al. 2020 / Vaswani et al. 2017: [sin(i f_k), cos(i f_k)], f_k = 10000^(-k / (time_dim/2))),
mapped by a two-layer SiLU MLP to ``depth * width`` numbers and split into e_1..e_L.

Scalar EDM preconditioning (Karras et al. 2022, ``preconditioning="edm"``) on the DDPM step i with
x_t = sqrt(abar_i) x0 + sqrt(1 - abar_i) eps:

    x_tilde = x_t / sqrt(abar),   sigma^2 = (1 - abar) / abar,
    c_in   = 1 / sqrt(sigma^2 + sigma_data^2),      c_skip = sigma_data^2 / (sigma^2 + sigma_data^2),
    c_out  = sigma sigma_data / sqrt(sigma^2 + sigma_data^2),
    x0_hat = c_skip x_tilde + c_out F(c_in x_tilde, i).

sigma_data is a scalar, so no covariance information enters the architecture. The x0 estimate is
then converted to the requested output space with :mod:`easyhard.diffusion.parametrization`. With
``preconditioning="none"`` the raw network output F(x_t, i) *is* the prediction in that space.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from easyhard._validate import ConfigError, check_choice, check_int_at_least, check_positive
from easyhard.diffusion.ddpm import DDPMSchedule, Index
from easyhard.diffusion.denoiser import NoiseLevel, as_step, predict_x0
from easyhard.diffusion.parametrization import convert

ACTIVATIONS = ("silu", "relu", "gelu", "tanh")
PREDICTIONS = ("eps", "x0")
PRECONDITIONINGS = ("edm", "none")

_ACTIVATION_MODULES = {"silu": nn.SiLU, "relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}


@dataclass(frozen=True)
class MLPConfig:
    """Hyper-parameters of :class:`MLPDenoiser`.

    d: input dimension (C * H * W for images), >= 1.
    width: hidden width, >= 1.   depth: number of hidden layers, >= 1.
    activation: one of silu, relu, gelu, tanh.
    time_dim: size of the sinusoidal index embedding, even and >= 2.
    prediction: output space of ``forward``, "eps" or "x0".
    preconditioning: "edm" (scalar EDM wrapper, module docstring) or "none".
    sigma_data: the EDM data scale (e.g. sqrt of the mean pixel variance), > 0.
    """

    d: int
    width: int = 256
    depth: int = 3
    activation: str = "silu"
    time_dim: int = 128
    prediction: str = "eps"
    preconditioning: str = "edm"
    sigma_data: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "d", check_int_at_least("d", self.d, 1))
        object.__setattr__(self, "width", check_int_at_least("width", self.width, 1))
        object.__setattr__(self, "depth", check_int_at_least("depth", self.depth, 1))
        check_choice("activation", self.activation, ACTIVATIONS)
        time_dim = check_int_at_least("time_dim", self.time_dim, 2)
        if time_dim % 2:
            raise ConfigError(f"time_dim must be an even integer >= 2 (got {time_dim})")
        object.__setattr__(self, "time_dim", time_dim)
        check_choice("prediction", self.prediction, PREDICTIONS)
        check_choice("preconditioning", self.preconditioning, PRECONDITIONINGS)
        object.__setattr__(self, "sigma_data", check_positive("sigma_data", self.sigma_data))


def sinusoidal_embedding(i: Tensor, dim: int) -> Tensor:
    """[sin(i f_k), cos(i f_k)]_{k < dim/2} with f_k = 10000^(-k / (dim/2)); i: (B,) -> (B, dim).

    ``i`` is used as a float, so non-integer indices are allowed.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float64, device=i.device) / half)
    angles = i.to(torch.float64).unsqueeze(-1) * freqs
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


def edm_coefficients(abar: Tensor, sigma_data: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(sigma, c_in, c_skip, c_out) of the scalar EDM preconditioning for abar (any shape).

    sigma^2 = (1 - abar)/abar, c_in = 1/sqrt(sigma^2 + sd^2), c_skip = sd^2/(sigma^2 + sd^2),
    c_out = sigma sd / sqrt(sigma^2 + sd^2).
    """
    sigma2 = (1 - abar) / abar
    norm = sigma2 + sigma_data**2
    sigma = torch.sqrt(sigma2)
    return sigma, 1 / torch.sqrt(norm), sigma_data**2 / norm, sigma * sigma_data / torch.sqrt(norm)


def _index_and_abar(x: Tensor, i: Index, schedule: DDPMSchedule) -> tuple[Tensor, Tensor]:
    """Per-sample float index (B,) and float64 abar (B,) for an int or a (B,) LongTensor i."""
    batch = x.shape[0]
    abar = schedule.alpha_bar(i)  # validates i
    if isinstance(i, Tensor):
        if i.shape not in ((), (batch,)):
            raise ConfigError(f"i must be an int or a tensor of shape ({batch},) (got shape {tuple(i.shape)})")
        index = i.to(device=x.device, dtype=torch.float64).expand(batch)
        abar_t = abar.to(device=x.device).expand(batch)
    else:
        index = torch.full((batch,), float(i), dtype=torch.float64, device=x.device)
        abar_t = torch.full((batch,), float(abar), dtype=torch.float64, device=x.device)
    return index, abar_t


class MLPDenoiser(nn.Module):
    """Fully connected denoiser; see the module docstring for the architecture and formulas.

    A :class:`~easyhard.diffusion.Denoiser`: ``model(x_t, level)`` at a step level
    (``NoiseLevel.at_index``), predicting ``config.prediction``; ``model(x_t, i, schedule)`` is the same call.

    Parameters are initialised from ``generator`` (PyTorch's default scheme,
    W, b ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in))) without touching the global RNG, so equal seeds
    give equal networks.
    """

    def __init__(self, config: MLPConfig, generator: torch.Generator) -> None:
        super().__init__()
        self.config = config
        c = config
        meta = torch.device("meta")
        dims = [c.d] + [c.width] * c.depth
        self.hidden = nn.ModuleList(nn.Linear(n_in, n_out, device=meta) for n_in, n_out in zip(dims[:-1], dims[1:]))
        self.out = nn.Linear(c.width, c.d, device=meta)
        self.time_mlp = nn.Sequential(nn.Linear(c.time_dim, c.width, device=meta), nn.SiLU(),
                                      nn.Linear(c.width, c.depth * c.width, device=meta))
        self.act = _ACTIVATION_MODULES[c.activation]()
        self.to_empty(device=generator.device)
        self.reset_parameters(generator)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator) -> None:
        """W, b ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for every linear layer, drawn from ``generator``."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                bound = 1 / math.sqrt(module.in_features)
                module.weight.uniform_(-bound, bound, generator=generator)
                module.bias.uniform_(-bound, bound, generator=generator)

    def network(self, x: Tensor, index: Tensor) -> Tensor:
        """The raw network F(x, i): x (B, d), index (B,) float -> (B, d)."""
        emb = self.time_mlp(sinusoidal_embedding(index, self.config.time_dim).to(x.dtype))
        h = x
        for layer, e in zip(self.hidden, emb.chunk(self.config.depth, dim=-1)):
            h = self.act(layer(h) + e)
        return self.out(h)

    def _flatten(self, x_t: Tensor) -> Tensor:
        if x_t.ndim < 2 or x_t[0].numel() != self.config.d:
            raise ConfigError(f"x_t must have shape (B, {self.config.d}) or (B, C, H, W) with "
                              f"C*H*W = {self.config.d} (got shape {tuple(x_t.shape)})")
        return x_t.reshape(x_t.shape[0], -1)

    @property
    def prediction(self) -> str:
        """Output space of :meth:`forward`: ``config.prediction`` ("eps" or "x0")."""
        return self.config.prediction

    def forward(self, x_t: Tensor, i: Index | NoiseLevel, schedule: DDPMSchedule | None = None) -> Tensor:
        """Prediction in ``config.prediction`` space for x_t of shape (B, d) or (B, C, H, W).

        i: int or LongTensor (B,) in the schedule's index base, or a NoiseLevel at a step of a schedule
        (then ``schedule`` may be omitted). Output has x_t's shape.
        """
        i, schedule = as_step(i, schedule)
        x = self._flatten(x_t)
        index, abar = _index_and_abar(x, i, schedule)
        a = torch.sqrt(abar).to(x.dtype)
        s = torch.sqrt(1 - abar).to(x.dtype)
        if self.config.preconditioning == "none":
            pred = self.network(x, index)
        else:
            sigma, c_in, c_skip, c_out = (c.to(x.dtype).unsqueeze(-1)
                                          for c in edm_coefficients(abar, self.config.sigma_data))
            x_tilde = x / a.unsqueeze(-1)
            x0_hat = c_skip * x_tilde + c_out * self.network(c_in * x_tilde, index)
            pred = convert(x0_hat, "x0", self.config.prediction, x, a, s)
        return pred.reshape(x_t.shape)

    def predict_x0(self, x_t: Tensor, i: Index, schedule: DDPMSchedule) -> Tensor:
        """x0 estimate x0_hat = (x_t - s eps_hat) / a (or the x0 output itself); shape of x_t."""
        return predict_x0(self, x_t, NoiseLevel.at_index(schedule, i))
