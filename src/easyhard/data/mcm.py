"""The mixed cumulant model (MCM) and its Gaussian equivalent (docs/theory/mcm.md sections 1.1-1.6).

    x0 = beta_m m + sqrt(beta_u) lambda u + S (sqrt(beta_v) nu v + z),   z ~ N(0, I_d)
    S  = (I + beta_v v v^T)^(-1/2) = I - (1 - (1 + beta_v)^(-1/2)) v v^T

u carries a covariance spike, v a spike visible only in higher-order cumulants (S whitens it),
m an optional mean. lambda ~ N(0, 1); nu has zero mean and unit variance and may be coupled to
lambda (:class:`~easyhard.data.latents.LatentPair`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from easyhard._validate import ConfigError, check_choice, check_int_at_least, check_nonnegative
from easyhard.data.latents import LatentLaw, LatentPair, Rademacher, latent_law_from_dict

SPIKE_MODES = ("fixed", "random")


@dataclass(frozen=True)
class GaussianModel:
    """N(mean, cov) with an explicit-generator sampler (the Gaussian equivalent / clone of a dataset).

    mean: (d,), cov: (d, d) symmetric positive semi-definite.
    """

    mean: torch.Tensor
    cov: torch.Tensor

    def __post_init__(self):
        d = self.mean.shape[-1]
        if self.mean.ndim != 1 or self.cov.shape != (d, d):
            raise ConfigError(f"cov must have shape ({d}, {d}) to match mean (got {tuple(self.cov.shape)})")

    @property
    def d(self) -> int:
        return self.mean.shape[0]

    def sample(self, n: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32,
               device: torch.device | str = "cpu") -> torch.Tensor:
        """x = mean + C z with C C^T = cov (eigen-factor, robust to singular cov); returns (n, d)."""
        evals, evecs = torch.linalg.eigh(self.cov.to(torch.float64))
        factor = (evecs * evals.clamp_min(0).sqrt()).to(device, dtype)
        z = torch.randn((n, self.d), generator=generator, dtype=dtype, device=device)
        return self.mean.to(device, dtype) + z @ factor.T


@dataclass(frozen=True)
class MixedCumulantModel:
    """Configuration and exact statistics of the MCM. Spikes default to u = e_1, v = e_2, m = e_3.

    Parameters
    ----------
    d: dimension (>= 3).
    beta_u, beta_v, beta_m: spike strengths (>= 0); beta_m is the mean amplitude.
    latents: joint law of (lambda, nu) (law of nu and its coupling).
    spikes: "fixed" (e_1, e_2, e_3) or "random" (QR of a Gaussian d x 3 matrix drawn with ``spike_seed``).
    """

    d: int = 128
    beta_u: float = 5.0
    beta_v: float = 5.0
    beta_m: float = 0.0
    latents: LatentPair = field(default_factory=lambda: LatentPair(Rademacher()))
    spikes: str = "fixed"
    spike_seed: int = 0

    def __post_init__(self):
        check_int_at_least("d", self.d, 3)
        for name in ("beta_u", "beta_v", "beta_m"):
            check_nonnegative(name, getattr(self, name))
        check_choice("spikes", self.spikes, SPIKE_MODES)

    @classmethod
    def create(cls, d: int = 128, beta_u: float = 5.0, beta_v: float = 5.0, beta_m: float = 0.0,
               nu: LatentLaw | None = None, coupling: str = "independent", q: float = 1.0,
               spikes: str = "fixed", spike_seed: int = 0) -> MixedCumulantModel:
        """Convenience constructor from flat parameters."""
        pair = LatentPair(nu if nu is not None else Rademacher(), coupling, q)
        return cls(d, beta_u, beta_v, beta_m, pair, spikes, spike_seed)

    # ----- derived scalars -------------------------------------------------------------------
    @property
    def law(self) -> LatentLaw:
        return self.latents.law

    @property
    def rho(self) -> float:
        return self.latents.rho

    @property
    def whitening_shrink(self) -> float:
        """1 - (1 + beta_v)^(-1/2): S y = y - shrink (v.y) v."""
        return 1 - 1 / math.sqrt(1 + self.beta_v)

    @property
    def v_signal(self) -> float:
        """Coefficient b = sqrt(beta_v/(1+beta_v)) of nu in v.x0 = b nu + (v.z)/sqrt(1+beta_v)."""
        return math.sqrt(self.beta_v / (1 + self.beta_v))

    @property
    def c_uv(self) -> float:
        """Cross-covariance u^T Cov(x0) v = rho sqrt(beta_u beta_v/(1+beta_v)) (docs/theory/mcm.md section 1.5)."""
        return self.rho * math.sqrt(self.beta_u) * self.v_signal

    # ----- spikes and whitening ----------------------------------------------------------------
    def spike_vectors(self, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> torch.Tensor:
        """Orthonormal spikes stacked as rows (u, v, m): shape (3, d)."""
        if self.spikes == "fixed":
            basis = torch.eye(3, self.d, dtype=torch.float64)
        else:
            gen = torch.Generator().manual_seed(self.spike_seed)
            g = torch.randn((self.d, 3), generator=gen, dtype=torch.float64)
            q, r = torch.linalg.qr(g)
            basis = (q * torch.sign(torch.diagonal(r))).T
        return basis.to(device, dtype)

    def whiten(self, y: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """S y = y - (1 - (1+beta_v)^(-1/2)) (v.y) v, applied as a rank-one update. y: (..., d)."""
        return y - self.whitening_shrink * (y @ v).unsqueeze(-1) * v

    def whitening_matrix(self, dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu") -> torch.Tensor:
        """S as a dense (d, d) matrix (for tests and small d; the sampler never forms it)."""
        v = self.spike_vectors(dtype, device)[1]
        return torch.eye(self.d, dtype=dtype, device=device) - self.whitening_shrink * torch.outer(v, v)

    # ----- sampling ----------------------------------------------------------------------------
    def sample(self, n: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32,
               device: torch.device | str = "cpu", return_latents: bool = False):
        """Draw n samples x0, shape (n, d). With ``return_latents`` also returns (lambda, nu), each (n,)."""
        check_int_at_least("n", n, 1)
        u, v, m = self.spike_vectors(dtype, device)
        lam, nu = self.latents.sample(n, generator, dtype, device)
        z = torch.randn((n, self.d), generator=generator, dtype=dtype, device=device)
        x0 = self.whiten(z + math.sqrt(self.beta_v) * nu[:, None] * v, v)
        x0 = x0 + math.sqrt(self.beta_u) * lam[:, None] * u + self.beta_m * m
        return (x0, lam, nu) if return_latents else x0

    # ----- exact statistics (section 1.5) ------------------------------------------------------
    def mean(self, dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu") -> torch.Tensor:
        """E x0 = beta_m m, shape (d,)."""
        return self.beta_m * self.spike_vectors(dtype, device)[2]

    def covariance(self, dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu") -> torch.Tensor:
        """Cov x0 = I + beta_u u u^T + c_uv (u v^T + v u^T), shape (d, d)."""
        u, v, _ = self.spike_vectors(dtype, device)
        eye = torch.eye(self.d, dtype=dtype, device=device)
        return eye + self.beta_u * torch.outer(u, u) + self.c_uv * (torch.outer(u, v) + torch.outer(v, u))

    def gaussian_equivalent(self, dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu") -> GaussianModel:
        """N(E x0, Cov x0): same first two moments, no higher-order information (docs/theory/mcm.md section 1.6)."""
        return GaussianModel(self.mean(dtype, device), self.covariance(dtype, device))

    def _span_coefficients(self, direction) -> tuple[float, float]:
        """(e.u, e.v) for a unit vector e in span(u, v), given as a (d,) tensor or a pair (c_u, c_v)."""
        if isinstance(direction, torch.Tensor) and direction.ndim == 1 and direction.shape[0] == self.d:
            e = direction.to(torch.float64)
            u, v, _ = self.spike_vectors(torch.float64, e.device)
            cu, cv = float(e @ u), float(e @ v)
            if float(torch.linalg.vector_norm(e - cu * u - cv * v)) > 1e-6:
                raise ConfigError("direction must lie in span(u, v)")
        else:
            cu, cv = (float(c) for c in direction)
        if abs(math.hypot(cu, cv) - 1) > 1e-6:
            raise ConfigError(f"direction must have unit norm (got {math.hypot(cu, cv):.6g})")
        return cu, cv

    def projected_cumulant(self, direction, order: int) -> float:
        """p-th cumulant (p = 3 or 4) of e.x0 for a unit e = c_u u + c_v v.

        e.x0 = c_u sqrt(beta_u) lambda + c_v b nu + Gaussian, b = sqrt(beta_v/(1+beta_v)); Gaussian parts
        have no cumulants of order >= 3. Independent latents: kappa_p = (c_v b)^p kappa_p(nu) (closed form).
        Coupled latents: joint cumulant of A lambda + B nu from the joint quadrature grid.
        """
        if order not in (3, 4):
            raise ConfigError(f"order must be 3 or 4 (got {order})")
        cu, cv = self._span_coefficients(direction)
        a, b = cu * math.sqrt(self.beta_u), cv * self.v_signal
        if self.latents.coupling == "independent":
            kappa = self.law.kappa3 if order == 3 else self.law.kappa4
            return b**order * kappa
        lam, nu, w = self.latents.grid()
        s = a * lam[:, None] + b * nu[None, :]
        m1 = float((w * s).sum())
        c = s - m1
        mu2, mu3, mu4 = (float((w * c**k).sum()) for k in (2, 3, 4))
        return mu3 if order == 3 else mu4 - 3 * mu2**2

    def to_dict(self) -> dict:
        return {"d": self.d, "beta_u": self.beta_u, "beta_v": self.beta_v, "beta_m": self.beta_m,
                **self.latents.to_dict(), "spikes": self.spikes, "spike_seed": self.spike_seed}

    @classmethod
    def from_dict(cls, spec: dict) -> MixedCumulantModel:
        return cls.create(spec["d"], spec["beta_u"], spec["beta_v"], spec["beta_m"],
                          latent_law_from_dict(spec["nu"]), spec["coupling"], spec["q"],
                          spec["spikes"], spec["spike_seed"])
