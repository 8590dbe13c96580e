"""Wiener (Gaussian / best affine) denoiser for data with mean mu and covariance Sigma.

With x_t = a x0 + s xi and Sigma = U diag(lambda_k) U^T,

    D_G(x_t) = mu + U diag(a lambda_k / (a^2 lambda_k + s^2)) U^T (x_t - a mu)
             = mu + a Sigma (a^2 Sigma + s^2 I)^{-1} (x_t - a mu),

which is E[x0 | x_t] for Gaussian data and the MSE-optimal affine denoiser for any data with
these two moments. Its error depends only on (mu, Sigma):

    posterior covariance  P = Sigma - a^2 Sigma (a^2 Sigma + s^2 I)^{-1} Sigma
                            = s^2 Sigma (a^2 Sigma + s^2 I)^{-1}
                            = U diag(s^2 lambda_k / (a^2 lambda_k + s^2)) U^T,
    x0-MMSE  = tr P = sum_k s^2 lambda_k / (a^2 lambda_k + s^2),
    eps-MMSE = (a^2 / s^2) x0-MMSE = sum_k a^2 lambda_k / (a^2 lambda_k + s^2),

and the x0-MSE along a unit direction e is e^T P e.
"""

from __future__ import annotations

import torch
from torch import Tensor

from easyhard._validate import ConfigError, check_int_at_least, check_nonnegative
from easyhard.diffusion.ou import Coefficient, check_positive_coefficient
from easyhard.diffusion.parametrization import x0_to_score

_MIN_RTOL = 1e-5


def _round_off_rtol(dtype: torch.dtype, d: int) -> float:
    """Relative tolerance for symmetry and negative eigenvalues: max(1e-5, 10 d eps(dtype))."""
    return max(_MIN_RTOL, 10 * d * torch.finfo(dtype).eps)


def _column(name: str, value: Coefficient, device: torch.device) -> Tensor:
    """A float or a (B,) tensor as float64: 0-dim for a float, (B, 1) for a (B,) tensor."""
    value = torch.as_tensor(check_positive_coefficient(name, value), dtype=torch.float64, device=device)
    if value.ndim > 1:
        raise ConfigError(f"{name} must be a float or a tensor of shape (B,) (got shape {tuple(value.shape)})")
    return value.unsqueeze(-1) if value.ndim == 1 else value


