"""Metrics of the distributional-simplicity protocols (docs/theory/images.md sections 2, 4, 5, 6, 9).

All functions take batches (n, ...) that are flattened to (n, d) and evaluated in float64.

- Gaussian MMSE per noise level (docs/theory/images.md section 2.2) and eps-losses of any denoiser
  (:class:`~easyhard.diffusion.Denoiser`) with noise fixed per (sample, index) (common random numbers,
  docs/theory/images.md section 1), distance to the Wiener denoiser (docs/theory/images.md section 4).
- Generated-sample statistics against reference moments (docs/theory/images.md section 5): mean, covariance and per-mode
  variance errors.
- Higher-order statistics along a fixed ICA filter bank (docs/theory/images.md sections 2.3, 9): sparsity ratio
  E|s| / sqrt(E s^2), excess kurtosis, skewness, and their normalised errors, plus sampling floors.
- Convergence steps by the 90%-of-decrease rule (docs/theory/images.md sections 5, 9) and the spectral emergence of PCA
  modes with the fitted law tau_k ~ lambda_k^-beta (docs/theory/images.md section 6).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import Tensor

from easyhard._validate import ConfigError, check_int_at_least
from easyhard.diffusion.ddpm import DDPMSchedule
from easyhard.diffusion.denoiser import Denoiser, NoiseLevel, as_denoiser, predict_eps
from easyhard.metrics.bootstrap import bootstrap_replicates, check_level, percentile_interval
from easyhard.metrics.scaling import log_log_fit

#: E|z| / sqrt(E z^2) = sqrt(2 / pi) for a Gaussian z.
GAUSSIAN_SPARSITY = math.sqrt(2 / math.pi)

#: a :class:`~easyhard.diffusion.Denoiser`, or a plain callable ``f(x_t, i) -> eps_hat`` at an int step index
EpsPredictor = Denoiser | Callable[[Tensor, int], Tensor]


def _flat(name: str, x: Tensor, min_n: int = 1) -> Tensor:
    """(n, ...) floating tensor -> (n, d) float64, with n >= min_n and finite values."""
    if not isinstance(x, Tensor) or x.ndim < 2 or not x.is_floating_point():
        raise ConfigError(f"{name} must be a floating tensor of shape (n, ...) with ndim >= 2")
    if x.shape[0] < min_n:
        raise ConfigError(f"{name} must hold at least {min_n} samples (got {x.shape[0]})")
    x = x.reshape(x.shape[0], -1).to(torch.float64)
    if not bool(torch.isfinite(x).all()):
        raise ConfigError(f"{name} must contain only finite values")
    return x


# ============================================================================ section 2.2: Gaussian MMSE
def gaussian_mmse_eps(eigenvalues: Tensor, abar: float | Tensor) -> float | Tensor:
    """Gaussian eps-MMSE per pixel, L_G = (1/d) sum_k abar lambda_k / (abar lambda_k + 1 - abar) (docs/theory/images.md section 2.2).

    eigenvalues: (d,) covariance eigenvalues (round-off negatives clipped to 0); abar: a float in (0, 1)
    (returns a float) or a tensor (m,) of such values (returns float64 (m,)). Equals
    ``WienerDenoiser.mmse_eps(sqrt(abar), sqrt(1 - abar)) / d``, which is a sum over modes.
    """
    lam = torch.as_tensor(eigenvalues, dtype=torch.float64).cpu()
    if lam.ndim != 1 or lam.numel() == 0 or not bool(torch.isfinite(lam).all()):
        raise ConfigError("eigenvalues must be a finite tensor of shape (d,) with d >= 1")
    if float(lam.min()) < -1e-8 * max(float(lam.abs().max()), 1e-300):
        raise ConfigError(f"eigenvalues must be non-negative (got {float(lam.min()):g})")
    lam = lam.clamp(min=0)
    scalar = not isinstance(abar, Tensor)
    ab = torch.as_tensor(abar, dtype=torch.float64).cpu().reshape(-1)
    if ab.numel() == 0 or not bool(((ab > 0) & (ab < 1)).all()):
        raise ConfigError("abar must lie in (0, 1)")
    ab = ab.unsqueeze(-1)
    loss = (ab * lam / (ab * lam + 1 - ab)).mean(dim=-1)
    return float(loss[0]) if scalar else loss


# ============================================================================ sections 1, 4: eps-losses
def fixed_noise(n: int, d: int, index: int, seed: int = 0) -> Tensor:
    """Standard normal noise (n, d) float64 (CPU), a fixed function of (seed, index) (common random numbers).

    The generator is seeded from ``numpy.random.SeedSequence([seed, index])``, so every checkpoint and
    model evaluated with the same seed sees the same noise for sample mu at index i [choice].
    """
    check_int_at_least("n", n, 1)
    check_int_at_least("d", d, 1)
    check_int_at_least("index", index, 0)
    check_int_at_least("seed", seed, 0)
    state = int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1, np.uint64)[0])
    generator = torch.Generator().manual_seed(state)
    return torch.randn(n, d, dtype=torch.float64, generator=generator)


def _noisy_batches(x0: Tensor, schedule: DDPMSchedule, index: int, seed: int, batch_size: int):
    """Yield (x_t in x0's shape/dtype/device, x_t float64 (B, d), eps float64 (B, d)) at step ``index``."""
    flat = _flat("x0", x0)
    n, d = flat.shape
    a, s = schedule.coefficients(int(index))
    eps = fixed_noise(n, d, int(index), seed).to(flat.device)
    for start in range(0, n, batch_size):
        e = eps[start:start + batch_size]
        x_t = a * flat[start:start + batch_size] + s * e
        yield x_t.to(x0.dtype).reshape(-1, *x0.shape[1:]), x_t, e


def _predict(denoiser: Denoiser, x_t: Tensor, schedule: DDPMSchedule, i: int) -> Tensor:
    """eps_hat (B, d) float64 of ``denoiser`` at step i."""
    out = predict_eps(denoiser, x_t, NoiseLevel.at_index(schedule, i))
    if not isinstance(out, Tensor) or out.numel() != x_t.numel():
        raise ConfigError(f"predict_eps must return a tensor with as many elements as x_t {tuple(x_t.shape)}")
    return out.reshape(x_t.shape[0], -1).to(device=x_t.device, dtype=torch.float64)


def _check_indices(indices: Sequence[int]) -> list[int]:
    indices = [int(i) for i in indices]
    if not indices:
        raise ConfigError("indices must hold at least one step index")
    return indices


def eps_loss(eps_hat: Tensor, eps: Tensor) -> Tensor:
    """Mean eps-MSE per pixel over the last two axes (points mu, pixels): (1/(n d)) sum_mu ||eps_hat_mu - eps_mu||^2,
    (..., n, d) -> float64 (...). Leading axes (ensemble members, noise levels) are kept and broadcast, e.g.
    eps_hat (E, L, n, d) of E models against the shared noise eps (L, n, d) gives (E, L)."""
    if eps_hat.ndim < 2 or eps_hat.shape[-2:] != eps.shape[-2:]:
        raise ConfigError(f"eps_hat and eps must end in the same (n, d) (got {tuple(eps_hat.shape)} and "
                          f"{tuple(eps.shape)})")
    return ((eps_hat.to(torch.float64) - eps.to(torch.float64)) ** 2).sum((-2, -1)) / (eps.shape[-2] * eps.shape[-1])


@torch.no_grad()
def eps_loss_per_point(predict_eps: EpsPredictor, x0: Tensor, schedule: DDPMSchedule, indices: Sequence[int],
                       seed: int = 0, batch_size: int = 4096) -> Tensor:
    """eps-MSE per pixel of every point at every level, l_mu(i) = (1/d) ||eps_hat(x_i, i) - eps_mu||^2, float64
    (len(indices), n): the per-point terms of :func:`eps_loss_per_level` (their mean over points), for standard
    errors and paired comparisons across checkpoints (the noise is the same for the same seed).

    predict_eps: a Denoiser (read in eps space at ``NoiseLevel.at_index(schedule, i)``) or a callable
    f(x_t, i) -> eps_hat; x_t (B, ...) shaped and typed like x0, eps_hat with B * d elements.
    x_i = sqrt(abar_i) x0 + sqrt(1 - abar_i) eps with eps = :func:`fixed_noise` (n, d, i, seed).
    """
    check_int_at_least("batch_size", batch_size, 1)
    denoiser = as_denoiser(predict_eps)
    out = []
    for i in _check_indices(indices):
        per_batch = [((_predict(denoiser, x_model, schedule, i) - e) ** 2).mean(1)
                     for x_model, _, e in _noisy_batches(x0, schedule, i, seed, batch_size)]
        out.append(torch.cat(per_batch).cpu())
    return torch.stack(out)


def eps_loss_per_level(predict_eps: EpsPredictor, x0: Tensor, schedule: DDPMSchedule, indices: Sequence[int],
                       seed: int = 0, batch_size: int = 4096) -> Tensor:
    """Mean eps-MSE per pixel, L(i) = E_mu (1/d) ||eps_hat(x_i, i) - eps||^2, for each i in ``indices``: the mean
    over points of :func:`eps_loss_per_point` (same arguments). Returns float64 (len(indices),).
    """
    return eps_loss_per_point(predict_eps, x0, schedule, indices, seed, batch_size).mean(1)


@torch.no_grad()
def wiener_distance(predict_eps: EpsPredictor, wiener_eps: EpsPredictor, x0: Tensor, schedule: DDPMSchedule,
                    indices: Sequence[int], seed: int = 0, batch_size: int = 4096) -> Tensor:
    """delta_W(i) = E||eps_hat - eps_hat_G||^2 / E||eps - eps_hat_G||^2 per level (docs/theory/images.md section 4), float64 (len(indices),).

    Both predictors (Denoisers or callables f(x_t, i) -> eps_hat, e.g. ``wiener_eps`` =
    ``CoefficientDenoiser(WienerDenoiser(...))``) see the same fixed noise (:func:`fixed_noise`). For Gaussian
    data and the exact Wiener predictor delta_W = 0; for the Bayes denoiser delta_W = 1 - L*/L_G (Pythagoras).
    """
    check_int_at_least("batch_size", batch_size, 1)
    denoiser, wiener = as_denoiser(predict_eps), as_denoiser(wiener_eps)
    out = []
    for i in _check_indices(indices):
        num, den = 0.0, 0.0
        for x_model, _, eps in _noisy_batches(x0, schedule, i, seed, batch_size):
            gauss = _predict(wiener, x_model, schedule, i)
            num += float(((_predict(denoiser, x_model, schedule, i) - gauss) ** 2).sum())
            den += float(((eps - gauss) ** 2).sum())
        out.append(num / den)
    return torch.tensor(out, dtype=torch.float64)


# ============================================================================ section 5: sample statistics
@dataclass(frozen=True)
class Moments:
    """Reference moments: mean (d,), covariance (d, d) (divides by n - 1), eigenvalues (d,) in
    descending order (clipped at 0) and eigenvectors (d, d) with column k belonging to eigenvalue k."""

    mean: Tensor
    cov: Tensor
    eigenvalues: Tensor
    eigenvectors: Tensor

    @property
    def dim(self) -> int:
        return self.mean.shape[0]


def _covariance(x: Tensor) -> Tensor:
    centred = x - x.mean(0)
    return centred.T @ centred / (x.shape[0] - 1)


def moments(x: Tensor) -> Moments:
    """Empirical :class:`Moments` of samples x (n, ...), n >= 2, in float64."""
    x = _flat("x", x, min_n=2)
    cov = _covariance(x)
    eigenvalues, eigenvectors = torch.linalg.eigh(0.5 * (cov + cov.T))
    return Moments(x.mean(0), cov, eigenvalues.flip(0).clamp(min=0), eigenvectors.flip(1))


def _as_moments(ref: Tensor | Moments) -> Moments:
    return ref if isinstance(ref, Moments) else moments(ref)


def _generated(gen: Tensor, ref: Moments) -> Tensor:
    gen = _flat("gen", gen, min_n=2)
    if gen.shape[1] != ref.dim:
        raise ConfigError(f"gen must have {ref.dim} features per sample like the reference (got {gen.shape[1]})")
    return gen.to(ref.mean.device)


def mean_error(gen: Tensor, ref: Tensor | Moments) -> float:
    """e_mu = ||mu_gen - mu_ref|| / sqrt(tr Sigma_ref) (docs/theory/images.md section 5). gen (n, ...); ref samples or :class:`Moments`."""
    ref = _as_moments(ref)
    gen = _generated(gen, ref)
    return float(torch.linalg.vector_norm(gen.mean(0) - ref.mean) / torch.sqrt(torch.trace(ref.cov)))


def covariance_error(gen: Tensor, ref: Tensor | Moments) -> float:
    """E_Sigma = ||Sigma_gen - Sigma_ref||_F / ||Sigma_ref||_F (docs/theory/images.md section 5)."""
    ref = _as_moments(ref)
    gen = _generated(gen, ref)
    return float(torch.linalg.matrix_norm(_covariance(gen) - ref.cov) / torch.linalg.matrix_norm(ref.cov))


def mode_variances(gen: Tensor, ref: Tensor | Moments) -> Tensor:
    """v_k = u_k^T Sigma_gen u_k for the reference eigenvectors u_k (docs/theory/images.md section 6), descending lambda, float64 (d,)."""
    ref = _as_moments(ref)
    centred = _generated(gen, ref)
    projected = (centred - centred.mean(0)) @ ref.eigenvectors
    return (projected**2).sum(0) / (centred.shape[0] - 1)


def mode_variance_ratios(gen: Tensor, ref: Tensor | Moments) -> Tensor:
    """r_k = u_k^T Sigma_gen u_k / lambda_k (docs/theory/images.md section 5), descending lambda order; NaN where lambda_k = 0."""
    ref = _as_moments(ref)
    lam = ref.eigenvalues
    return mode_variances(gen, ref) / torch.where(lam > 0, lam, torch.nan)


def whitened_mode_error(gen: Tensor, ref: Tensor | Moments, rel_cutoff: float = 1e-6) -> float:
    """E_white = mean_k |r_k - 1| over modes with lambda_k > rel_cutoff * lambda_1 (docs/theory/images.md section 9) [choice].

    Weighs every mode equally, so errors in small-variance modes (e.g. sampler distortions) count as
    much as in the leading ones, unlike E_Sigma which is dominated by the top modes.
    """
    ref = _as_moments(ref)
    keep = ref.eigenvalues > rel_cutoff * ref.eigenvalues[0]
    ratios = mode_variance_ratios(gen, ref)[keep]
    return float((ratios - 1).abs().mean())


# ============================================================================ sections 2.3, 9: ICA statistics
def ica_filters(patches: Tensor, n_components: int = 64, seed: int = 0, max_iter: int = 1000,
                tol: float = 1e-4) -> Tensor:
    """FastICA filters F (J, d) float64 on ZCA-whitened patches (docs/theory/images.md section 2.3): sources s = (x - mu) @ F.T.

    patches (n, ...) with mu their mean; ZCA W = U diag((lambda_k + r)^-1/2) U^T with the ridge
    r = 1e-6 tr(Sigma) / d [choice]; scikit-learn ``FastICA(n_components, whiten="unit-variance",
    random_state=seed)`` on (x - mu) W, so F = components_ W and s_j has unit variance on ``patches``.
    Deterministic for a given seed.
    """
    from sklearn.decomposition import FastICA

    check_int_at_least("seed", seed, 0)
    check_int_at_least("max_iter", max_iter, 1)
    ref = moments(patches)
    x = _flat("patches", patches, min_n=2)
    check_int_at_least("n_components", n_components, 1)
    if n_components > ref.dim:
        raise ConfigError(f"n_components must be at most d = {ref.dim} (got {n_components})")
    lam = ref.eigenvalues + 1e-6 * float(ref.eigenvalues.sum()) / ref.dim
    zca = (ref.eigenvectors * lam.rsqrt()) @ ref.eigenvectors.T
    white = ((x - ref.mean) @ zca).cpu().numpy()
    ica = FastICA(n_components=n_components, whiten="unit-variance", random_state=seed, max_iter=max_iter, tol=tol)
    ica.fit(white)
    return torch.from_numpy(np.asarray(ica.components_, dtype=np.float64)) @ zca.cpu()


def _sources(x: Tensor, filters: Tensor, mu: Tensor) -> Tensor:
    """s = (x - mu) @ F.T, float64 (n, J)."""
    x = _flat("x", x, min_n=2)
    filters = torch.as_tensor(filters, dtype=torch.float64).to(x.device)
    mu = torch.as_tensor(mu, dtype=torch.float64).to(x.device).reshape(-1)
    if filters.ndim != 2 or filters.shape[1] != x.shape[1] or mu.shape != (x.shape[1],):
        raise ConfigError(f"filters must have shape (J, {x.shape[1]}) and mu ({x.shape[1]},) to match x")
    return (x - mu) @ filters.T


def sparsity_ratio(x: Tensor, filters: Tensor, mu: Tensor) -> Tensor:
    """r_j = E|s_j| / sqrt(E s_j^2), s = (x - mu) @ F.T (docs/theory/images.md section 9): sqrt(2/pi) = 0.798 for a Gaussian. (J,)."""
    s = _sources(x, filters, mu)
    return s.abs().mean(0) / (s**2).mean(0).sqrt()


def excess_kurtosis(x: Tensor, filters: Tensor, mu: Tensor) -> Tensor:
    """k4_j = E s_j^4 / (E s_j^2)^2 - 3 along the filters (docs/theory/images.md section 2.3), float64 (J,)."""
    s = _sources(x, filters, mu)
    return (s**4).mean(0) / (s**2).mean(0) ** 2 - 3


def skewness(x: Tensor, filters: Tensor, mu: Tensor) -> Tensor:
    """k3_j = E s_j^3 / (E s_j^2)^(3/2) along the filters (docs/theory/images.md section 2.3), float64 (J,)."""
    s = _sources(x, filters, mu)
    return (s**3).mean(0) / (s**2).mean(0) ** 1.5


def _relative_error(gen_stat: Tensor, ref_stat: Tensor, target: float, name: str) -> float:
    """mean_j |gen_j - ref_j| / mean_j |target - ref_j|."""
    scale = float((target - ref_stat).abs().mean())
    if not scale > 0:
        raise ConfigError(f"{name} is undefined: the reference statistic equals its Gaussian value")
    return float((gen_stat - ref_stat).abs().mean()) / scale


def sparsity_error(gen: Tensor, ref: Tensor, filters: Tensor, mu: Tensor) -> float:
    """E_R = mean_j |r_gen,j - r_ref,j| / mean_j |0.798 - r_ref,j| (docs/theory/images.md section 9): a Gaussian gives ~1, the data ~0."""
    return _relative_error(sparsity_ratio(gen, filters, mu), sparsity_ratio(ref, filters, mu), GAUSSIAN_SPARSITY,
                           "sparsity_error")


def kurtosis_error(gen: Tensor, ref: Tensor, filters: Tensor, mu: Tensor) -> float:
    """E_K = mean_j |k4_gen,j - k4_ref,j| / mean_j |k4_ref,j| (docs/theory/images.md section 5); needs N >= 1e4 (docs/theory/images.md section 9)."""
    return _relative_error(excess_kurtosis(gen, filters, mu), excess_kurtosis(ref, filters, mu), 0.0,
                           "kurtosis_error")


def skewness_error(gen: Tensor, ref: Tensor, filters: Tensor, mu: Tensor) -> float:
    """E_S = mean_j |k3_gen,j - k3_ref,j| / mean_j |k3_ref,j| (docs/theory/images.md section 5)."""
    return _relative_error(skewness(gen, filters, mu), skewness(ref, filters, mu), 0.0, "skewness_error")


def sampling_floor(metric: Callable[[Tensor, Tensor], float], ref_a: Tensor, ref_b: Tensor) -> float:
    """metric(ref_a, ref_b) for two disjoint real sets (docs/theory/images.md section 5): the floor to report next to the metric.

    ``ref_a`` plays the generated set and should have the generated-sample size N_gen; ``ref_b`` is the
    reference used for the generated samples (or one of the same size). Bind extra arguments first,
    e.g. ``functools.partial(sparsity_error, filters=F, mu=mu)``.
    """
    if ref_a.shape[1:] != ref_b.shape[1:]:
        raise ConfigError(f"ref_a and ref_b must have the same sample shape (got {tuple(ref_a.shape[1:])} "
                          f"and {tuple(ref_b.shape[1:])})")
    return float(metric(ref_a, ref_b))


# ============================================================================ sections 5, 9: convergence step
def convergence_step(steps: Sequence[float], values: Sequence[float], fraction: float = 0.9,
                     final_window: int = 3) -> float | None:
    """First checkpoint step where M has completed ``fraction`` of its total decrease (docs/theory/images.md sections 5, 9):

        M(tau) <= M_final + (1 - fraction) (M(tau_0) - M_final),   M_final = mean of the last ``final_window`` values.

    steps (n,) increasing, values (n,) finite. None when the metric does not decrease (M(tau_0) <= M_final).
    """
    steps, values = np.asarray(steps, dtype=float), np.asarray(values, dtype=float)
    check_int_at_least("final_window", final_window, 1)
    if not 0 < fraction < 1:
        raise ConfigError(f"fraction must lie in (0, 1) (got {fraction})")
    if steps.ndim != 1 or steps.shape != values.shape or steps.size < final_window + 1:
        raise ConfigError(f"steps and values must be 1-d of equal length >= final_window + 1 = {final_window + 1}")
    if not (np.isfinite(steps).all() and np.isfinite(values).all()) or (np.diff(steps) <= 0).any():
        raise ConfigError("steps must be finite and strictly increasing and values finite")
    final = values[-final_window:].mean()
    if values[0] <= final:
        return None
    hit = np.flatnonzero(values <= final + (1 - fraction) * (values[0] - final))
    return float(steps[hit[0]])


# ============================================================================ section 6: spectral emergence
def emergence_steps(steps: Sequence[float], mode_variances: np.ndarray | Tensor,
                    eigenvalues: np.ndarray | Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Emergence step tau_k of every PCA mode (docs/theory/images.md section 6): first crossing of the harmonic mean

        H_k = 2 v_k(0) lambda_k / (v_k(0) + lambda_k)

    in the direction from v_k(0) towards lambda_k, v_k(0) the value at the first checkpoint.
    Between checkpoints the crossing is interpolated linearly in log(step) (linearly in step when the
    earlier checkpoint is step 0) [choice]. A mode with v_k(0) = lambda_k emerges at steps[0].

    steps (n_ckpt,) increasing and >= 0; mode_variances (n_ckpt, K); eigenvalues (K,) > 0.
    Returns (tau (K,) float, NaN for censored modes; crossed (K,) bool). Censored modes are kept.
    """
    steps = np.asarray(steps, dtype=float)
    v = np.asarray(mode_variances, dtype=float)
    lam = np.asarray(eigenvalues, dtype=float)
    if steps.ndim != 1 or steps.size < 2 or (np.diff(steps) <= 0).any() or steps[0] < 0:
        raise ConfigError("steps must be 1-d, non-negative and strictly increasing with at least 2 checkpoints")
    if v.ndim != 2 or v.shape[0] != steps.size or lam.shape != (v.shape[1],):
        raise ConfigError(f"mode_variances must have shape ({steps.size}, K) and eigenvalues (K,)")
    if not (np.isfinite(v).all() and (v >= 0).all() and np.isfinite(lam).all() and (lam > 0).all()):
        raise ConfigError("mode_variances must be finite and >= 0, eigenvalues finite and > 0")
    v0 = v[0]
    harmonic = 2 * v0 * lam / (v0 + lam)
    direction = np.sign(lam - v0)
    gap = (v - harmonic) * direction  # < 0 before the crossing, >= 0 at and after it
    tau = np.full(lam.shape, np.nan)
    crossed = np.zeros(lam.shape, dtype=bool)
    for k in range(lam.size):
        if direction[k] == 0:
            tau[k], crossed[k] = steps[0], True
            continue
        hits = np.flatnonzero(gap[1:, k] >= 0)
        if hits.size == 0:
            continue
        j = hits[0] + 1
        frac = gap[j - 1, k] / (gap[j - 1, k] - gap[j, k])
        if steps[j - 1] > 0:
            tau[k] = math.exp(math.log(steps[j - 1]) + frac * (math.log(steps[j]) - math.log(steps[j - 1])))
        else:
            tau[k] = steps[j - 1] + frac * (steps[j] - steps[j - 1])
        crossed[k] = True
    return tau, crossed


@dataclass(frozen=True)
class EmergenceFit:
    """log tau_k = intercept - beta log lambda_k fitted over the eligible, crossed modes (docs/theory/images.md section 6).

    eligible: modes with lambda_k > rel_cutoff lambda_1 among the top ``max_modes``; used: eligible
    modes that crossed with tau_k > 0; censored: eligible modes that never crossed (not in the fit, so
    a censored tail biases beta down: report it). interval: bootstrap percentile interval over modes;
    failed: bootstrap replicates with a degenerate design (all resampled lambda equal), dropped.
    """

    beta: float
    intercept: float
    interval: tuple[float, float]
    n_eligible: int
    n_used: int
    n_censored: int
    n_boot: int
    failed: int

    def to_dict(self) -> dict:
        return asdict(self)


def emergence_law(tau: np.ndarray, eigenvalues: np.ndarray, n_boot: int = 1000, seed: int = 0,
                  rel_cutoff: float = 1e-3, max_modes: int = 512, level: float = 0.95) -> EmergenceFit:
    """Fit log tau_k = a - beta log lambda_k by least squares (docs/theory/images.md section 6;
    :func:`~easyhard.metrics.log_log_fit`) with a percentile bootstrap interval over modes
    (:func:`~easyhard.metrics.bootstrap_replicates`).

    tau (K,) from :func:`emergence_steps` (NaN = censored); eigenvalues (K,) > 0 in any order. Eligible
    modes: lambda_k > rel_cutoff * lambda_1, at most the top ``max_modes``. beta ~ 1 is the
    inverse-variance law.
    """
    tau, lam = np.asarray(tau, dtype=float), np.asarray(eigenvalues, dtype=float)
    if tau.ndim != 1 or tau.shape != lam.shape or not (np.isfinite(lam).all() and (lam > 0).all()):
        raise ConfigError("tau and eigenvalues must be 1-d of equal length with finite eigenvalues > 0")
    check_int_at_least("n_boot", n_boot, 10)
    check_int_at_least("max_modes", max_modes, 2)
    check_level(level)
    if not 0 <= rel_cutoff < 1:
        raise ConfigError(f"rel_cutoff must lie in [0, 1) (got {rel_cutoff})")
    order = np.argsort(-lam, kind="stable")[:max_modes]
    order = order[lam[order] > rel_cutoff * lam.max()]
    ok = np.isfinite(tau[order]) & (np.nan_to_num(tau[order], nan=0.0) > 0)
    x, y = lam[order][ok], tau[order][ok]
    if x.size < 3 or np.ptp(x) == 0:
        raise ConfigError(f"emergence_law needs at least 3 crossed modes with distinct eigenvalues (got {x.size})")
    slope, intercept = log_log_fit(x, y)
    # a resample whose eigenvalues are all equal has no slope: NaN, dropped (counted in ``failed``)
    boot = bootstrap_replicates(lambda pick: -log_log_fit(x[pick], y[pick])[0] if np.ptp(x[pick]) > 0 else np.nan,
                     x.size, n_boot, seed)
    betas = boot[np.isfinite(boot)]
    interval = tuple(float(b) for b in percentile_interval(betas, level))
    censored = int((~np.isfinite(tau[order])).sum())
    return EmergenceFit(-slope, intercept, interval, int(order.size), int(x.size), censored, n_boot,
                        n_boot - len(betas))
