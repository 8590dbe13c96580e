"""An ensemble of independent transformer x0-predictors for token sequences (docs/theory/generalization.md
section 8.5; noising of docs/theory/grammar.md section 1.3).

Member e (e = 0..E-1) reads a noised one-hot sequence x_t (L, q) at the step index i of a schedule (the raw
integer index, 1..T for the sequence schedule) and returns logits (L, q) for the clean tokens:

    h_0 = x_t W_in + b_in + P + (emb(i) W_time + b_time)       P: learned positions (L, d); emb: sinusoidal
    pre-norm block:   h <- h + Attn(LN_1(h)),    h <- h + FF(LN_2(h));    final LN after the last block
    post-norm block:  h <- LN_1(h + Attn(h)),    h <- LN_2(h + FF(h));    no final LN
    logits = h W_out + b_out,         x0_hat = softmax(logits) (estimate of E[e(x0) | x_t], per position)

with Attn multi-head self-attention over the L positions (no mask; queries, keys and values from one fused
projection; torch.nn.functional.scaled_dot_product_attention) followed by an output projection,
FF(z) = act(z W_1 + b_1) W_2 + b_2, LN the layer norm with a learned gain and bias, and emb the sinusoidal
embedding of :func:`easyhard.models.mlp.sinusoidal_embedding`. In train mode dropout acts where
torch.nn.TransformerEncoderLayer puts it: on the attention weights, the FF hidden layer and both residual
branches. Dropout draws from torch's global generator, so a run resumed from a saved state reproduces an
uninterrupted one exactly only with ``dropout=0``.

Weights of all members are stacked on a leading axis, W of shape (E, fan_in, fan_out), so one batched
matrix product per layer evaluates every member on its own inputs, and attention runs on the (E B, heads,
L, d / heads) batch. Members share no parameters: the gradient of member e's loss touches only member e.

Initialisation [choice]: weights W ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)), biases 0, layer norms gain 1 and
bias 0, positions N(0, 0.1^2), drawn from a generator member after member, so member e is the same in every
ensemble built from the same seed with more than e members.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from easyhard._validate import ConfigError, check_choice, check_int_at_least
from easyhard.diffusion.ddpm import DDPMSchedule
from easyhard.diffusion.denoiser import NoiseLevel, as_step
from easyhard.models.mlp import sinusoidal_embedding

NORMS = ("pre", "post")
TRANSFORMER_ACTIVATIONS = ("relu", "gelu")
_ACT = {"relu": F.relu, "gelu": F.gelu}
_POSITION_STD = 0.1


@dataclass(frozen=True)
class SequenceTransformerConfig:
    """members: E independent networks; length: L positions; q: vocabulary size; d_model (divisible by heads),
    heads, layers: the encoder blocks; ff: FF hidden width; time_dim: size of the sinusoidal index embedding
    (even); norm: "pre" (LayerNorm before each sub-layer, plus a final one) or "post" (after each residual sum);
    dropout in [0, 1) (train mode only); activation: relu or gelu. The defaults are the CPU demonstration of
    docs/theory/generalization.md section 12 (70,534 parameters per member at L = 8, q = 6);
    section 8.5's network is d_model 512, layers 8, ff 1024, norm "post", dropout 0.1."""

    members: int
    length: int
    q: int
    d_model: int = 64
    heads: int = 4
    layers: int = 2
    ff: int = 128
    time_dim: int = 32
    norm: str = "pre"
    dropout: float = 0.0
    activation: str = "relu"

    def __post_init__(self) -> None:
        for name, low in (("members", 1), ("length", 1), ("q", 2), ("d_model", 1), ("heads", 1), ("layers", 1),
                          ("ff", 1), ("time_dim", 2)):
            object.__setattr__(self, name, check_int_at_least(name, getattr(self, name), low))
        if self.d_model % self.heads:
            raise ConfigError(f"d_model must be a multiple of heads = {self.heads} (got {self.d_model})")
        if self.time_dim % 2:
            raise ConfigError(f"time_dim must be an even integer >= 2 (got {self.time_dim})")
        check_choice("norm", self.norm, NORMS)
        check_choice("activation", self.activation, TRANSFORMER_ACTIVATIONS)
        dropout = float(self.dropout)
        if not (math.isfinite(dropout) and 0 <= dropout < 1):
            raise ConfigError(f"dropout must lie in [0, 1) (got {self.dropout!r})")
        object.__setattr__(self, "dropout", dropout)

    def to_dict(self) -> dict:
        return asdict(self)


