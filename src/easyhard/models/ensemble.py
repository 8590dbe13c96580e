"""An ensemble of independent MLP denoisers with stacked weights (docs/theory/generalization.md section 11).

Member e (e = 0..E-1) is the eps-predictor

    h_1 = act(W_1^e [x_t, emb(i)] + b_1^e),   h_l = act(W_l^e h_{l-1} + b_l^e),   eps_hat = W_out^e h_L + b_out^e,

with ``depth`` hidden layers of width ``width`` and emb(i) the sinusoidal embedding of the DDPM index i
(:func:`easyhard.models.mlp.sinusoidal_embedding`) concatenated to the input. There is deliberately no
Gaussian skip connection or preconditioning: with one, every member starts close to the same (linear)
denoiser, and the similarity of models trained on disjoint data would be trivially high.

The weights of all members are stacked on a leading axis, W_l of shape (E, fan_in, fan_out), so one
batched matrix product evaluates every member on its own inputs: ``forward(x_t (E, B, d), i)``, or
``forward(x_t, level)`` as an ensemble :class:`~easyhard.diffusion.Denoiser` (prediction "eps"). Members
are independent: the loss of the ensemble is the sum of the members' losses, so each member's gradient,
and its Adam update (element-wise), is exactly what it would be if trained alone.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from easyhard._validate import ConfigError, check_choice, check_int_at_least, check_positive
from easyhard.diffusion.ddpm import DDPMSchedule
from easyhard.diffusion.denoiser import NoiseLevel, as_step
from easyhard.models.mlp import ACTIVATIONS, sinusoidal_embedding

_ACT = {"silu": torch.nn.functional.silu, "relu": torch.relu, "gelu": torch.nn.functional.gelu, "tanh": torch.tanh}


@dataclass(frozen=True)
class EnsembleConfig:
    """members: E independent networks; d: data dimension; width, depth: hidden layers; time_dim: size of
    the sinusoidal index embedding (even); activation: silu, relu, gelu or tanh; time_scale: the embedding
    sees time_scale * i (1: the raw DDPM index, as in Ho et al. 2020) [choice]."""

    members: int
    d: int
    width: int = 128
    depth: int = 3
    time_dim: int = 32
    activation: str = "silu"
    time_scale: float = 1.0

    def __post_init__(self) -> None:
        for name, low in (("members", 1), ("d", 1), ("width", 1), ("depth", 1), ("time_dim", 2)):
            object.__setattr__(self, name, check_int_at_least(name, getattr(self, name), low))
        if self.time_dim % 2:
            raise ConfigError(f"time_dim must be an even integer >= 2 (got {self.time_dim})")
        check_choice("activation", self.activation, ACTIVATIONS)
        check_positive("time_scale", self.time_scale)

    def to_dict(self) -> dict:
        return asdict(self)


class EnsembleMLP(nn.Module):
    """E stacked MLP eps-predictors; ``forward(x_t (E, B, d), i, schedule) -> eps_hat (E, B, d)``.

    Weights W ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) and biases likewise (PyTorch's default scheme), drawn
    from ``generator`` member after member, so member e of two ensembles built from the same seed agree.
    An ensemble Denoiser: ``model(x_t, level)`` at a step level (``NoiseLevel.at_index``).
    """

    prediction = "eps"
    ensemble = True

    def __init__(self, config: EnsembleConfig, generator: torch.Generator) -> None:
        super().__init__()
        self.config = c = config
        dims = [c.d + c.time_dim] + [c.width] * c.depth + [c.d]
        self.weights = nn.ParameterList(nn.Parameter(torch.empty(c.members, n_in, n_out, device=generator.device))
                                        for n_in, n_out in zip(dims[:-1], dims[1:]))
        self.biases = nn.ParameterList(nn.Parameter(torch.empty(c.members, 1, n_out, device=generator.device))
                                       for n_out in dims[1:])
        self.reset_parameters(generator)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator) -> None:
        """U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for every weight and bias, from ``generator``."""
        for w, b in zip(self.weights, self.biases):
            bound = 1 / math.sqrt(w.shape[1])
            w.uniform_(-bound, bound, generator=generator)
            b.uniform_(-bound, bound, generator=generator)

    def _input_bias(self, x_t: Tensor, i: int | Tensor) -> Tensor:
        """b_1 + W_1[time rows] emb(i): the first layer's contribution of the index, (E, 1 or B, width).

        The first layer acts on [x_t, emb(i)], so it splits into W_1[x rows] x_t plus this term; for an int
        index the embedding is computed once and broadcast over the batch.
        """
        c = self.config
        w_time, b = self.weights[0][:, c.d:], self.biases[0]
        if not isinstance(i, Tensor):
            emb = sinusoidal_embedding(torch.tensor([c.time_scale * float(i)], device=x_t.device), c.time_dim)
            emb = emb.to(x_t.dtype)
            return b + emb @ w_time  # (E, 1, width)
        if i.shape not in ((), (x_t.shape[1],), tuple(x_t.shape[:2])):
            raise ConfigError(f"i must be an int or a tensor of shape (B,) or (E, B) = {tuple(x_t.shape[:2])} "
                              f"(got {tuple(i.shape)})")
        emb = sinusoidal_embedding(c.time_scale * i.to(x_t.device, torch.float64).reshape(-1), c.time_dim).to(x_t.dtype)
        emb = emb.reshape(*i.shape, c.time_dim)
        return b + (emb @ w_time if emb.ndim == 3 else emb.expand(c.members, *emb.shape[-2:]) @ w_time)

    def forward(self, x_t: Tensor, i: int | Tensor | NoiseLevel, schedule: DDPMSchedule | None = None) -> Tensor:
        """eps_hat (E, B, d) for x_t (E, B, d) and index i (int, (B,) or (E, B)) or a step level; ``schedule`` is
        unused (the network sees the raw index), accepted for the denoiser contract ``model(x_t, i, schedule)``."""
        if isinstance(i, NoiseLevel):
            i, _ = as_step(i, schedule)
        c = self.config
        if x_t.ndim != 3 or x_t.shape[0] != c.members or x_t.shape[2] != c.d:
            raise ConfigError(f"x_t must have shape (E, B, d) = ({c.members}, B, {c.d}) (got {tuple(x_t.shape)})")
        act = _ACT[c.activation]
        h = act(torch.baddbmm(self._input_bias(x_t, i), x_t, self.weights[0][:, :c.d]))
        last = len(self.weights) - 1
        for layer in range(1, last + 1):
            h = torch.baddbmm(self.biases[layer], h, self.weights[layer])
            if layer < last:
                h = act(h)
        return h
