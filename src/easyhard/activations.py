"""Activations sigma of the single-neuron and committee denoisers (docs/theory/mcm.md section 4.3).

Each activation evaluates sigma(h) and sigma'(h) on tensors and the three Gaussian moments that
the population loss needs, for h ~ N(m, v) elementwise:

    (E sigma(h), E h sigma(h), E sigma(h)^2)

in closed form where one exists (relu, abs, linear) and by Gauss-Hermite quadrature otherwise.
Closed forms keep blind spots exact: the relu/abs/linear loss has no symmetric higher-order term,
and quadrature noise would fake one.

The Bayes-matched activation depends on the data law and the exact posterior mean, so it lives with the
oracles (:class:`easyhard.oracles.Matched`), as does the factory of every activation by name
(:func:`easyhard.oracles.make_activation`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from easyhard._quadrature import gauss_hermite

_N_NODES = 160


@dataclass(frozen=True)
class Activation:
    """Base class; subclasses implement ``__call__`` and, if smooth, inherit the quadrature moments."""

    name = "abstract"
    #: sigma(-h) = -sigma(h): the loss is blind to skewness and to the mean at first order.
    odd = False

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def derivative(self, h: torch.Tensor) -> torch.Tensor:
        """sigma'(h), by automatic differentiation unless a subclass gives a closed form."""
        with torch.enable_grad():
            x = h.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(self(x).sum(), x)
        return grad

    def gauss_moments(self, m: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(E sigma(h), E h sigma(h), E sigma(h)^2) for h ~ N(m, v), by 160-node Gauss-Hermite quadrature."""
        g, w = gauss_hermite(_N_NODES)
        g, w = g.to(m.device, m.dtype), w.to(m.device, m.dtype)
        h = m.unsqueeze(-1) + v.sqrt().unsqueeze(-1) * g
        s = self(h)
        return (s * w).sum(-1), (h * s * w).sum(-1), (s * s * w).sum(-1)

    def to_dict(self) -> dict:
        return {"name": self.name}


@dataclass(frozen=True)
class Tanh(Activation):
    name = "tanh"
    odd = True

    def __call__(self, h):
        return torch.tanh(h)

    def derivative(self, h):
        return 1 - torch.tanh(h) ** 2


@dataclass(frozen=True)
class Erf(Activation):
    name = "erf"
    odd = True

    def __call__(self, h):
        return torch.erf(h)

    def derivative(self, h):
        return (2 / math.sqrt(math.pi)) * torch.exp(-h * h)


@dataclass(frozen=True)
class Sigmoid(Activation):
    """sigmoid(h) - 1/2 (odd)."""

    name = "sigmoid"
    odd = True

    def __call__(self, h):
        return torch.sigmoid(h) - 0.5

    def derivative(self, h):
        s = torch.sigmoid(h)
        return s * (1 - s)


def _normal_parts(m: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sqrt v, Phi(m/sqrt v), phi(m/sqrt v))."""
    s = v.sqrt()
    z = m / s
    return s, torch.special.ndtr(z), torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)


@dataclass(frozen=True)
class ReLU(Activation):
    name = "relu"

    def __call__(self, h):
        return torch.relu(h)

    def derivative(self, h):
        return (h > 0).to(h.dtype)

    def gauss_moments(self, m, v):
        """E relu = m Phi + s phi;  E h relu = E relu^2 = (m^2 + v) Phi + m s phi."""
        s, cdf, pdf = _normal_parts(m, v)
        second = (m * m + v) * cdf + m * s * pdf
        return m * cdf + s * pdf, second, second


@dataclass(frozen=True)
class Abs(Activation):
    name = "abs"

    def __call__(self, h):
        return h.abs()

    def derivative(self, h):
        return torch.sign(h)

    def gauss_moments(self, m, v):
        """E|h| = m(2Phi - 1) + 2 s phi;  E h|h| = (m^2+v)(2Phi - 1) + 2 m s phi;  E h^2 = m^2 + v."""
        s, cdf, pdf = _normal_parts(m, v)
        return m * (2 * cdf - 1) + 2 * s * pdf, (m * m + v) * (2 * cdf - 1) + 2 * m * s * pdf, m * m + v


@dataclass(frozen=True)
class Linear(Activation):
    name = "linear"
    odd = True

    def __call__(self, h):
        return h

    def derivative(self, h):
        return torch.ones_like(h)

    def gauss_moments(self, m, v):
        return m, m * m + v, m * m + v


#: The activations without parameters, by name; :data:`easyhard.oracles.ACTIVATIONS` adds the Bayes-matched one.
PLAIN_ACTIVATIONS: dict[str, type[Activation]] = {
    "tanh": Tanh, "erf": Erf, "sigmoid": Sigmoid, "relu": ReLU, "abs": Abs, "linear": Linear,
}