def _stacked(members: int, *shape: int, device: torch.device) -> nn.Parameter:
    return nn.Parameter(torch.empty(members, *shape, device=device))


class _Block(nn.Module):
    """One encoder block's stacked parameters: fused qkv (E, d, 3d), output (E, d, d), FF (E, d, ff) and
    (E, ff, d), and the gains and biases (E, 1, d) of its two layer norms."""

    def __init__(self, c: SequenceTransformerConfig, device: torch.device) -> None:
        super().__init__()
        E, d = c.members, c.d_model
        self.w_qkv, self.b_qkv = _stacked(E, d, 3 * d, device=device), _stacked(E, 1, 3 * d, device=device)
        self.w_o, self.b_o = _stacked(E, d, d, device=device), _stacked(E, 1, d, device=device)
        self.gain_1, self.bias_1 = _stacked(E, 1, d, device=device), _stacked(E, 1, d, device=device)
        self.w_ff1, self.b_ff1 = _stacked(E, d, c.ff, device=device), _stacked(E, 1, c.ff, device=device)
        self.w_ff2, self.b_ff2 = _stacked(E, c.ff, d, device=device), _stacked(E, 1, d, device=device)
        self.gain_2, self.bias_2 = _stacked(E, 1, d, device=device), _stacked(E, 1, d, device=device)


def _linear(z: Tensor, w: Tensor, b: Tensor) -> Tensor:
    """Per-member affine map z W + b: z (E, N, fan_in), w (E, fan_in, fan_out), b (E, 1, fan_out) -> (E, N, fan_out).

    The bias is added in place after the product (cheaper on CPU than baddbmm's broadcast bias copy)."""
    return torch.bmm(z, w).add_(b)


def _layer_norm(h: Tensor, gain: Tensor, bias: Tensor) -> Tensor:
    """Per-member LayerNorm: (h - mean) / sqrt(var + 1e-5) * gain + bias over the last axis; h (E, N, d),
    gain and bias (E, 1, d)."""
    return torch.addcmul(bias, F.layer_norm(h, h.shape[-1:]), gain)


