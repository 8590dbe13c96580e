"""Population loss of the tied single-neuron denoiser (docs/theory/mcm.md sections 4.1 and 5).

    D_w(x_t) = c x_t + a_out w sigma(w.x_t),   |w| = 1,   x_t = a x0 + sqrt(Delta) xi (OU, a = e^-t)

The fixed-time loss L_t(w) = E||x0 - D_w(x_t)||^2 depends on w only through the law of y = w.x0:

    L_t(w) = C_t + E_y F_t(y)
    C_t    = (1 - c a)^2 E||x0||^2 + c^2 Delta d
    F_t(y) = E_eta[ -2 a_out ((1 - c a) y - c sqrt(Delta) eta) sigma(h) + a_out^2 sigma(h)^2 ],
             h = a y + sqrt(Delta) eta,  eta ~ N(0, 1)

(docs/theory/mcm.md section 5 gives F_t for this general c). For the MCM and unit w with overlaps (alpha_u, alpha_v, alpha_m),

    y = beta_m alpha_m + sqrt(beta_u) alpha_u lambda + b alpha_v nu + sqrt(1 - b^2 alpha_v^2) g,  b^2 = beta_v/(1+beta_v)

so given the latents (y, h, r) is jointly Gaussian and E[r sigma(h)] = E[(A + B h) sigma(h)] with
B = Cov(r, h)/Var(h), A = E r - B E h: every expectation is one Gaussian moment of sigma, taken in
closed form or by Gauss-Hermite quadrature (``Activation.gauss_moments``), and then summed over the
joint latent quadrature grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from easyhard._validate import ConfigError, check_finite, check_positive
from easyhard.activations import Activation
from easyhard.data.mcm import MixedCumulantModel

_CHUNK_ELEMENTS = 1 << 16  # overlap points x latent nodes per batch (x 160 quadrature nodes in memory)


@dataclass(frozen=True)
class SingleNeuron:
    """The denoiser family D(x_t) = c x_t + a_out w sigma(w.x_t) at OU time t.

    ``skip`` is c (default e^-t, exact for the isotropic part); ``a_out`` is the fixed output scale a_t.
    """

    activation: Activation
    t: float = 0.5
    skip: float | None = None
    a_out: float = 1.0

    def __post_init__(self):
        check_positive("t", self.t)
        check_finite("a_out", self.a_out)
        if self.a_out == 0:
            raise ConfigError("a_out must be nonzero (a zero output scale switches the neuron off)")
        if self.skip is not None:
            check_finite("skip", self.skip)

    @property
    def a(self) -> float:
        return math.exp(-self.t)

    @property
    def delta(self) -> float:
        return -math.expm1(-2 * self.t)

    @property
    def c(self) -> float:
        return self.a if self.skip is None else float(self.skip)

    def expected_f(self, mu: torch.Tensor, var_y: torch.Tensor | float) -> torch.Tensor:
        """E F_t(y) for y ~ N(mu, var_y) (elementwise over ``mu``): the Gaussian core of every formula.

        With h = a y + sqrt(Delta) eta and r = (1 - c a) y - c sqrt(Delta) eta:
            E F = -2 a_out (A E sigma + B E h sigma) + a_out^2 E sigma^2,
            B = ((1 - c a) a var_y - c Delta) / (a^2 var_y + Delta),  A = (1 - c a) mu - B a mu.
        """
        a, delta, c = self.a, self.delta, self.c
        var_y = torch.as_tensor(var_y, dtype=mu.dtype, device=mu.device)
        m_h, v_h = a * mu, a * a * var_y + delta
        slope = ((1 - c * a) * a * var_y - c * delta) / v_h
        offset = (1 - c * a) * mu - slope * m_h
        e_s, e_hs, e_ss = self.activation.gauss_moments(m_h, v_h.expand_as(m_h))
        return -2 * self.a_out * (offset * e_s + slope * e_hs) + self.a_out**2 * e_ss

    def f(self, y: torch.Tensor) -> torch.Tensor:
        """F_t(y) for deterministic y (float64 tensor of any shape)."""
        return self.expected_f(y, 0.0)

    def to_dict(self) -> dict:
        return {"activation": self.activation.to_dict(), "t": self.t, "skip": self.c, "a_out": self.a_out}


def constant_term(model: MixedCumulantModel, neuron: SingleNeuron) -> float:
    """C_t = (1 - c a)^2 (d + beta_u + beta_m^2) + c^2 Delta d: the part of L_t that does not depend on w."""
    second_moment = model.d + model.beta_u + model.beta_m**2
    return (1 - neuron.c * neuron.a) ** 2 * second_moment + neuron.c**2 * neuron.delta * model.d


def overlap_loss(model: MixedCumulantModel, neuron: SingleNeuron, alpha_u, alpha_v, alpha_m=0.0) -> torch.Tensor:
    """E_y F_t(y) = L_t(w) - C_t for overlaps (alpha_u, alpha_v, alpha_m) of a unit w, by quadrature.

    Arguments broadcast against each other (floats or tensors); returns float64 of their shape.
    The latents are integrated on the model's joint grid, the Gaussian part of y exactly.
    """
    alpha_u, alpha_v, alpha_m = (torch.as_tensor(x, dtype=torch.float64) for x in (alpha_u, alpha_v, alpha_m))
    alpha_u, alpha_v, alpha_m = torch.broadcast_tensors(alpha_u, alpha_v, alpha_m)
    if bool((alpha_u**2 + alpha_v**2 + alpha_m**2 > 1 + 1e-12).any()):
        raise ConfigError("overlaps must satisfy alpha_u^2 + alpha_v^2 + alpha_m^2 <= 1 (w is a unit vector)")
    lam, nu, w = model.latents.grid()
    # a latent with zero overlap everywhere does not enter y: marginalise it out of the grid
    if not bool(alpha_u.any()):
        lam, w = lam[:1] * 0, w.sum(0, keepdim=True)
    if not bool(alpha_v.any()):
        nu, w = nu[:1] * 0, w.sum(1, keepdim=True)
    b = model.v_signal
    au, av, am = (x.reshape(-1, 1, 1) for x in (alpha_u, alpha_v, alpha_m))
    chunk = max(1, _CHUNK_ELEMENTS // w.numel())
    out = []
    for i in range(0, au.shape[0], chunk):
        sl = slice(i, i + chunk)
        mu = model.beta_m * am[sl] + math.sqrt(model.beta_u) * au[sl] * lam[:, None] + b * av[sl] * nu[None, :]
        var_y = (1 - b * b * av[sl] ** 2).clamp_min(0.0)
        out.append((neuron.expected_f(mu, var_y.expand_as(mu)) * w).sum((1, 2)))
    return torch.cat(out).reshape(alpha_u.shape)


def circle_minimiser(model: MixedCumulantModel, neuron: SingleNeuron, n_grid: int = 721) -> tuple[float, float]:
    """(alpha_u, alpha_v) = (cos theta, sin theta) minimising L on the unit circle of span(u, v).

    A grid scan over theta in [0, 2 pi) followed by bounded Brent refinement around the best grid point.
    (docs/theory/mcm.md section 7: tanh, beta_u = beta_v = 5, sign coupling, t = 0.5 gives (0.937, 0.350).)
    """
    from scipy.optimize import minimize_scalar

    def loss(theta):
        theta = torch.as_tensor(theta, dtype=torch.float64)
        return overlap_loss(model, neuron, torch.cos(theta), torch.sin(theta))

    thetas = torch.linspace(0, 2 * math.pi, n_grid, dtype=torch.float64)[:-1]
    best = float(thetas[int(torch.argmin(loss(thetas)))])
    step = 2 * math.pi / (n_grid - 1)
    res = minimize_scalar(lambda th: float(loss(th)), bounds=(best - step, best + step), method="bounded",
                          options={"xatol": 1e-10})
    return math.cos(res.x), math.sin(res.x)
