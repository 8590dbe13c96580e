"""Gaussian mixtures with exact oracles (docs/theory/generalization.md, "A CPU-sized demonstration that works").

    p(x0) = sum_k w_k N(x0; mu_k, C_k),   k = 1..K,  x0 in R^d

Under the forward process x_t = a x0 + s xi, xi ~ N(0, I_d), a mixture stays a mixture,

    p_t(x_t) = sum_k w_k N(x_t; a mu_k, a^2 C_k + s^2 I),

and the posterior mean, score and eps-predictor are exact:

    E[x0 | x_t] = sum_k r_k(x_t) [mu_k + a C_k (a^2 C_k + s^2 I)^{-1} (x_t - a mu_k)],
    r_k(x_t)    = w_k N(x_t; a mu_k, a^2 C_k + s^2 I) / p_t(x_t),
    score(x_t)  = grad log p_t(x_t) = (a E[x0 | x_t] - x_t) / s^2,
    eps*(x_t)   = E[xi | x_t] = (x_t - a E[x0 | x_t]) / s.

:func:`random_mixture` builds the demonstration's data law: means ~ N(0, I_d), covariances
R diag(lambda) R^T with R a random rotation and lambda_i proportional to 1/i^p, optionally mapped by
the affine whitening x -> Sigma^{-1/2} (x - m) so that the mixture has mean 0 and covariance I.
Everything is computed in float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from easyhard._validate import ConfigError, check_int_at_least, check_nonnegative, check_positive

_SUM_TOL = 1e-9  # |sum_k w_k - 1| allowed
_SYM_TOL = 1e-9  # max |C - C^T| allowed, relative to max |C|


def _as_float64(name: str, value) -> Tensor:
    """A float64 tensor copy of ``value``; non-finite entries raise ConfigError."""
    tensor = torch.as_tensor(value).to(torch.float64)
    if not torch.isfinite(tensor).all():
        raise ConfigError(f"{name} must contain only finite numbers")
    return tensor


def _symmetrize(mats: Tensor) -> Tensor:
    """(M + M^T) / 2 over the last two axes."""
    return 0.5 * (mats + mats.mT)


@dataclass(frozen=True, eq=False)
class GaussianMixture:
    """p(x) = sum_k w_k N(x; mu_k, C_k), stored in float64.

    weights: (K,) positive, summing to 1; means: (K, d); covariances: (K, d, d) symmetric
    positive definite. Inputs are copied to float64; a shape or value error raises ConfigError.
    """

    weights: Tensor
    means: Tensor
    covariances: Tensor

    def __post_init__(self):
        weights = _as_float64("weights", self.weights)
        means = _as_float64("means", self.means)
        covs = _as_float64("covariances", self.covariances)
        if weights.ndim != 1 or weights.shape[0] < 1:
            raise ConfigError(f"weights must have shape (K,) with K >= 1 (got {tuple(weights.shape)})")
        k = weights.shape[0]
        if means.ndim != 2 or means.shape[0] != k or means.shape[1] < 1:
            raise ConfigError(f"means must have shape ({k}, d) with d >= 1 (got {tuple(means.shape)})")
        d = means.shape[1]
        if covs.shape != (k, d, d):
            raise ConfigError(f"covariances must have shape ({k}, {d}, {d}) (got {tuple(covs.shape)})")
        if not (weights > 0).all():
            raise ConfigError(f"weights must all be > 0 (got min {weights.min().item():g})")
        if abs(weights.sum().item() - 1) > _SUM_TOL:
            raise ConfigError(f"weights must sum to 1 (got {weights.sum().item():.12g})")
        scale = covs.abs().amax().clamp_min(1e-300)
        if (covs - covs.mT).abs().amax() > _SYM_TOL * scale:
            raise ConfigError("covariances must be symmetric (each C_k = C_k^T)")
        _, info = torch.linalg.cholesky_ex(covs)
        if (info != 0).any():
            bad = int(torch.nonzero(info)[0, 0])
            raise ConfigError(f"covariances must be positive definite (component {bad} is not)")
        object.__setattr__(self, "weights", weights)
        object.__setattr__(self, "means", means)
        object.__setattr__(self, "covariances", _symmetrize(covs))

    @property
    def d(self) -> int:
        """Dimension d."""
        return self.means.shape[1]

    @property
    def K(self) -> int:  # noqa: N802 (the paper's symbol)
        """Number of components K."""
        return self.weights.shape[0]

    # ----- moments -----------------------------------------------------------------------------
    def mean(self) -> Tensor:
        """m = sum_k w_k mu_k, shape (d,)."""
        return self.weights @ self.means

    def covariance(self) -> Tensor:
        """Sigma = sum_k w_k (C_k + mu_k mu_k^T) - m m^T, shape (d, d)."""
        m = self.mean()
        second = torch.einsum("k,kij->ij", self.weights, self.covariances)
        second = second + torch.einsum("k,ki,kj->ij", self.weights, self.means, self.means)
        return _symmetrize(second - torch.outer(m, m))

    def affine(self, matrix: Tensor, shift: Tensor) -> GaussianMixture:
        """Law of y = A x + b: weights w_k, means A mu_k + b, covariances A C_k A^T. A: (d', d), b: (d',)."""
        matrix = _as_float64("matrix", matrix)
        shift = _as_float64("shift", shift)
        if matrix.ndim != 2 or matrix.shape[1] != self.d or shift.shape != (matrix.shape[0],):
            raise ConfigError(f"matrix must have shape (d', {self.d}) and shift shape (d',) "
                              f"(got {tuple(matrix.shape)} and {tuple(shift.shape)})")
        covs = _symmetrize(matrix @ self.covariances @ matrix.T)
        return GaussianMixture(self.weights, self.means @ matrix.T + shift, covs)

    # ----- sampling ----------------------------------------------------------------------------
    def sample(self, n: int, generator: torch.Generator | None = None, return_labels: bool = False):
        """n draws x = mu_c + L_c z, c ~ Categorical(w), z ~ N(0, I_d), L_c L_c^T = C_c.

        Returns x: (n, d) float64, and with ``return_labels`` also the components c: (n,) int64.
        All randomness comes from ``generator``.
        """
        n = check_int_at_least("n", n, 1)
        labels = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn((n, self.d), generator=generator, dtype=torch.float64)
        chol = torch.linalg.cholesky(self.covariances)
        x = torch.empty((n, self.d), dtype=torch.float64)
        for k in range(self.K):
            rows = labels == k
            x[rows] = self.means[k] + z[rows] @ chol[k].T
        return (x, labels) if return_labels else x

    # ----- densities ---------------------------------------------------------------------------
    def _check_points(self, name: str, x: Tensor) -> Tensor:
        """x: (B, d) floating tensor -> float64 on the parameters' device."""
        if not isinstance(x, Tensor) or x.ndim != 2 or x.shape[1] != self.d:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ConfigError(f"{name} must be a tensor of shape (B, {self.d}) (got {shape})")
        return x.to(self.means.device, torch.float64)

    def _component_log_probs(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """log w_k + log N(x_b; mu_k, C_k) as (K, B), with the Cholesky factors L (K, d, d) and x - mu (K, d, B)."""
        chol = torch.linalg.cholesky(self.covariances)
        diff = (x[None, :, :] - self.means[:, None, :]).mT  # (K, d, B)
        white = torch.linalg.solve_triangular(chol, diff, upper=False)
        maha = (white**2).sum(dim=1)  # (K, B)
        logdet = 2 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(dim=-1)  # (K,)
        log_norm = -0.5 * (logdet + self.d * math.log(2 * math.pi))
        return torch.log(self.weights)[:, None] + log_norm[:, None] - 0.5 * maha, chol, diff

    def log_prob(self, x: Tensor) -> Tensor:
        """log p(x) = logsumexp_k [log w_k - (d log 2pi + log det C_k + |L_k^{-1}(x - mu_k)|^2) / 2].

        x: (B, d); returns (B,) float64. Differentiable in x.
        """
        x = self._check_points("x", x)
        comp, _, _ = self._component_log_probs(x)
        return torch.logsumexp(comp, dim=0)

    # ----- the noised law and its oracles --------------------------------------------------------
    def noised(self, a: float, s: float) -> GaussianMixture:
        """Law of x_t = a x0 + s xi: weights w_k, means a mu_k, covariances a^2 C_k + s^2 I."""
        a, s = check_positive("a", a), check_positive("s", s)
        eye = torch.eye(self.d, dtype=torch.float64, device=self.means.device)
        return GaussianMixture(self.weights, a * self.means, a**2 * self.covariances + s**2 * eye)

    def posterior_mean(self, x_t: Tensor, a: float, s: float) -> Tensor:
        """E[x0 | x_t] = sum_k r_k(x_t) [mu_k + a C_k (a^2 C_k + s^2 I)^{-1} (x_t - a mu_k)].

        r_k = softmax_k(log w_k + log N(x_t; a mu_k, a^2 C_k + s^2 I)). x_t: (B, d); returns (B, d) float64.
        As a :class:`~easyhard.diffusion.Denoiser` (float levels): ``CoefficientDenoiser(mixture.posterior_mean)``.
        """
        x_t = self._check_points("x_t", x_t)
        noisy = self.noised(a, s)
        comp, chol, diff = noisy._component_log_probs(x_t)  # diff = x_t - a mu_k: (K, d, B)
        resp = torch.softmax(comp, dim=0)  # (K, B)
        solved = torch.cholesky_solve(diff, chol)  # (a^2 C_k + s^2 I)^{-1} (x_t - a mu_k)
        cond = self.means[:, :, None] + float(a) * (self.covariances @ solved)  # (K, d, B)
        return torch.einsum("kb,kdb->bd", resp, cond)

    def score(self, x_t: Tensor, a: float, s: float) -> Tensor:
        """grad log p_t(x_t) = (a E[x0 | x_t] - x_t) / s^2 (Tweedie). x_t: (B, d); returns (B, d)."""
        x_t = self._check_points("x_t", x_t)
        return (float(a) * self.posterior_mean(x_t, a, s) - x_t) / float(s) ** 2

    def eps(self, x_t: Tensor, a: float, s: float) -> Tensor:
        """Exact eps-predictor E[xi | x_t] = (x_t - a E[x0 | x_t]) / s. x_t: (B, d); returns (B, d)."""
        x_t = self._check_points("x_t", x_t)
        return (x_t - float(a) * self.posterior_mean(x_t, a, s)) / float(s)


def _random_rotation(d: int, generator: torch.Generator) -> Tensor:
    """Haar-distributed R in O(d): Q of the QR of a Gaussian matrix, columns signed by diag(R). (d, d)."""
    q, r = torch.linalg.qr(torch.randn((d, d), generator=generator, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


def power_spectrum(d: int, spectrum_power: float, mean_variance: float) -> Tensor:
    """lambda_i = c / i^p, i = 1..d, with c chosen so that mean_i lambda_i = mean_variance. (d,)."""
    d = check_int_at_least("d", d, 1)
    spectrum_power = check_nonnegative("spectrum_power", spectrum_power)
    mean_variance = check_positive("mean_variance", mean_variance)
    lam = torch.arange(1, d + 1, dtype=torch.float64) ** (-spectrum_power)
    return lam * (mean_variance / lam.mean())


def inverse_sqrt(matrix: Tensor) -> Tensor:
    """Symmetric inverse square root V diag(e^{-1/2}) V^T of a symmetric positive definite (d, d) matrix."""
    evals, evecs = torch.linalg.eigh(matrix)
    if evals.min() <= 0:
        raise ConfigError(f"matrix must be positive definite (smallest eigenvalue {evals.min().item():g})")
    return _symmetrize((evecs * evals.rsqrt()) @ evecs.T)


def random_mixture(d: int = 16, components: int = 8, spectrum_power: float = 1.0, mean_variance: float = 0.25,
                   seed: int = 0, standardize: bool = True) -> GaussianMixture:
    """Equal-weight mixture: mu_k ~ N(0, I_d), C_k = R_k diag(lambda) R_k^T, lambda_i = c / i^p.

    c makes mean_i lambda_i = mean_variance; R_k are independent random rotations. With
    ``standardize`` the mixture is mapped by x -> Sigma^{-1/2} (x - m) (m, Sigma its mean and total
    covariance), after which it has mean 0 and covariance I: means Sigma^{-1/2} (mu_k - m),
    covariances Sigma^{-1/2} C_k Sigma^{-1/2}.
    All randomness comes from ``torch.Generator().manual_seed(seed)``.
    """
    d = check_int_at_least("d", d, 1)
    components = check_int_at_least("components", components, 1)
    seed = check_int_at_least("seed", seed, 0)
    lam = power_spectrum(d, spectrum_power, mean_variance)
    gen = torch.Generator().manual_seed(seed)
    means = torch.randn((components, d), generator=gen, dtype=torch.float64)
    rotations = torch.stack([_random_rotation(d, gen) for _ in range(components)])
    covs = _symmetrize((rotations * lam) @ rotations.mT)
    weights = torch.full((components,), 1.0 / components, dtype=torch.float64)
    mixture = GaussianMixture(weights, means, covs)
    if not standardize:
        return mixture
    whitening = inverse_sqrt(mixture.covariance())
    return mixture.affine(whitening, -whitening @ mixture.mean())
