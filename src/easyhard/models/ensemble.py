"""An ensemble of independent MLP denoisers with stacked weights (docs/theory/generalization.md section 11).

Member e (e = 0..E-1) is the eps-predictor

    h_1 = act(W_1^e [x_t, emb(i)] + b_1^e),    h_l = act(W_l^e h_{l-1} + b_l^e [+ U_l^e emb(i)])  (l = 2..depth),
    eps_hat = W_out^e h_depth + b_out^e,

with ``depth`` hidden layers of width ``width`` and emb(i) the sinusoidal embedding of the DDPM index i
(:func:`easyhard.models.mlp.sinusoidal_embedding`) concatenated to the input. With ``time_input="every"``
the embedding also enters every later hidden layer through its own linear map U_l (the bracketed term; no
bias of its own, b_l already is one). There is deliberately no Gaussian skip connection or
preconditioning: with one, every member starts close to the same (linear) denoiser, and the similarity of
models trained on disjoint data would be trivially high.

Initialisation (``init``): "torch", PyTorch's default, every weight and bias U(-1/sqrt(fan_in), 1/sqrt(fan_in));
"lecun", weights LeCun-uniform U(-sqrt(3/fan_in), sqrt(3/fan_in)) (variance 1/fan_in) and zero biases. The
output layer's initial weights and bias are then multiplied by ``output_scale``, which multiplies the
initial output by it.

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
TIME_INPUTS = ("first", "every")
INITS = ("torch", "lecun")
#: the largest output_scale accepted (beyond it the initial outputs are far off the unit-variance target)
MAX_OUTPUT_SCALE = 100.0


@dataclass(frozen=True)
class EnsembleConfig:
    """members: E independent networks; d: data dimension; width, depth: hidden layers; time_dim: size of
    the sinusoidal index embedding (even); activation: silu, relu, gelu or tanh; time_scale: the embedding
    sees time_scale * i (1: the raw DDPM index, as in Ho et al. 2020) [choice]; time_input: "first" (the
    embedding at the input only) or "every" (also into every later hidden layer); init: "torch" or "lecun";
    output_scale in (0, 100]: factor on the output layer's initial weights and bias (module docstring)."""

    members: int
    d: int
    width: int = 128
    depth: int = 3
    time_dim: int = 32
    activation: str = "silu"
    time_scale: float = 1.0
    time_input: str = "first"
    init: str = "torch"
    output_scale: float = 1.0

    def __post_init__(self) -> None:
        for name, low in (("members", 1), ("d", 1), ("width", 1), ("depth", 1), ("time_dim", 2)):
            object.__setattr__(self, name, check_int_at_least(name, getattr(self, name), low))
        if self.time_dim % 2:
            raise ConfigError(f"time_dim must be an even integer >= 2 (got {self.time_dim})")
        check_choice("activation", self.activation, ACTIVATIONS)
        check_positive("time_scale", self.time_scale)
        check_choice("time_input", self.time_input, TIME_INPUTS)
        check_choice("init", self.init, INITS)
        if check_positive("output_scale", self.output_scale) > MAX_OUTPUT_SCALE:
            raise ConfigError(f"output_scale must lie in (0, {MAX_OUTPUT_SCALE:g}] (got {self.output_scale:g})")

    def to_dict(self) -> dict:
        return asdict(self)