class WienerDenoiser:
    """Gaussian denoiser D_G for mean ``mean`` (d,) and covariance ``cov`` (d, d).

    The covariance is eigendecomposed once in float64. Round-off negative eigenvalues are
    clipped to 0; a covariance that is asymmetric or has an eigenvalue below
    -rtol * max|eigenvalue| (rtol = max(1e-5, 10 d eps) for the dtype of ``cov``) is rejected.
    A ridge ``ridge_factor * tr(Sigma) / d`` is then added to every eigenvalue [choice: keeps the
    filter well conditioned for rank-deficient empirical covariances; ``ridge_factor=0``
    disables it]. All formulas use these ridged eigenvalues lambda_k (:attr:`eigenvalues`).
    The stored statistics stay on the device of ``mean``; inputs are moved as needed and outputs
    of :meth:`__call__` follow ``x_t``'s dtype and device. As a :class:`~easyhard.diffusion.Denoiser`
    (x0-prediction, inputs (B, ...) flattened): ``CoefficientDenoiser(wiener)``.
    """

    def __init__(self, mean: Tensor, cov: Tensor, ridge_factor: float = 1e-6) -> None:
        if mean.ndim != 1 or not mean.is_floating_point():
            raise ConfigError(f"mean must be a floating tensor of shape (d,) (got shape {tuple(mean.shape)})")
        d = mean.shape[0]
        check_int_at_least("mean dimension d", d, 1)
        if cov.shape != (d, d) or not cov.is_floating_point():
            raise ConfigError(f"cov must be a floating tensor of shape ({d}, {d}) matching mean "
                              f"(got shape {tuple(cov.shape)})")
        if not bool(torch.isfinite(mean).all()) or not bool(torch.isfinite(cov).all()):
            raise ConfigError("mean and cov must contain only finite values")
        self.ridge_factor = check_nonnegative("ridge_factor", ridge_factor)
        rtol = _round_off_rtol(cov.dtype, d)
        cov = cov.to(dtype=torch.float64, device=mean.device)
        if float((cov - cov.T).abs().max()) > rtol * float(cov.abs().max()):
            raise ConfigError(f"cov must be symmetric (|cov - cov^T| <= {rtol:.1e} max|cov|)")
        eigenvalues, self._eigenvectors = torch.linalg.eigh(0.5 * (cov + cov.T))
        if float(eigenvalues.min()) < -rtol * float(eigenvalues.abs().max()):
            raise ConfigError(f"cov must be positive semi-definite (smallest eigenvalue "
                              f"{float(eigenvalues.min()):g})")
        self.ridge = self.ridge_factor * float(torch.trace(cov)) / d
        self._eigenvalues = eigenvalues.clamp(min=0) + self.ridge
        self._mean = mean.to(torch.float64)

    @classmethod
    def from_samples(cls, x: Tensor, ridge_factor: float = 1e-6) -> WienerDenoiser:
        """Denoiser for the empirical mean and covariance of samples x (n, d).

        The covariance is that of the empirical measure, (1/n) sum_mu (x_mu - m)(x_mu - m)^T
        [choice: divides by n, not n - 1], computed in float64.
        """
        if x.ndim != 2 or x.shape[0] < 1 or not x.is_floating_point():
            raise ConfigError(f"x must be a floating tensor of shape (n, d) with n >= 1 (got shape {tuple(x.shape)})")
        x = x.to(torch.float64)
        mean = x.mean(dim=0)
        centred = x - mean
        return cls(mean, centred.T @ centred / x.shape[0], ridge_factor)

    # ----------------------------------------------------------------- statistics
    @property
    def dim(self) -> int:
        return self._mean.shape[0]

    @property
    def mean(self) -> Tensor:
        """mu, float64 (d,)."""
        return self._mean.clone()

    @property
    def eigenvalues(self) -> Tensor:
        """Clipped and ridged eigenvalues lambda_k (ascending), float64 (d,)."""
        return self._eigenvalues.clone()

    @property
    def eigenvectors(self) -> Tensor:
        """U, float64 (d, d); column k belongs to eigenvalue lambda_k."""
        return self._eigenvectors.clone()

    @property
    def covariance(self) -> Tensor:
        """The covariance actually used, U diag(lambda_k) U^T, float64 (d, d)."""
        return (self._eigenvectors * self._eigenvalues) @ self._eigenvectors.T

    # ----------------------------------------------------------------- denoiser
    def __call__(self, x_t: Tensor, a: Coefficient, s: Coefficient) -> Tensor:
        """D_G(x_t) = mu + U diag(a lambda_k / (a^2 lambda_k + s^2)) U^T (x_t - a mu).

        x_t: (B, d); a, s: floats or per-sample tensors of shape (B,). Returns (B, d) in x_t's
        dtype and device.
        """
        if x_t.ndim != 2 or x_t.shape[1] != self.dim or not x_t.is_floating_point():
            raise ConfigError(f"x_t must be a floating tensor of shape (B, {self.dim}) "
                              f"(got {x_t.dtype} of shape {tuple(x_t.shape)})")
        a_col, s_col = _column("a", a, x_t.device), _column("s", s, x_t.device)
        for name, value in (("a", a_col), ("s", s_col)):
            if value.ndim == 2 and value.shape[0] != x_t.shape[0]:
                raise ConfigError(f"{name} must have shape ({x_t.shape[0]},) to match x_t "
                                  f"(got ({value.shape[0]},))")
        lam = self._eigenvalues.to(x_t.device)
        gains = (a_col * lam / (a_col**2 * lam + s_col**2)).to(x_t.dtype)
        eigenvectors = self._eigenvectors.to(device=x_t.device, dtype=x_t.dtype)
        mean = self._mean.to(device=x_t.device, dtype=x_t.dtype)
        centred = x_t - a_col.to(x_t.dtype) * mean
        return mean + ((centred @ eigenvectors) * gains) @ eigenvectors.T

    def score(self, x_t: Tensor, a: Coefficient, s: Coefficient) -> Tensor:
        """Gaussian score (a D_G(x_t) - x_t) / s^2, shape (B, d)."""
        return x0_to_score(self(x_t, a, s), x_t, a, s)

    # ----------------------------------------------------------------- errors
    def _posterior_variances(self, a: Coefficient, s: Coefficient) -> Tensor:
        """s^2 lambda_k / (a^2 lambda_k + s^2): (d,) for floats, (B, d) for (B,) tensors."""
        device = self._eigenvalues.device
        a, s = _column("a", a, device), _column("s", s, device)
        return s**2 * self._eigenvalues / (a**2 * self._eigenvalues + s**2)

    def posterior_covariance(self, a: Coefficient, s: Coefficient) -> Tensor:
        """P = s^2 Sigma (a^2 Sigma + s^2 I)^{-1} = U diag(s^2 lambda_k / (a^2 lambda_k + s^2)) U^T.

        float64, (d, d) for float a, s or (B, d, d) for (B,) tensors. The x0-MSE of D_G along a
        unit direction e is e^T P e.
        """
        variances = self._posterior_variances(a, s)
        return (self._eigenvectors * variances.unsqueeze(-2)) @ self._eigenvectors.T

    def mmse_x0(self, a: Coefficient, s: Coefficient) -> Tensor:
        """x0-MMSE = E||D_G(x_t) - x0||^2 = sum_k s^2 lambda_k / (a^2 lambda_k + s^2).

        float64, shape () for float a, s or (B,) for (B,) tensors.
        """
        return self._posterior_variances(a, s).sum(dim=-1)

    def mmse_eps(self, a: Coefficient, s: Coefficient) -> Tensor:
        """eps-MMSE = sum_k a^2 lambda_k / (a^2 lambda_k + s^2) = (a^2 / s^2) x0-MMSE.

        float64, shape () for float a, s or (B,) for (B,) tensors.
        """
        device = self._eigenvalues.device
        a, s = _column("a", a, device), _column("s", s, device)
        return (a**2 * self._eigenvalues / (a**2 * self._eigenvalues + s**2)).sum(dim=-1)
