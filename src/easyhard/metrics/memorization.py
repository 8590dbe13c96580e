"""Nearest neighbours and the memorisation fraction, for samples of any model (generalization.md).

Pure functions on tensors (n, ...) flattened to (n, d). Nearest neighbours are found block by block
(samples x training chunks, a running top-k), so 1e4 samples against 1e5 training vectors of dimension
1024 need memory for one block only. Candidates are selected with matrix products and the final
distances recomputed exactly from differences in float64, with ties broken by the smaller training
index: chunked and unchunked searches give identical results.

The memorisation fraction (Yoon et al. 2023; Gu et al. 2023 [prior]): a sample is a copy when the
ratio of its distances to the nearest and the second-nearest training point is below a threshold
(default 1/3); f_mem is the fraction of copies, with a bootstrap interval over samples.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

from easyhard._validate import ConfigError, check_choice, check_int_at_least

METRICS = ("l2", "cosine")
#: candidates kept per query beyond k before the exact re-ranking (absorbs round-off of the block products)
_EXTRA = 8
#: float64 elements of one block of the distance matrix (256 MiB)
_BLOCK = 2**25


def _flat(name: str, x: torch.Tensor) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.ndim < 2 or len(x) == 0:
        raise ConfigError(f"{name} must be a tensor of shape (n, ...) with n >= 1")
    return x.reshape(len(x), -1).to(torch.float64)


def standardize(x: torch.Tensor) -> torch.Tensor:
    """Per-image standardisation then unit norm: (x - mean_x) / ||x - mean_x|| (rows; float64).

    The dot product of two such rows is the per-image-standardised cosine similarity.
    """
    x = _flat("x", x)
    x = x - x.mean(1, keepdim=True)
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-300)


def nearest_neighbours(samples: torch.Tensor, train: torch.Tensor, k: int = 2, metric: str = "l2",
                       chunk: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(distances (m, k), indices (m, k)) of the k nearest training points of every sample.

    metric "l2": Euclidean distances; "cosine": the per-image-standardised cosine similarity, returned
    as similarities in decreasing order (nearest first). ``chunk``: training rows per block (None: from a
    256 MiB budget). Exact in float64, ties to the smaller index; independent of ``chunk``.
    """
    check_choice("metric", metric, METRICS)
    k = check_int_at_least("k", k, 1)
    a, b = (standardize(x) for x in (samples, train)) if metric == "cosine" else (_flat("samples", samples),
                                                                                   _flat("train", train))
    if a.shape[1] != b.shape[1]:
        raise ConfigError(f"samples and train must have the same dimension (got {a.shape[1]} and {b.shape[1]})")
    if k > len(b):
        raise ConfigError(f"k must be at most the number of training points {len(b)} (got {k})")
    keep = min(len(b), k + _EXTRA)
    chunk = chunk or max(keep, _BLOCK // max(1, min(len(a), 4096)))
    check_int_at_least("chunk", chunk, 1)
    rows = max(1, _BLOCK // chunk)
    b_sq = (b * b).sum(1)
    dist_out, idx_out = [], []
    for r0 in range(0, len(a), rows):
        q = a[r0:r0 + rows]
        q_sq = (q * q).sum(1, keepdim=True)
        best_d = torch.full((len(q), 0), math.inf, dtype=torch.float64)
        best_i = torch.empty((len(q), 0), dtype=torch.int64)
        for c0 in range(0, len(b), chunk):
            block = q_sq + b_sq[c0:c0 + chunk] - 2.0 * q @ b[c0:c0 + chunk].T  # squared distances (approx.)
            cand_d = torch.cat([best_d, block], 1)
            cand_i = torch.cat([best_i, torch.arange(c0, c0 + block.shape[1]).expand(len(q), -1)], 1)
            top = torch.topk(cand_d, min(keep, cand_d.shape[1]), dim=1, largest=False).indices
            best_d, best_i = cand_d.gather(1, top), cand_i.gather(1, top)
        exact = ((q[:, None, :] - b[best_i]) ** 2).sum(-1)  # (rows, keep) exact squared distances
        order = np.lexsort((best_i.numpy(), exact.numpy()), axis=1)[:, :k]  # by distance, then index
        order = torch.from_numpy(order)
        dist_out.append(exact.gather(1, order).sqrt())
        idx_out.append(best_i.gather(1, order))
    dist, idx = torch.cat(dist_out), torch.cat(idx_out)
    if metric == "cosine":
        return 1.0 - dist**2 / 2.0, idx
    return dist, idx


@dataclass(frozen=True)
class MemorizationFraction:
    """f_mem (fraction of samples with d1/d2 < threshold) with its bootstrap and Wilson intervals.

    value: the observed fraction; interval: percentile bootstrap interval; boot_mean, se: mean and
    standard deviation (ddof = 1) of the bootstrap replicates; wilson_upper: the upper end of the Wilson
    score interval at the same level, informative when no sample is a copy (generalization.md, section 2).
    """

    value: float
    interval: tuple[float, float]
    threshold: float
    n_samples: int
    n_boot: int
    boot_mean: float
    se: float
    wilson_upper: float

    def to_dict(self) -> dict:
        return asdict(self)


def wilson_upper(successes: int, n: int, level: float = 0.95) -> float:
    """Upper end of the Wilson score interval for a binomial proportion:

        (p + z^2/(2n) + z sqrt(p(1-p)/n + z^2/(4n^2))) / (1 + z^2/n),   p = successes/n,

    with z the two-sided normal quantile of ``level``. For zero successes it is z^2 / (n + z^2).
    """
    from scipy.stats import norm

    z = float(norm.ppf(0.5 + level / 2))
    p = successes / n
    centre = p + z * z / (2 * n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return min(1.0, (centre + half) / (1 + z * z / n))


def copies_from_distances(distances: torch.Tensor, threshold: float = 1 / 3) -> torch.Tensor:
    """Copy indicators (m,) bool from the two nearest L2 distances (m, 2): d1 < threshold * d2.

    A sample whose two nearest training points are both at distance 0 (a duplicated training image
    copied exactly) counts as a copy [choice].
    """
    if not 0 < threshold < 1:
        raise ConfigError(f"threshold must lie in (0, 1) (got {threshold})")
    if distances.ndim != 2 or distances.shape[1] < 2:
        raise ConfigError(f"distances must have shape (m, 2) (got {tuple(distances.shape)})")
    d1, d2 = distances[:, 0], distances[:, 1]
    return (d1 < threshold * d2) | (d2 == 0)


def fraction_with_interval(copies: torch.Tensor | np.ndarray, threshold: float, n_boot: int = 1000,
                           level: float = 0.95, seed: int = 0) -> MemorizationFraction:
    """f_mem of copy indicators (m,), with a percentile bootstrap over samples and the Wilson upper bound."""
    check_int_at_least("n_boot", n_boot, 10)
    if not 0 < level < 1:
        raise ConfigError(f"level must lie in (0, 1) (got {level})")
    copies = np.asarray(copies, dtype=bool)
    rng = np.random.default_rng(seed)
    boot = copies[rng.integers(0, len(copies), (n_boot, len(copies)))].mean(1)
    tail = 50 * (1 - level)
    lo, hi = np.percentile(boot, [tail, 100 - tail])
    return MemorizationFraction(float(copies.mean()), (float(lo), float(hi)), threshold, len(copies), n_boot,
                                float(boot.mean()), float(boot.std(ddof=1)),
                                wilson_upper(int(copies.sum()), len(copies), level))


def memorization_fraction(samples: torch.Tensor, train: torch.Tensor, threshold: float = 1 / 3, n_boot: int = 1000,
                          level: float = 0.95, seed: int = 0, chunk: int | None = None) -> MemorizationFraction:
    """Fraction of samples with d1/d2 < ``threshold`` (L2 distances to the nearest and second-nearest training
    point), with a percentile bootstrap interval over samples and the Wilson upper bound."""
    if not 0 < threshold < 1:
        raise ConfigError(f"threshold must lie in (0, 1) (got {threshold})")
    dist, _ = nearest_neighbours(samples, train, k=2, chunk=chunk)
    return fraction_with_interval(copies_from_distances(dist, threshold), threshold, n_boot, level, seed)


def split_similarity(samples: torch.Tensor, own: torch.Tensor, other: torch.Tensor,
                     chunk: int | None = None) -> dict[str, float]:
    """Mean nearest-neighbour similarity (per-image-standardised cosine) of a model's samples to its own
    training split and to another, disjoint split; their difference is the sample-split bias
    (generalization.md: a positive gap means samples lean towards the model's own data)."""
    s_own = nearest_neighbours(samples, own, k=1, metric="cosine", chunk=chunk)[0][:, 0]
    s_other = nearest_neighbours(samples, other, k=1, metric="cosine", chunk=chunk)[0][:, 0]
    return {"own": float(s_own.mean()), "other": float(s_other.mean()), "gap": float((s_own - s_other).mean())}


def paired_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-pair standardised cosine similarity of two models' samples driven by the same noise: (m,)."""
    a, b = standardize(a), standardize(b)
    if a.shape != b.shape:
        raise ConfigError(f"paired samples must have the same shape (got {tuple(a.shape)} and {tuple(b.shape)})")
    return (a * b).sum(1)


def denoiser_similarity(first: torch.Tensor, second: torch.Tensor) -> float:
    """Mean cosine similarity of two denoisers' outputs (n, ...) on the same noisy inputs (no standardisation)."""
    a, b = _flat("first", first), _flat("second", second)
    if a.shape != b.shape:
        raise ConfigError(f"outputs must have the same shape (got {tuple(a.shape)} and {tuple(b.shape)})")
    return float(((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-300)).mean())
