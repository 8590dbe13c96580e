"""Trainable committee denoisers batched over an ensemble axis (docs/theory/mcm.md sections 4.1-4.4, 8.1).

    tied:    D(x_t) = c_t x_t + K^-omega sum_k a_out w_k sigma(w_k . x_t)
    untied:  D(x_t) = c_t x_t + K^-omega sum_k o_k sigma(w_k . x_t),    o_k in R^d

K = 1 tied is the single neuron of docs/theory/mcm.md section 4.1 (the theory's :class:`~easyhard.theory.SingleNeuron`).
c_t = e^-t by default (exact for the isotropic part), a_out is fixed.

Functional style: :class:`Committee` is a frozen dataclass of hyper-parameters and the parameters are
a dict of tensors with a leading ensemble axis, so E independent members run in one tensor program.
Shapes: E members, K neurons, d dimensions, B samples per member.

    params["w"]: (E, K, d)      params["o"]: (E, K, d) (untied only)
    x0, x_t:     (E, B, d)      t, weight:   float or tensor broadcastable to (E, B)

The per-sample gradients are closed form (docs/theory/mcm.md section 4.4 generalised; r = x0 - D(x_t), h_k = w_k . x_t,
kappa = K^-omega):

    tied:    dl/dw_k = -2 kappa a_out [ sigma(h_k) r + (w_k . r) sigma'(h_k) x_t ]
    untied:  dl/dw_k = -2 kappa (o_k . r) sigma'(h_k) x_t,      dl/do_k = -2 kappa sigma(h_k) r
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from easyhard._validate import (
    ConfigError,
    check_choice,
    check_finite,
    check_int_at_least,
    check_nonnegative,
)
from easyhard.activations import Activation, Tanh

SECOND_LAYERS = ("tied", "untied")


def _shape(x: Tensor) -> tuple[int, ...]:
    return tuple(x.shape)


def _check_per_sample(name: str, value, e: int, b: int) -> Tensor | float:
    """A float, or a tensor that broadcasts to (E, B) (returned broadcast); anything else is a ConfigError."""
    if not isinstance(value, Tensor):
        return check_finite(name, value)
    try:
        shape = torch.broadcast_shapes(value.shape, (e, b))
    except RuntimeError:
        shape = None
    if shape != (e, b):
        raise ConfigError(f"{name} must be a float or a tensor broadcastable to (E, B) = ({e}, {b}) "
                          f"(got shape {_shape(value)}); use shape (E, 1) for one value per member")
    return value.expand(e, b)


def _check_eta(eta, w: Tensor) -> Tensor | float:
    """eta as a float or an (E, 1, 1) tensor for rows of w (E, K, d)."""
    if not isinstance(eta, Tensor):
        return check_finite("eta", eta)
    if eta.ndim == 0:
        return eta
    if _shape(eta) != (w.shape[0],):
        raise ConfigError(f"eta must be a float or a tensor of shape (E,) = ({w.shape[0]},) (got shape {_shape(eta)})")
    return eta.to(w.device, w.dtype).reshape(-1, 1, 1)


def _check_weights(w: Tensor, grad: Tensor) -> None:
    if w.ndim != 3:
        raise ConfigError(f"w must have shape (E, K, d) (got shape {_shape(w)})")
    if grad.shape != w.shape:
        raise ConfigError(f"grad must have the shape of w {_shape(w)} (got shape {_shape(grad)})")


@dataclass(frozen=True)
class Committee:
    """Committee denoiser hyper-parameters; parameters live in a dict of (E, K, d) tensors.

        tied:    D(x_t) = c_t x_t + K^-omega sum_k a_out w_k sigma(w_k . x_t)
        untied:  D(x_t) = c_t x_t + K^-omega sum_k o_k sigma(w_k . x_t),   o_k in R^d

    K = 1 tied is the single neuron of docs/theory/mcm.md section 4.1.

    Parameters
    ----------
    d: input dimension (>= 1).
    K: number of neurons (>= 1).
    activation: sigma, an :class:`~easyhard.activations.Activation` (default tanh).
    second_layer: "tied" (output directions w_k, fixed scale a_out) or "untied" (trainable o_k).
    omega: output scaling K^-omega (>= 0; 1/2 lazy-type, 1 mean-field).
    a_out: fixed tied second-layer weight a_t (nonzero when tied); also the initial scale of untied o_k.
    skip: c_t as a constant; None means c_t = e^-t.
    """

    d: int
    K: int = 1
    activation: Activation = field(default_factory=Tanh)
    second_layer: str = "tied"
    omega: float = 1.0
    a_out: float = 1.0
    skip: float | None = None

    def __post_init__(self):
        check_int_at_least("d", self.d, 1)
        check_int_at_least("K", self.K, 1)
        if not isinstance(self.activation, Activation):
            raise ConfigError("activation must be an easyhard.activations.Activation "
                              f"(got {type(self.activation).__name__})")
        check_choice("second_layer", self.second_layer, SECOND_LAYERS)
        check_nonnegative("omega", self.omega)
        check_finite("a_out", self.a_out)
        if self.second_layer == "tied" and self.a_out == 0:
            raise ConfigError("a_out must be nonzero for a tied second layer "
                              "(a zero output scale switches the neurons off)")
        if self.skip is not None:
            check_finite("skip", self.skip)

    # ----- scalars -----------------------------------------------------------------------------
    @property
    def kappa(self) -> float:
        """Output scaling K^-omega."""
        return float(self.K) ** (-float(self.omega))

    @property
    def param_names(self) -> tuple[str, ...]:
        """Keys of the parameter dict: ("w",) tied, ("w", "o") untied."""
        return ("w",) if self.second_layer == "tied" else ("w", "o")

    def skip_coefficient(self, t: Tensor | float) -> Tensor | float:
        """c_t: e^-t when ``skip`` is None (float for float t, tensor of t's shape otherwise), else ``skip``."""
        if self.skip is not None:
            return float(self.skip)
        if isinstance(t, Tensor):
            return torch.exp(-t)
        return math.exp(-float(t))

    # ----- parameters --------------------------------------------------------------------------
    def init(self, E: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32,
             device: torch.device | str = "cpu") -> dict[str, Tensor]:
        """Independent initialisation of E members: w_k uniform on the unit sphere S^(d-1).

        Returns {"w": (E, K, d)} and, untied only, {"o": a_out * w} (a copy, so D starts as the tied model).
        Gaussian rows normalised to unit length (drawn in ``dtype`` on ``device`` with ``generator``).
        """
        E = check_int_at_least("E", E, 1)
        g = torch.randn((E, self.K, self.d), generator=generator, dtype=dtype, device=device)
        w = g / torch.linalg.vector_norm(g, dim=-1, keepdim=True)
        params = {"w": w}
        if self.second_layer == "untied":
            params["o"] = self.a_out * w.clone()
        return params

    def _check_params(self, params: dict[str, Tensor]) -> tuple[int, Tensor, Tensor | None]:
        """(E, w, o) after checking keys and shapes; o is None when tied."""
        missing = [k for k in self.param_names if k not in params]
        if missing:
            raise ConfigError(f"params must contain keys {', '.join(self.param_names)} (missing {', '.join(missing)})")
        w = params["w"]
        if w.ndim != 3 or w.shape[1:] != (self.K, self.d):
            raise ConfigError(f"params['w'] must have shape (E, K, d) = (E, {self.K}, {self.d}) "
                              f"(got shape {_shape(w)})")
        o = params.get("o") if self.second_layer == "untied" else None
        if o is not None and o.shape != w.shape:
            raise ConfigError(f"params['o'] must have the shape of params['w'] {_shape(w)} (got shape {_shape(o)})")
        return w.shape[0], w, o

    def _check_input(self, name: str, x: Tensor, e: int) -> int:
        """B after checking that x has shape (E, B, d)."""
        if x.ndim != 3 or x.shape[0] != e or x.shape[2] != self.d:
            raise ConfigError(f"{name} must have shape (E, B, d) = ({e}, B, {self.d}) (got shape {_shape(x)})")
        return x.shape[1]

    # ----- forward -----------------------------------------------------------------------------
    def preactivations(self, params: dict[str, Tensor], x_t: Tensor) -> Tensor:
        """h_{ebk} = w_{ek} . x_{eb}: (E, B, K) for x_t of shape (E, B, d)."""
        e, w, _ = self._check_params(params)
        self._check_input("x_t", x_t, e)
        return torch.bmm(x_t, w.transpose(1, 2))

    def _skip_term(self, t, x_t: Tensor) -> Tensor:
        """c_t x_t with c_t float or broadcast to (E, B, 1)."""
        e, b = x_t.shape[0], x_t.shape[1]
        t = _check_per_sample("t", t, e, b)
        c = self.skip_coefficient(t)
        if isinstance(c, Tensor):
            c = c.to(x_t.device, x_t.dtype).unsqueeze(-1)
        return c * x_t

    def _forward(self, params, x_t, t):
        """(D, h, sigma(h), w, o) for the shared parts of denoise and gradients."""
        e, w, o = self._check_params(params)
        self._check_input("x_t", x_t, e)
        h = torch.bmm(x_t, w.transpose(1, 2))  # (E, B, K)
        s = self.activation(h)
        out_dirs = self.a_out * w if o is None else o
        den = self._skip_term(t, x_t) + self.kappa * torch.bmm(s, out_dirs)  # (E, B, d)
        return den, h, s, w, o

    def denoise(self, params: dict[str, Tensor], x_t: Tensor, t: Tensor | float) -> Tensor:
        """D(x_t) of every member: (E, B, d).

        D = c_t x_t + K^-omega sigma(h) @ A with h = x_t @ w^T (E, B, K) and A = a_out w (tied) or o (untied).
        t: float or tensor broadcastable to (E, B) (per sample; (E, 1) for one time per member).
        As an ensemble :class:`~easyhard.diffusion.Denoiser` (x0-prediction at the level's OU time):
        ``OUTimeDenoiser(functools.partial(committee.denoise, params), ensemble=True)``.
        """
        return self._forward(params, x_t, t)[0]

    def sample_loss(self, params: dict[str, Tensor], x0: Tensor, x_t: Tensor, t: Tensor | float) -> Tensor:
        """l = ||x0 - D(x_t)||^2 summed over the d coordinates: (E, B). x0, x_t: (E, B, d)."""
        den = self.denoise(params, x_t, t)
        if x0.shape != x_t.shape:
            raise ConfigError(f"x0 must have the shape of x_t {_shape(x_t)} (got shape {_shape(x0)})")
        return ((x0 - den) ** 2).sum(-1)

    def gradients(self, params: dict[str, Tensor], x0: Tensor, x_t: Tensor, t: Tensor | float,
                  weight: Tensor | float | None = None) -> dict[str, Tensor]:
        """Closed-form (1/B) sum_b weight_b grad l_b of :meth:`sample_loss` (see :meth:`loss_and_gradients`)."""
        return self.loss_and_gradients(params, x0, x_t, t, weight)[1]

    def loss_and_gradients(self, params: dict[str, Tensor], x0: Tensor, x_t: Tensor, t: Tensor | float,
                           weight: Tensor | float | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """(sample_loss (E, B), gradients) from one forward pass. The gradients are the closed-form
        (1/B) sum_b weight_b grad l_b of :meth:`sample_loss`, with the keys and shapes of params.

        With r = x0 - D(x_t) (E, B, d), h = w.x_t (E, B, K), kappa = K^-omega:
            tied:    dl/dw_k = -2 kappa a_out [ sigma(h_k) r + (w_k . r) sigma'(h_k) x_t ]
            untied:  dl/dw_k = -2 kappa (o_k . r) sigma'(h_k) x_t,   dl/do_k = -2 kappa sigma(h_k) r
        Each sum over b is one bmm of a (E, K, B) coefficient matrix with an (E, B, d) tensor.
        weight: None (plain mean), float, or tensor broadcastable to (E, B) (e.g. time weights w(t)).
        Not divided by anything else; sigma' is ``activation.derivative`` (sigma'(0) = 0 for relu, abs).
        """
        den, h, s, w, o = self._forward(params, x_t, t)
        if x0.shape != x_t.shape:
            raise ConfigError(f"x0 must have the shape of x_t {_shape(x_t)} (got shape {_shape(x0)})")
        e, b = x_t.shape[0], x_t.shape[1]
        q = -2.0 * self.kappa / b  # mean over B and the common prefactor
        if weight is not None:
            weight = _check_per_sample("weight", weight, e, b)
            if isinstance(weight, Tensor):
                q = q * weight.to(x_t.device, x_t.dtype).unsqueeze(-1)  # (E, B, 1)
            else:
                q = q * weight
        r = x0 - den
        loss = (r**2).sum(-1)
        sp = self.activation.derivative(h)  # (E, B, K)
        if o is None:
            wr = torch.bmm(r, w.transpose(1, 2))  # (E, B, K): w_k . r
            gw = torch.bmm((q * s).transpose(1, 2), r) + torch.bmm((q * wr * sp).transpose(1, 2), x_t)
            return loss, {"w": self.a_out * gw}
        or_ = torch.bmm(r, o.transpose(1, 2))  # (E, B, K): o_k . r
        return loss, {"w": torch.bmm((q * or_ * sp).transpose(1, 2), x_t),
                      "o": torch.bmm((q * s).transpose(1, 2), r)}

    # ----- diagnostics -------------------------------------------------------------------------
    def overlaps(self, params: dict[str, Tensor], spikes: Tensor) -> Tensor:
        """Normalised overlaps w_k . s_p / ||w_k||: (E, K, P).

        spikes: (P, d) shared by all members (e.g. the rows u, v, m of ``model.spike_vectors()``, P = 3)
        or (E, P, d) per member. Spikes are taken as given (unit rows for cosine overlaps).
        """
        e, w, _ = self._check_params(params)
        if spikes.ndim == 2 and spikes.shape[1] == self.d:
            spikes = spikes.to(w.device, w.dtype).unsqueeze(0).expand(e, -1, -1)
        elif not (spikes.ndim == 3 and spikes.shape[0] == e and spikes.shape[2] == self.d):
            raise ConfigError(f"spikes must have shape (P, d) or (E, P, d) with E = {e}, d = {self.d} "
                              f"(got shape {_shape(spikes)})")
        w_hat = w / torch.linalg.vector_norm(w, dim=-1, keepdim=True)
        return torch.bmm(w_hat, spikes.to(w.device, w.dtype).transpose(1, 2))

    def to_dict(self) -> dict:
        """JSON-able hyper-parameters (the activation through its own ``to_dict``)."""
        return {"d": self.d, "K": self.K, "activation": self.activation.to_dict(), "second_layer": self.second_layer,
                "omega": float(self.omega), "a_out": float(self.a_out),
                "skip": None if self.skip is None else float(self.skip)}


def spherical_step(w: Tensor, grad: Tensor, eta: Tensor | float) -> Tensor:
    """One projected spherical SGD step per neuron (docs/theory/mcm.md section 8.1):

        g_perp = g - (g . w) w / ||w||^2,   w <- (w - eta g_perp) / ||w - eta g_perp||

    (for unit rows, as after every step, this is g - (g . w) w). w, grad: (E, K, d);
    eta: float or (E,) tensor of per-member step sizes. Returns new unit rows (E, K, d).
    """
    _check_weights(w, grad)
    eta = _check_eta(eta, w)
    g_par = (grad * w).sum(-1, keepdim=True) / (w * w).sum(-1, keepdim=True)
    new = w - eta * (grad - g_par * w)
    return new / torch.linalg.vector_norm(new, dim=-1, keepdim=True)


def plain_step(w: Tensor, grad: Tensor, eta: Tensor | float) -> Tensor:
    """Unconstrained SGD step w - eta g. w, grad: (E, K, d) (or any equal (E, ...) shapes); eta: float or (E,)."""
    if grad.shape != w.shape or w.ndim < 1:
        raise ConfigError(f"grad must have the shape of w {_shape(w)} (got shape {_shape(grad)})")
    if isinstance(eta, Tensor) and eta.ndim > 0:
        if _shape(eta) != (w.shape[0],):
            raise ConfigError(f"eta must be a float or a tensor of shape (E,) = ({w.shape[0]},) "
                              f"(got shape {_shape(eta)})")
        eta = eta.to(w.device, w.dtype).reshape((-1,) + (1,) * (w.ndim - 1))
    elif not isinstance(eta, Tensor):
        eta = check_finite("eta", eta)
    return w - eta * grad
