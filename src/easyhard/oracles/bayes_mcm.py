"""Bayes-optimal denoiser E[x0 | x_t] of the mixed cumulant model (docs/theory/mcm.md sections 3.1-3.2).

OU convention: x_t = a x0 + sqrt(Delta) xi with a = e^-t, Delta = 1 - e^-2t. With projections
h_u = u.x_t, h_v = v.x_t, h_m = m.x_t and P_perp the projector orthogonal to span(m, u, v):

    E[x0 | x_t] = a P_perp x_t + m (beta_m + a (h_m - a beta_m)) + u E[p_u | h] + v E[p_v | h]
    E[p_u | h]  = a h_u + Delta sqrt(beta_u) E[lambda | h]
    E[p_v | h]  = a h_v / ((1+beta_v) s2) + b (Delta / s2) E[nu | h]
    s2 = a^2/(1+beta_v) + Delta,   b = sqrt(beta_v/(1+beta_v)),   m_v = a b

Given the latents, h_u ~ N(a sqrt(beta_u) lambda, 1) and h_v ~ N(m_v nu, s2) independently, so the
latent posterior is prior(lambda, nu) N(h_u; a sqrt(beta_u) lambda, 1) N(h_v; m_v nu, s2).
Independent latents factorise: E[lambda | h_u] = a sqrt(beta_u) h_u / (1 + a^2 beta_u) in closed form and
E[nu | h_v] from the law (tanh for Rademacher). Coupled latents use the joint quadrature grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from easyhard._quadrature import composite_legendre, gauss_hermite
from easyhard._validate import ConfigError, check_finite, check_positive
from easyhard.data.mcm import MixedCumulantModel
from easyhard.oracles.wiener import WienerDenoiser

_GRID_ELEMENTS = 1 << 22  # batch chunk for the coupled posterior: B * L * N <= 4M

#: OU times t at which the theory commands (exponents, oracle-mse, calibrate) are validated: below 1e-4 the
#: differences 1 - e^-2t lose digits to cancellation, above 20 e^-2t < 2^-53 and x_t carries no float64 signal
THEORY_T_RANGE = (1e-4, 20.0)
#: largest spike strength beta_u, beta_v at which the theory quadratures are validated (docs/theory/mcm.md section 10)
THEORY_BETA_MAX = 100.0


def check_theory_time(t: float) -> float:
    """t in THEORY_T_RANGE; ConfigError naming ``t`` otherwise."""
    t = check_finite("t", t)
    lo, hi = THEORY_T_RANGE
    if not lo <= t <= hi:
        raise ConfigError(f"t must lie in [{lo:g}, {hi:g}] (OU times where the quadratures are validated; "
                          f"got {t:g})")
    return t


def check_theory_beta(name: str, value: float) -> float:
    """0 <= value <= THEORY_BETA_MAX; ConfigError naming ``name`` otherwise."""
    value = check_finite(name, value)
    if not 0 <= value <= THEORY_BETA_MAX:
        raise ConfigError(f"{name} must lie in [0, {THEORY_BETA_MAX:g}] (spike strengths where the quadratures "
                          f"are validated; got {value:g})")
    return value


@dataclass(frozen=True)
class GaussianChannels:
    """Scalars of the two Gaussian channels h_u | lambda and h_v | nu at OU time t."""

    a: float
    delta: float
    s2: float
    m_u: float  # mean of h_u per unit lambda: a sqrt(beta_u)
    m_v: float  # mean of h_v per unit nu: a b

    @classmethod
    def at(cls, beta_u: float, beta_v: float, t: float) -> GaussianChannels:
        check_positive("t", t)
        a = math.exp(-t)
        delta = -math.expm1(-2 * t)
        s2 = a**2 / (1 + beta_v) + delta
        return cls(a, delta, s2, a * math.sqrt(beta_u), a * math.sqrt(beta_v / (1 + beta_v)))

    @classmethod
    def of(cls, model: MixedCumulantModel, t: float) -> GaussianChannels:
        return cls.at(model.beta_u, model.beta_v, t)


def v_posterior_mean(h_v: torch.Tensor, e_nu: torch.Tensor, beta_v: float, t: float) -> torch.Tensor:
    """E[v.x0 | h] = a h_v / ((1+beta_v) s2) + b (Delta/s2) E[nu | h]  (docs/theory/mcm.md section 3.1; any coupling)."""
    ch = GaussianChannels.at(0.0, beta_v, t)
    return ch.a * h_v / ((1 + beta_v) * ch.s2) + math.sqrt(beta_v / (1 + beta_v)) * (ch.delta / ch.s2) * e_nu


class MCMBayesDenoiser:
    """Exact posterior mean E[x0 | x_t] for a :class:`MixedCumulantModel` at OU time t.

    ``n_lambda`` sets the lambda quadrature of coupled latents (ignored when independent).
    As a :class:`~easyhard.diffusion.Denoiser` (x0-prediction at the level's OU time, a float):
    ``OUTimeDenoiser(MCMBayesDenoiser(model))``.
    """

    def __init__(self, model: MixedCumulantModel, n_lambda: int = 120):
        self.model = model
        self.n_lambda = n_lambda

    def latent_posterior_means(self, h_u: torch.Tensor, h_v: torch.Tensor, t: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(E[lambda | h], E[nu | h]) for projections h_u, h_v of shape (B,)."""
        ch = GaussianChannels.of(self.model, t)
        if self.model.latents.coupling == "independent":
            lam = ch.m_u * h_u / (1 + ch.m_u**2)
            return lam, self.model.law.posterior_mean(h_v, ch.m_v, ch.s2)
        lam, nu, _ = self._grid_posterior(h_u, h_v, ch)
        return lam, nu

    def _grid_posterior(self, h_u, h_v, ch: GaussianChannels):
        """(E[lambda | h], E[nu | h], log p(h)) on the joint latent grid, chunked over the batch."""
        lam, nu, w = self.model.latents.grid(self.n_lambda)
        lam, nu = lam.to(h_u.device, h_u.dtype), nu.to(h_u.device, h_u.dtype)
        log_prior = torch.log(w).to(h_u.device, h_u.dtype)  # (L, N); -inf where P(nu | lambda) = 0
        log_norm = -math.log(2 * math.pi) - 0.5 * math.log(ch.s2)
        chunk = max(1, _GRID_ELEMENTS // log_prior.numel())
        out_lam, out_nu, out_logp = [], [], []
        for start in range(0, h_u.shape[0], chunk):
            hu, hv = h_u[start:start + chunk, None, None], h_v[start:start + chunk, None, None]
            logits = log_prior - 0.5 * (hu - ch.m_u * lam[:, None]) ** 2 - (hv - ch.m_v * nu) ** 2 / (2 * ch.s2)
            flat = logits.flatten(1)
            post = torch.softmax(flat, dim=1).view_as(logits)
            out_lam.append((post.sum(2) * lam).sum(1))
            out_nu.append((post.sum(1) * nu).sum(1))
            out_logp.append(torch.logsumexp(flat, dim=1) + log_norm)
        return torch.cat(out_lam), torch.cat(out_nu), torch.cat(out_logp)

    def projection_means(self, h_u: torch.Tensor, h_v: torch.Tensor, t: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(E[u.x0 | h], E[v.x0 | h]) from the formulas of the module docstring."""
        ch = GaussianChannels.of(self.model, t)
        lam, nu = self.latent_posterior_means(h_u, h_v, t)
        p_u = ch.a * h_u + ch.delta * math.sqrt(self.model.beta_u) * lam
        return p_u, v_posterior_mean(h_v, nu, self.model.beta_v, t)

    def __call__(self, x_t: torch.Tensor, t: float) -> torch.Tensor:
        """E[x0 | x_t] for x_t of shape (B, d)."""
        ch = GaussianChannels.of(self.model, t)
        u, v, m = self.model.spike_vectors(x_t.dtype, x_t.device)
        h_u, h_v, h_m = x_t @ u, x_t @ v, x_t @ m
        p_u, p_v = self.projection_means(h_u, h_v, t)
        beta_m = self.model.beta_m
        p_m = beta_m + ch.a * (h_m - ch.a * beta_m)
        perp = x_t - h_u[:, None] * u - h_v[:, None] * v - h_m[:, None] * m
        return ch.a * perp + p_u[:, None] * u + p_v[:, None] * v + p_m[:, None] * m


def _posterior_latent_variances(model: MixedCumulantModel, t: float, n_noise: int) -> tuple[float, float]:
    """E_h Var(lambda | h) and E_h Var(nu | h) by quadrature.

    E_h Var(X | h) = E[X^2] - E_h[E[X | h]^2]. Independent latents: the outer expectation runs over the
    law's nodes and Gauss-Hermite nodes of h_v = m_v nu + sqrt(s2) g (Var(lambda | h_u) is closed form).
    Coupled latents: Gauss-Legendre panels in (h_u, h_v), one channel standard deviation wide, weighted
    by the mixture density p(h) = sum_latents W N(h_u; m_u lambda, 1) N(h_v; m_v nu, s2).
    """
    ch = GaussianChannels.of(model, t)
    den = MCMBayesDenoiser(model)
    g, wg = gauss_hermite(n_noise)
    if model.latents.coupling == "independent":
        nu, w_nu = model.law.quadrature()
        h_v = (ch.m_v * nu[:, None] + math.sqrt(ch.s2) * g[None, :]).flatten()
        post_nu = model.law.posterior_mean(h_v, ch.m_v, ch.s2)
        e_nu2 = float((w_nu * nu**2).sum())
        var_nu = e_nu2 - float(((w_nu[:, None] * wg[None, :]).flatten() * post_nu**2).sum())
        return 1 / (1 + ch.m_u**2), var_nu
    # coupled: integrate over h on a tensor grid, weighting by the mixture density p(h) of the channels
    lam, nu, w = model.latents.grid(den.n_lambda)
    reach_u = ch.m_u * float(lam.abs().max()) + 9.0
    reach_v = ch.m_v * float(nu.abs().max()) + 9.0 * math.sqrt(ch.s2)
    hu, wu = composite_legendre(torch.linspace(-reach_u, reach_u, 2 * math.ceil(reach_u) + 1, dtype=torch.float64).tolist(), 8)
    hv, wv = composite_legendre(torch.linspace(-reach_v, reach_v, 2 * math.ceil(reach_v / math.sqrt(ch.s2)) + 1,
                                               dtype=torch.float64).tolist(), 8)
    h_u, h_v = torch.meshgrid(hu, hv, indexing="ij")
    post_lam, post_nu, log_p = den._grid_posterior(h_u.flatten(), h_v.flatten(), ch)
    mass = (wu[:, None] * wv[None, :]).flatten() * torch.exp(log_p)
    var_lam = float((w.sum(1) * lam**2).sum()) - float((mass * post_lam**2).sum())
    var_nu = float((w.sum(0) * nu**2).sum()) - float((mass * post_nu**2).sum())
    return var_lam, var_nu


def per_direction_mse(model: MixedCumulantModel, t: float, n_noise: int = 48) -> dict[str, dict[str, float]]:
    """Mean squared error along u and along v of the Bayes-optimal and of the Wiener denoiser.

    Bayes (exact decomposition over the latents, no sampling):
        MSE_u = Delta + Delta^2 beta_u E_h Var(lambda | h)
        MSE_v = Delta / ((1+beta_v) s2) + b^2 (Delta/s2)^2 E_h Var(nu | h)
    Wiener: diagonal of the Gaussian posterior covariance Delta Sigma (a^2 Sigma + Delta I)^-1 on the
    (u, v) block Sigma = [[1+beta_u, c_uv], [c_uv, 1]] (an affine denoiser's MSE depends only on the
    first two moments). Returns {"u": {"bayes", "linear"}, "v": {"bayes", "linear"}}, all finite.
    ConfigError unless t is in THEORY_T_RANGE and beta_u, beta_v <= THEORY_BETA_MAX (checked before any work).
    """
    check_theory_time(t)
    check_theory_beta("beta_u", model.beta_u)
    check_theory_beta("beta_v", model.beta_v)
    ch = GaussianChannels.of(model, t)
    var_lam, var_nu = _posterior_latent_variances(model, t, n_noise)
    bayes_u = ch.delta + ch.delta**2 * model.beta_u * var_lam
    bayes_v = ch.delta / ((1 + model.beta_v) * ch.s2) + model.v_signal**2 * (ch.delta / ch.s2) ** 2 * var_nu
    block = torch.tensor([[1 + model.beta_u, model.c_uv], [model.c_uv, 1.0]], dtype=torch.float64)
    post = WienerDenoiser(torch.zeros(2, dtype=torch.float64), block, ridge_factor=0.0).posterior_covariance(
        ch.a, math.sqrt(ch.delta))
    return {"u": {"bayes": bayes_u, "linear": float(post[0, 0])},
            "v": {"bayes": bayes_v, "linear": float(post[1, 1])}}
