"""Sample quality against a known density: a kNN estimate of KL(q || p) (docs/theory/generalization.md section 11.4, pitfall 3).

For samples x_1..x_m ~ q and a law p with known log-density,

    KL(q || p) = -H(q) - E_q log p(x)  ~  KL_hat = -H_hat(q) - (1/m) sum_j log p(x_j),

with H_hat the Kozachenko-Leonenko k-nearest-neighbour entropy estimator

    H_hat = psi(m) - psi(k) + log V_d + (d/m) sum_j log r_j,    V_d = pi^{d/2} / Gamma(d/2 + 1),

r_j the distance from x_j to its k-th nearest *other* sample. The mean log-likelihood alone cannot
tell good samples from copies of the training set (training points are themselves draws from p); the
entropy term can: duplicated or near-duplicated samples have r_j ~ 0, so H_hat -> -inf and
KL_hat -> +inf (returned as ``float('inf')``, never NaN).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from scipy.special import digamma, gammaln
from torch import Tensor

from easyhard._validate import ConfigError, check_int_at_least


def _check_samples(samples: Tensor, min_rows: int) -> Tensor:
    """samples: (m, d) real tensor with m >= min_rows and finite entries -> float64."""
    if not isinstance(samples, Tensor) or samples.ndim != 2 or samples.shape[1] < 1:
        shape = tuple(samples.shape) if isinstance(samples, Tensor) else type(samples).__name__
        raise ConfigError(f"samples must be a tensor of shape (m, d) (got {shape})")
    if samples.shape[0] < min_rows:
        raise ConfigError(f"samples must have at least {min_rows} rows (got {samples.shape[0]})")
    samples = samples.detach().to(torch.float64)
    if not torch.isfinite(samples).all():
        raise ConfigError("samples must contain only finite numbers")
    return samples


def knn_distances(samples: Tensor, k: int = 1, block_size: int = 1024) -> Tensor:
    """r_j = distance from x_j to its k-th nearest other sample (self excluded, exact ties kept). (m, d) -> (m,).

    Distances are computed directly (no |x|^2 + |y|^2 - 2 x.y expansion, so exact duplicates give
    r_j = 0), ``block_size`` query rows at a time: memory O(block_size * m).
    """
    k = check_int_at_least("k", k, 1)
    block_size = check_int_at_least("block_size", block_size, 1)
    samples = _check_samples(samples, k + 1)
    m = samples.shape[0]
    out = torch.empty(m, dtype=torch.float64, device=samples.device)
    for start in range(0, m, block_size):
        block = samples[start:start + block_size]
        dist = torch.cdist(block, samples, compute_mode="donot_use_mm_for_euclid_dist")  # (b, m)
        rows = torch.arange(block.shape[0], device=samples.device)
        dist[rows, start + rows] = torch.inf
        out[start:start + block.shape[0]] = torch.topk(dist, k, dim=1, largest=False).values[:, -1]
    return out


def knn_entropy(samples: Tensor, k: int = 1) -> float:
    """Kozachenko-Leonenko H_hat = psi(m) - psi(k) + log V_d + (d/m) sum_j log r_j, V_d = pi^{d/2}/Gamma(d/2+1).

    samples: (m, d) with m >= k + 1. Returns nats; ``-inf`` when some r_j = 0 (duplicated samples).
    """
    radii = knn_distances(samples, k)
    m, d = samples.shape
    if (radii <= 0).any():
        return -math.inf
    log_unit_ball = 0.5 * d * math.log(math.pi) - gammaln(0.5 * d + 1)
    return float(digamma(m) - digamma(k) + log_unit_ball + d * torch.log(radii).mean().item())


def _log_probs(samples: Tensor, log_prob: Callable[[Tensor], Tensor]) -> Tensor:
    """log p(x_j) as a float64 (m,) tensor; a wrongly shaped result raises ConfigError."""
    with torch.no_grad():
        values = torch.as_tensor(log_prob(samples)).to(torch.float64).reshape(-1)
    if values.shape != (samples.shape[0],):
        raise ConfigError(f"log_prob must return shape ({samples.shape[0]},) for samples of shape "
                          f"{tuple(samples.shape)} (got {tuple(values.shape)})")
    return values


def _member_log_probs(samples: Tensor, log_prob: Callable[[Tensor], Tensor], min_rows: int) -> tuple[Tensor, Tensor]:
    """Samples (E, m, d) of E models -> (float64 samples (E, m, d), log p (E, m)), ``log_prob`` called once on
    all E m points."""
    if not isinstance(samples, Tensor) or samples.ndim != 3 or samples.shape[0] < 1:
        shape = tuple(samples.shape) if isinstance(samples, Tensor) else type(samples).__name__
        raise ConfigError(f"samples must be a tensor of shape (E, m, d) (got {shape})")
    E, m, d = samples.shape
    if m < min_rows:
        raise ConfigError(f"samples must have at least {min_rows} rows per member (got {m})")
    flat = _check_samples(samples.reshape(E * m, d), 1)
    return flat.reshape(E, m, d), _log_probs(flat, log_prob).reshape(E, m)


def mean_log_likelihood(samples: Tensor, log_prob: Callable[[Tensor], Tensor], ensemble: bool = False
                        ) -> float | Tensor:
    """(1/m) sum_j log p(x_j) for samples (m, d); ``log_prob`` maps (m, d) -> (m,). ``ensemble``: samples
    (E, m, d) of E models (``log_prob`` called once on all of them) -> float64 (E,)."""
    if ensemble:
        return _member_log_probs(samples, log_prob, 1)[1].mean(-1)
    samples = _check_samples(samples, 1)
    return float(_log_probs(samples, log_prob).mean())


def _kl(entropy: float, cross: float) -> float:
    """-H_hat - E_q log p, ``inf`` when either term says the samples coincide or fall where p = 0."""
    if entropy == -math.inf or cross == -math.inf:
        return math.inf
    if math.isnan(cross) or cross == math.inf:
        raise ConfigError(f"log_prob must return finite values or -inf (mean was {cross})")
    return -entropy - cross


def kl_to_density(samples: Tensor, log_prob: Callable[[Tensor], Tensor], k: int = 1, ensemble: bool = False
                  ) -> float | Tensor:
    """KL_hat(q || p) = -H_hat(q) - (1/m) sum_j log p(x_j), H_hat the k-NN entropy (:func:`knn_entropy`).

    samples: (m, d) draws from q, m >= k + 1; ``log_prob`` maps (m, d) -> (m,). Returns nats;
    ``inf`` when samples coincide (H_hat = -inf) or fall where log p = -inf. Unbiased only as
    m -> infinity; the O(m^{-1/d}) bias grows with d, so compare estimates at equal m and d.
    ``ensemble``: samples (E, m, d) of E models, each its own estimate (``log_prob`` called once on all
    of them) -> float64 (E,).
    """
    if ensemble:
        members, log_p = _member_log_probs(samples, log_prob, k + 1)
        return torch.tensor([_kl(knn_entropy(x, k), float(c)) for x, c in zip(members, log_p.mean(-1))],
                            dtype=torch.float64)
    samples = _check_samples(samples, k + 1)
    return _kl(knn_entropy(samples, k), float(_log_probs(samples, log_prob).mean()))


def knn_divergence(samples: Tensor, reference: Tensor, k: int = 1) -> float:
    """k-NN estimate of KL(q || p) from samples x_1..x_m ~ q and held-out reference points y_1..y_M ~ p
    (Wang, Kulkarni & Verdu 2009):

        KL_hat = (d/m) sum_j log(nu_j / r_j) + log(M / (m - 1)),

    r_j the distance from x_j to its k-th nearest other sample, nu_j to its k-th nearest reference point.
    No density is needed, so it serves for images, where the reference is a held-out test set. Copies of
    training points collapse r_j -> 0 and give ``inf``, like :func:`kl_to_density`.
    """
    k = check_int_at_least("k", k, 1)
    samples = _check_samples(samples, k + 1)
    reference = _check_samples(reference, k)
    if reference.shape[1] != samples.shape[1]:
        raise ConfigError(f"reference must have dimension {samples.shape[1]} (got {reference.shape[1]})")
    m, d = samples.shape
    r = knn_distances(samples, k)
    if (r <= 0).any():
        return math.inf
    nu = torch.cat([torch.cdist(samples[i:i + 1024], reference, compute_mode="donot_use_mm_for_euclid_dist")
                    .topk(k, dim=1, largest=False).values[:, -1] for i in range(0, m, 1024)])
    return float(d * torch.log(nu / r).mean() + math.log(reference.shape[0] / (m - 1)))
