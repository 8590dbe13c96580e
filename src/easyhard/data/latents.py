"""Latent variables of the mixed cumulant model: the non-Gaussian law of nu and its coupling to lambda.

Every law has zero mean and unit variance (docs/theory/mcm.md section 1.3). A law knows how
to sample itself (with an explicit ``torch.Generator``), a quadrature rule for expectations, its
exact third and fourth cumulants, and the posterior mean E[nu | h] for the Gaussian channel
h = scale * nu + sqrt(var) * g, g ~ N(0, 1), which the Bayes-optimal denoiser needs (docs/theory/mcm.md section 3.1).

Couplings between the Gaussian latent lambda and nu (docs/theory/mcm.md section 1.4) are described by
:class:`LatentPair`, which samples (lambda, nu) jointly and provides a joint quadrature grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from easyhard._quadrature import composite_legendre, gauss_hermite, gaussian_panels
from easyhard._validate import ConfigError, check_choice, check_open_unit, check_unit_interval

#: median of |lambda| for lambda ~ N(0, 1): Phi^{-1}(3/4). Threshold of the second-order-invisible coupling.
ABS_NORMAL_MEDIAN = 0.6744897501960817


def _uniform(shape: tuple[int, ...], generator, dtype, device) -> torch.Tensor:
    return torch.rand(shape, generator=generator, dtype=dtype, device=device)


#: elements of the (points x quadrature nodes) logits evaluated at a time by LatentLaw.posterior_mean
POSTERIOR_CHUNK = 1 << 22

@dataclass(frozen=True)
class LatentLaw:
    """Base class: a zero-mean, unit-variance law for the non-Gaussian latent nu."""

    name = "abstract"

    def sample(self, shape: tuple[int, ...], generator: torch.Generator | None = None,
               dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> torch.Tensor:
        raise NotImplementedError

    def quadrature(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Nodes and probability weights (float64, shape (N,)) with E f(nu) ~= sum w f(nodes)."""
        raise NotImplementedError

    @property
    def kappa3(self) -> float:
        raise NotImplementedError

    @property
    def kappa4(self) -> float:
        """Excess kurtosis E nu^4 - 3."""
        raise NotImplementedError

    @property
    def symmetric(self) -> bool:
        """True when nu and -nu have the same law (all odd cumulants vanish)."""
        return False

    def posterior_mean(self, h: torch.Tensor, scale: float, var: float) -> torch.Tensor:
        """E[nu | h] for h = scale * nu + sqrt(var) g:

            E[nu | h] = sum_j w_j nu_j N(h; scale nu_j, var) / sum_j w_j N(h; scale nu_j, var)

        evaluated on the law's quadrature rule (exact for discrete laws), in ``h``'s dtype.
        """
        nodes, weights = self.quadrature()
        nodes = nodes.to(h.device, h.dtype)
        logw = torch.log(weights).to(h.device, h.dtype)
        flat = h.reshape(-1)
        out = torch.empty_like(flat)
        chunk = max(1, POSTERIOR_CHUNK // len(nodes))  # bounded memory: chunk x nodes logits at a time
        for start in range(0, len(flat), chunk):
            part = flat[start:start + chunk]
            logits = logw - (part.unsqueeze(-1) - scale * nodes) ** 2 / (2 * var)
            out[start:start + chunk] = (torch.softmax(logits, dim=-1) * nodes).sum(-1)
        return out.reshape(h.shape)

    def to_dict(self) -> dict:
        return {"name": self.name}


@dataclass(frozen=True)
class Rademacher(LatentLaw):
    """nu = +-1 with probability 1/2: kappa_3 = 0, kappa_4 = -2 (the most platykurtic law)."""

    name = "rademacher"

    def sample(self, shape, generator=None, dtype=torch.float32, device="cpu"):
        bits = torch.randint(0, 2, shape, generator=generator, device=device)
        return (2 * bits - 1).to(dtype)

    def quadrature(self):
        return torch.tensor([-1.0, 1.0], dtype=torch.float64), torch.tensor([0.5, 0.5], dtype=torch.float64)

    kappa3 = 0.0
    kappa4 = -2.0
    symmetric = True

    def posterior_mean(self, h, scale, var):
        """E[nu | h] = tanh(scale h / var) (docs/theory/mcm.md section 3.1)."""
        return torch.tanh(scale * h / var)


@dataclass(frozen=True)
class Laplace(LatentLaw):
    """Laplace law with scale b = 1/sqrt(2) (unit variance): kappa_3 = 0, kappa_4 = 3."""

    name = "laplace"

    def sample(self, shape, generator=None, dtype=torch.float32, device="cpu"):
        b = 1 / math.sqrt(2)
        u = _uniform(shape, generator, torch.float64, device)
        # inverse CDF of the Laplace law; u in [0, 1) so 1 - 2|u - 1/2| > 0.
        x = -b * torch.sign(u - 0.5) * torch.log1p(-2 * torch.abs(u - 0.5))
        return x.to(dtype)

    def quadrature(self):
        b = 1 / math.sqrt(2)
        half = 40 * b  # tail mass beyond: exp(-40) = 4e-18
        edges = torch.linspace(-half, half, 81, dtype=torch.float64).tolist()
        nodes, weights = composite_legendre(edges, per_panel=12)
        weights = weights * torch.exp(-nodes.abs() / b) / (2 * b)
        return nodes, weights / weights.sum()

    kappa3 = 0.0
    kappa4 = 3.0
    symmetric = True


@dataclass(frozen=True)
class Uniform(LatentLaw):
    """Uniform law on [-sqrt 3, sqrt 3]: kappa_3 = 0, kappa_4 = -6/5."""

    name = "uniform"

    def sample(self, shape, generator=None, dtype=torch.float32, device="cpu"):
        u = _uniform(shape, generator, torch.float64, device)
        return ((2 * u - 1) * math.sqrt(3)).to(dtype)

    def quadrature(self):
        r = math.sqrt(3)
        nodes, weights = composite_legendre(torch.linspace(-r, r, 17, dtype=torch.float64).tolist(), per_panel=12)
        return nodes, weights / weights.sum()

    kappa3 = 0.0
    kappa4 = -1.2
    symmetric = True


@dataclass(frozen=True)
class TwoPoint(LatentLaw):
    """Skewed two-point ("Tsodyks") law nu = (B - p)/sqrt(p(1-p)), B ~ Bernoulli(p).

    kappa_3 = (1-2p)/sqrt(p(1-p)),  kappa_4 = (1 - 6p(1-p))/(p(1-p)).
    """

    p: float = 0.1
    name = "two_point"

    def __post_init__(self):
        check_open_unit("nu parameter p of two_point", self.p)

    def _values(self) -> tuple[float, float]:
        p = self.p
        return math.sqrt((1 - p) / p), -math.sqrt(p / (1 - p))

    def sample(self, shape, generator=None, dtype=torch.float32, device="cpu"):
        hi, lo = (torch.tensor(x, dtype=torch.float64, device=device) for x in self._values())
        b = _uniform(shape, generator, torch.float64, device) < self.p
        return torch.where(b, hi, lo).to(dtype)

    def quadrature(self):
        hi, lo = self._values()
        return (torch.tensor([hi, lo], dtype=torch.float64),
                torch.tensor([self.p, 1 - self.p], dtype=torch.float64))

    @property
    def kappa3(self):
        p = self.p
        return (1 - 2 * p) / math.sqrt(p * (1 - p))

    @property
    def kappa4(self):
        p = self.p
        return (1 - 6 * p * (1 - p)) / (p * (1 - p))

    def to_dict(self):
        return {"name": self.name, "p": self.p}


@dataclass(frozen=True)
class BernoulliGauss(LatentLaw):
    """Sparse law nu = B g / sqrt(p), B ~ Bernoulli(p), g ~ N(0, 1): kappa_3 = 0, kappa_4 = 3/p - 3."""

    p: float = 0.1
    name = "bernoulli_gauss"

    def __post_init__(self):
        if not 0 < self.p <= 1:
            raise ConfigError(f"nu parameter p of bernoulli_gauss must lie in (0, 1] (got {self.p:g})")

    def sample(self, shape, generator=None, dtype=torch.float32, device="cpu"):
        b = _uniform(shape, generator, dtype, device) < self.p
        g = torch.randn(shape, generator=generator, dtype=dtype, device=device)
        return b * g / math.sqrt(self.p)

    def quadrature(self):
        x, w = gauss_hermite(80)
        nodes = torch.cat([torch.zeros(1, dtype=torch.float64), x / math.sqrt(self.p)])
        weights = torch.cat([torch.full((1,), 1 - self.p, dtype=torch.float64), self.p * w])
        return nodes, weights

    kappa3 = 0.0
    symmetric = True

    @property
    def kappa4(self):
        return 3 / self.p - 3

    def posterior_mean(self, h, scale, var):
        """Two-component Gaussian posterior. Spike (nu = 0): h ~ N(0, var); slab: h ~ N(0, var + scale^2/p).

            E[nu | h] = P(slab | h) * (scale/p) h / (var + scale^2/p)
        """
        p = self.p
        v_slab = var + scale**2 / p
        log_slab = math.log(p) - 0.5 * math.log(v_slab) - h**2 / (2 * v_slab)
        log_spike = (math.log1p(-p) if p < 1 else -math.inf) - 0.5 * math.log(var) - h**2 / (2 * var)
        p_slab = torch.sigmoid(log_slab - log_spike)
        return p_slab * (scale / p) * h / v_slab

    def to_dict(self):
        return {"name": self.name, "p": self.p}


LATENT_LAWS: dict[str, type[LatentLaw]] = {
    "rademacher": Rademacher, "laplace": Laplace, "uniform": Uniform,
    "two_point": TwoPoint, "bernoulli_gauss": BernoulliGauss,
}
_ALIASES = {"skewed": "two_point", "tsodyks": "two_point", "sparse": "bernoulli_gauss"}


def make_latent_law(name: str, param: float | None = None) -> LatentLaw:
    """Latent law from its name (``-`` and ``_`` are interchangeable) and optional parameter p.

    ``name`` may also carry the parameter as ``"two_point:0.2"``.
    """
    if ":" in name:
        name, _, text = name.partition(":")
        try:
            param = float(text)
        except ValueError:
            raise ConfigError(f"nu parameter must be a number (got {text!r})") from None
    key = name.strip().lower().replace("-", "_")
    key = _ALIASES.get(key, key)
    check_choice("nu", key, LATENT_LAWS)
    cls = LATENT_LAWS[key]
    if key in ("two_point", "bernoulli_gauss"):
        return cls() if param is None else cls(float(param))
    if param is not None:
        raise ConfigError(f"nu parameter is only accepted by two_point and bernoulli_gauss (got nu={key})")
    return cls()


def latent_law_from_dict(spec: dict) -> LatentLaw:
    return make_latent_law(spec["name"], spec.get("p"))


COUPLINGS = ("independent", "sign", "invisible")


@dataclass(frozen=True)
class LatentPair:
    """Joint law of (lambda, nu): lambda ~ N(0, 1), nu with marginal ``law``, coupled by ``coupling``.

    - ``independent``: nu drawn independently of lambda (rho = 0, k_c = inf).
    - ``sign``: with probability q, nu = sign(lambda); otherwise an independent Rademacher draw
      (rho = E[lambda nu] = q sqrt(2/pi), k_c = 1). Rademacher marginal only.
    - ``invisible`` (second-order-invisible): nu = +1 if |lambda| > median|lambda| = 0.67449, else -1
      (rho = 0, E[lambda^2 nu] = 0.857, k_c = 2). Rademacher marginal only.
    """

    law: LatentLaw
    coupling: str = "independent"
    q: float = 1.0

    def __post_init__(self):
        check_choice("coupling", self.coupling, COUPLINGS)
        check_unit_interval("coupling q", self.q)
        if self.coupling != "independent" and not isinstance(self.law, Rademacher):
            raise ConfigError(f"coupling {self.coupling!r} requires nu=rademacher (got nu={self.law.name})")

    @property
    def rho(self) -> float:
        """E[lambda nu], closed form."""
        return self.q * math.sqrt(2 / math.pi) if self.coupling == "sign" else 0.0

    def sample(self, n: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32,
               device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """Draw ``n`` pairs; returns (lambda, nu), each of shape (n,)."""
        lam = torch.randn((n,), generator=generator, dtype=dtype, device=device)
        nu = self.law.sample((n,), generator, dtype, device)
        if self.coupling == "sign":
            take = _uniform((n,), generator, dtype, device) < self.q
            nu = torch.where(take, torch.where(lam >= 0, 1.0, -1.0).to(dtype), nu)
        elif self.coupling == "invisible":
            nu = torch.where(lam.abs() > ABS_NORMAL_MEDIAN, 1.0, -1.0).to(dtype)
        return lam, nu

    def grid(self, n_lambda: int = 120) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Joint quadrature rule: lambda nodes (L,), nu nodes (N,), probability weights W (L, N).

        E f(lambda, nu) ~= sum_ij W_ij f(lambda_i, nu_j). Independent latents use Gauss-Hermite in
        lambda (exact for polynomials of degree < 2L); coupled ones use Gauss-Legendre panels whose
        edges sit on the jumps of P(nu | lambda) (lambda = 0 for sign, +-0.67449 for invisible).
        """
        nu_nodes, nu_w = self.law.quadrature()
        if self.coupling == "independent":
            lam, lam_w = gauss_hermite(n_lambda)
            return lam, nu_nodes, lam_w[:, None] * nu_w[None, :]
        breaks = (0.0,) if self.coupling == "sign" else (-ABS_NORMAL_MEDIAN, ABS_NORMAL_MEDIAN)
        lam, lam_w = gaussian_panels(breaks)
        if self.coupling == "sign":
            p_plus = self.q * (lam > 0).double() + (1 - self.q) * 0.5
        else:
            p_plus = (lam.abs() > ABS_NORMAL_MEDIAN).double()
        cond = torch.stack([1 - p_plus, p_plus], dim=1)  # nu nodes of Rademacher are (-1, +1)
        return lam, nu_nodes, lam_w[:, None] * cond

    def to_dict(self) -> dict:
        return {"nu": self.law.to_dict(), "coupling": self.coupling, "q": self.q}