class EnsembleMLP(nn.Module):
    """E stacked MLP eps-predictors; ``forward(x_t (E, B, d), i, schedule) -> eps_hat (E, B, d)``.

    Parameters: ``weights[l]`` (E, fan_in, fan_out) and ``biases[l]`` (E, 1, fan_out) of the depth + 1 layers,
    and with ``time_input="every"`` ``time_weights[l]`` (E, time_dim, width), U_{l+2} of the module docstring.
    Drawn from ``generator`` layer after layer (weights, then biases, then the time maps), each tensor member
    after member, so member e of two ensembles built from the same seed agree.
    An ensemble Denoiser: ``model(x_t, level)`` at a step level (``NoiseLevel.at_index``).
    """

    prediction = "eps"
    ensemble = True

    def __init__(self, config: EnsembleConfig, generator: torch.Generator) -> None:
        super().__init__()
        self.config = c = config
        dims = [c.d + c.time_dim] + [c.width] * c.depth + [c.d]

        def stacked(*shape: int) -> nn.Parameter:
            return nn.Parameter(torch.empty(c.members, *shape, device=generator.device))

        self.weights = nn.ParameterList(stacked(n_in, n_out) for n_in, n_out in zip(dims[:-1], dims[1:]))
        self.biases = nn.ParameterList(stacked(1, n_out) for n_out in dims[1:])
        hidden_maps = c.depth - 1 if c.time_input == "every" else 0
        self.time_weights = nn.ParameterList(stacked(c.time_dim, c.width) for _ in range(hidden_maps))
        self.reset_parameters(generator)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator) -> None:
        """Initialise from ``generator`` (module docstring): "torch", U(+-1/sqrt(fan_in)) for weights and biases;
        "lecun", weights U(+-sqrt(3/fan_in)) and zero biases; then the output layer times ``output_scale``."""
        lecun = self.config.init == "lecun"
        for w, b in zip(self.weights, self.biases):
            bound = math.sqrt((3.0 if lecun else 1.0) / w.shape[1])
            w.uniform_(-bound, bound, generator=generator)
            if lecun:
                b.zero_()
            else:
                b.uniform_(-bound, bound, generator=generator)
        for u in self.time_weights:
            bound = math.sqrt((3.0 if lecun else 1.0) / u.shape[1])
            u.uniform_(-bound, bound, generator=generator)
        self.weights[-1].mul_(self.config.output_scale)
        self.biases[-1].mul_(self.config.output_scale)

    def _embedding(self, x_t: Tensor, i: int | Tensor) -> Tensor:
        """emb(time_scale * i) in x_t's dtype: (1, 1, time_dim) for an int, (1, B, time_dim) for i (B,), (E, B,
        time_dim) for i (E, B); an int's embedding is computed once and broadcast over the batch."""
        c = self.config
        if not isinstance(i, Tensor):
            emb = sinusoidal_embedding(torch.tensor([c.time_scale * float(i)], device=x_t.device), c.time_dim)
            return emb.to(x_t.dtype)[None]
        if i.shape not in ((), (x_t.shape[1],), tuple(x_t.shape[:2])):
            raise ConfigError(f"i must be an int or a tensor of shape (B,) or (E, B) = {tuple(x_t.shape[:2])} "
                              f"(got {tuple(i.shape)})")
        emb = sinusoidal_embedding(c.time_scale * i.to(x_t.device, torch.float64).reshape(-1), c.time_dim)
        return emb.to(x_t.dtype).reshape(len(i) if i.ndim == 2 else 1, -1, c.time_dim)

    def forward(self, x_t: Tensor, i: int | Tensor | NoiseLevel, schedule: DDPMSchedule | None = None) -> Tensor:
        """eps_hat (E, B, d) for x_t (E, B, d) and index i (int, (B,) or (E, B)) or a step level; ``schedule`` is
        unused (the network sees the raw index), accepted for the denoiser contract ``model(x_t, i, schedule)``."""
        if isinstance(i, NoiseLevel):
            i, _ = as_step(i, schedule)
        c = self.config
        if x_t.ndim != 3 or x_t.shape[0] != c.members or x_t.shape[2] != c.d:
            raise ConfigError(f"x_t must have shape (E, B, d) = ({c.members}, B, {c.d}) (got {tuple(x_t.shape)})")
        act = _ACT[c.activation]
        emb = self._embedding(x_t, i)  # (1 or E, 1 or B, time_dim)
        # the first layer acts on [x_t, emb]: W_1[x rows] x_t + (b_1 + W_1[time rows] emb)
        h = act(torch.baddbmm(self.biases[0] + emb @ self.weights[0][:, c.d:], x_t, self.weights[0][:, :c.d]))
        last = len(self.weights) - 1
        for layer in range(1, last + 1):
            bias = self.biases[layer]
            if layer < last and self.time_weights:
                bias = bias + emb @ self.time_weights[layer - 1]  # (E, 1 or B, width)
            h = torch.baddbmm(bias, h, self.weights[layer])
            if layer < last:
                h = act(h)
        return h