class EnsembleTransformer(nn.Module):
    """E stacked transformer x0-predictors (module docstring): ``logits(x_t (E, B, L, q), i) -> (E, B, L, q)``.

    An ensemble :class:`~easyhard.diffusion.Denoiser` predicting x0: ``model(x_t, level)`` at a step level
    (``NoiseLevel.at_index``), or ``model(x_t, i, schedule)``, returns softmax(logits), the per-position
    probabilities of the clean token. Parameters are drawn from ``generator`` (module docstring) and live on
    its device.
    """

    prediction = "x0"
    ensemble = True

    def __init__(self, config: SequenceTransformerConfig, generator: torch.Generator) -> None:
        super().__init__()
        self.config = c = config
        E, d, dev = c.members, c.d_model, generator.device
        self.w_in, self.b_in = _stacked(E, c.q, d, device=dev), _stacked(E, 1, d, device=dev)
        self.w_time, self.b_time = _stacked(E, c.time_dim, d, device=dev), _stacked(E, 1, d, device=dev)
        self.pos = _stacked(E, c.length, d, device=dev)
        self.blocks = nn.ModuleList(_Block(c, dev) for _ in range(c.layers))
        if c.norm == "pre":
            self.final_gain, self.final_bias = _stacked(E, 1, d, device=dev), _stacked(E, 1, d, device=dev)
        self.w_out, self.b_out = _stacked(E, d, c.q, device=dev), _stacked(E, 1, c.q, device=dev)
        self.reset_parameters(generator)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator) -> None:
        """Member after member, in registration order: weights ``w_*`` ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)),
        positions N(0, 0.1^2) (both from ``generator``), gains 1, biases 0."""
        for e in range(self.config.members):
            for name, p in self.named_parameters():
                leaf = name.rsplit(".", 1)[-1]
                if leaf.startswith("w_"):
                    bound = 1 / math.sqrt(p.shape[1])
                    p[e].uniform_(-bound, bound, generator=generator)
                elif leaf == "pos":
                    p[e].normal_(0.0, _POSITION_STD, generator=generator)
                else:
                    p[e].fill_(1.0 if "gain" in leaf else 0.0)

    def _time_shift(self, x_t: Tensor, i: int | Tensor) -> Tensor:
        """b_in + b_time + emb(i) W_time: the index's additive input term, (E, 1 or B, 1, d)."""
        c = self.config
        if not isinstance(i, Tensor):
            emb = sinusoidal_embedding(torch.tensor([float(i)], device=x_t.device), c.time_dim).to(x_t.dtype)
            shift = torch.matmul(emb, self.w_time)  # (E, 1, d)
        else:
            if i.shape not in ((), (x_t.shape[1],), tuple(x_t.shape[:2])):
                raise ConfigError(f"i must be an int or a tensor of shape (B,) or (E, B) = {tuple(x_t.shape[:2])} "
                                  f"(got {tuple(i.shape)})")
            emb = sinusoidal_embedding(i.to(x_t.device).reshape(-1), c.time_dim).to(x_t.dtype)
            emb = emb.reshape(*i.shape, c.time_dim)
            shift = torch.matmul(emb if emb.ndim == 3 else emb.reshape(1, -1, c.time_dim), self.w_time)
        return (shift + (self.b_in + self.b_time)).unsqueeze(2)

    def _dropout(self, h: Tensor) -> Tensor:
        return F.dropout(h, self.config.dropout, True) if self.training and self.config.dropout else h

    def _attention(self, z: Tensor, block: _Block, batch: int) -> Tensor:
        """Multi-head self-attention of z (E, B L, d) within each sequence, output projection included."""
        c = self.config
        E, L, H = c.members, c.length, c.heads
        qkv = _linear(z, block.w_qkv, block.b_qkv).view(E * batch, L, 3, H, c.d_model // H)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (E B, H, L, d / H)
        p = c.dropout if self.training else 0.0
        a = F.scaled_dot_product_attention(q, k, v, dropout_p=p).transpose(1, 2).reshape(E, batch * L, c.d_model)
        return _linear(a, block.w_o, block.b_o)

    def _feed_forward(self, z: Tensor, block: _Block) -> Tensor:
        """act(z W_1 + b_1) W_2 + b_2 for z (E, N, d)."""
        hidden = _ACT[self.config.activation](_linear(z, block.w_ff1, block.b_ff1))
        return _linear(self._dropout(hidden), block.w_ff2, block.b_ff2)

    def logits(self, x_t: Tensor, i: int | Tensor) -> Tensor:
        """Logits (E, B, L, q) of the clean tokens for x_t (E, B, L, q) and the step index i: an int, or a tensor
        of shape (B,) (shared by the members) or (E, B). Computed in the parameters' dtype (x_t is cast)."""
        c = self.config
        if x_t.ndim != 4 or x_t.shape[0] != c.members or x_t.shape[2:] != (c.length, c.q):
            raise ConfigError(f"x_t must have shape (E, B, L, q) = ({c.members}, B, {c.length}, {c.q}) "
                              f"(got {tuple(x_t.shape)})")
        x_t = x_t.to(self.w_in.dtype)
        E, B, L, q = x_t.shape
        h = torch.bmm(x_t.reshape(E, B * L, q), self.w_in).view(E, B, L, -1)
        h = (h + (self.pos.unsqueeze(1) + self._time_shift(x_t, i))).view(E, B * L, -1)
        for block in self.blocks:
            if c.norm == "pre":
                h = h + self._dropout(self._attention(_layer_norm(h, block.gain_1, block.bias_1), block, B))
                h = h + self._dropout(self._feed_forward(_layer_norm(h, block.gain_2, block.bias_2), block))
            else:
                h = _layer_norm(h + self._dropout(self._attention(h, block, B)), block.gain_1, block.bias_1)
                h = _layer_norm(h + self._dropout(self._feed_forward(h, block)), block.gain_2, block.bias_2)
        if c.norm == "pre":
            h = _layer_norm(h, self.final_gain, self.final_bias)
        return _linear(h, self.w_out, self.b_out).view(E, B, L, q)

    def forward(self, x_t: Tensor, i: int | Tensor | NoiseLevel, schedule: DDPMSchedule | None = None) -> Tensor:
        """x0_hat = softmax(logits) (E, B, L, q), in x_t's dtype, for x_t (E, B, L, q) at index i (int, (B,) or
        (E, B)) or a step level; ``schedule`` is unused (the network sees the raw index), accepted for
        ``model(x_t, i, schedule)``."""
        if isinstance(i, NoiseLevel):
            i, _ = as_step(i, schedule)
        return torch.softmax(self.logits(x_t, i), dim=-1).to(x_t.dtype)
