"""Nearest neighbours and the memorisation fraction, for samples of any model (docs/theory/generalization.md).

Pure functions on tensors (n, ...) flattened to (n, d). Nearest neighbours are found block by block
(samples x training chunks, a running top-k), so 1e4 samples against 1e5 training vectors of dimension
1024 need memory for about one block beyond the inputs (which are neither copied nor converted as a whole:
rows are converted block by block). Candidates are selected with float32 matrix products
(||b||^2 - 2 a.b; in wide blocks through the minima of groups of columns) and the final distances
recomputed exactly from differences in float64, with ties broken by the smaller training index. The
float32 selection is certified per sample with a rigorous round-off bound: the candidates of smallest
float32 value are re-ranked first, all candidates where that does not certify the answer, and a sample
whose candidates might still miss a point at or below its k-th exact distance is searched again, keeping
every training point whose float32 value lies within the bound of that distance. The result is therefore
the float64 brute-force answer, and chunked and unchunked searches give identical results. Small problems
(samples x training x dimension <= 2^22, no ``chunk`` given) skip the search: every pair's float64 distance
is computed at once, the same answer to the bit.

The memorisation fraction (Yoon et al. 2023; Gu et al. 2023 [prior]): a sample is a copy when the
ratio of its distances to the nearest and the second-nearest training point is below a threshold
(default 1/3); f_mem is the fraction of copies, with a percentile bootstrap interval over samples
(:mod:`easyhard.metrics.bootstrap`).

Similarities (docs/theory/generalization.md section 5) use phi(x) = (x - mean x) / ||x - mean x||, the
per-image standardisation: the nearest-neighbour similarity of samples to a split, the paired similarity of
two models' samples driven by the same noise, and the cosine similarity of two denoisers' outputs.

Ensembles: :func:`standardize`, :func:`paired_similarity` and :func:`denoiser_similarity` take
``ensemble=True`` for inputs with a leading member axis, (E, n, ...) instead of (n, ...), and return one
value per member; :func:`copies_from_distances` and :func:`distance_ratio` broadcast over any leading axes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

from easyhard._validate import ConfigError, check_choice, check_int_at_least
from easyhard.metrics.bootstrap import bootstrap_mean

METRICS = ("l2", "cosine")
#: candidates kept per query beyond k in the float32 pass (the margin that lets the round-off certificate pass)
_EXTRA = 8
#: elements of the (samples x training) product block of the search (256 MiB in float32), allocated once per call
_BLOCK = 2**26
#: elements (pairs x dimension) of one float64 step of the exact re-ranking (32 MiB)
_RERANK = 2**22
#: columns per group in the selection of the smallest values of a wide block (by the minima of the groups)
_GROUP = 16
#: samples x training x dimension up to which all pairs are compared at once (float64, 32 MiB)
_ALL_PAIRS = 2**22
_U32 = 2.0**-24  # unit round-off of float32
_U64 = 2.0**-53  # unit round-off of float64


def _items(name: str, x: torch.Tensor, ensemble: bool) -> torch.Tensor:
    """Items (n, ...) -> (n, d), or with ``ensemble`` (E, n, ...) -> (E, n, d): a view in x's dtype and device."""
    lead = 2 if ensemble else 1
    if not isinstance(x, torch.Tensor) or x.ndim < lead + 1 or 0 in x.shape[:lead]:
        shape = "(E, n, ...) with E, n >= 1" if ensemble else "(n, ...) with n >= 1"
        raise ConfigError(f"{name} must be a tensor of shape {shape}")
    return x.reshape(*x.shape[:lead], -1)


def _flat(name: str, x: torch.Tensor, ensemble: bool = False) -> torch.Tensor:
    """(n, ...) -> (n, d) float64, or with ``ensemble`` (E, n, ...) -> (E, n, d)."""
    return _items(name, x, ensemble).to(torch.float64)


def _flat_view(name: str, x: torch.Tensor, ensemble: bool = False) -> torch.Tensor:
    """(n, d) view of ``x`` (on the CPU) in its own dtype: no float64 copy of the whole tensor (``ensemble``:
    (E, n, ...) -> (E, n, d))."""
    return _items(name, x, ensemble).detach().cpu()


def standardize(x: torch.Tensor, ensemble: bool = False) -> torch.Tensor:
    """Per-image standardisation then unit norm: phi(x) = (x - mean_x) / ||x - mean_x||, (n, ...) -> (n, d)
    float64 (``ensemble``: (E, n, ...) -> (E, n, d)).

    The dot product of two such rows is the per-image-standardised cosine similarity.
    """
    x = _flat("x", x, ensemble)
    x = x - x.mean(-1, keepdim=True)
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-300)


def _rows64(x: torch.Tensor, metric: str, sel: slice | torch.Tensor) -> torch.Tensor:
    """Float64 rows ``x[sel]`` of a flattened input (n, d) or (E, n, d) (standardised for the cosine metric)."""
    rows = x[sel].to(torch.float64)
    return standardize(rows, rows.ndim == 3) if metric == "cosine" else rows


def _search_rows(x: torch.Tensor, metric: str, lo: int, hi: int, search64: bool) -> torch.Tensor:
    """Rows lo:hi of x (n, d) for the candidate search, in float64 (``search64``) or float32: a view where x already
    has that dtype and the metric is l2, else converted (standardised for the cosine metric) ``_RERANK`` elements at
    a time."""
    dtype = torch.float64 if search64 else torch.float32
    if metric == "l2" and x.dtype == dtype:
        return x[lo:hi]
    hi = min(hi, len(x))
    out = torch.empty((hi - lo, x.shape[1]), dtype=dtype)
    step = max(1, _RERANK // max(1, x.shape[1]))
    for p in range(lo, hi, step):
        out[p - lo:p - lo + step] = _rows64(x, metric, slice(p, min(hi, p + step)))
    return out


def _smallest(block: torch.Tensor, keep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, columns) (r, min(keep, w)) of each row of ``block`` (r, w): the smallest values up to ties, in no
    order; every value left out is >= the largest value kept.

    Wide blocks (w >= 4 keep ``_GROUP``) are not searched element by element: the columns are split into
    ``_GROUP``-member strided groups {j, j + g, ...} (g = w // ``_GROUP``; the last w - g ``_GROUP`` columns on
    their own), the ``keep`` groups with the smallest minima are selected, and the values kept are the ``keep``
    smallest of their members and the columns on their own. A value left out is either in an unselected group,
    hence >= its group's minimum >= the ``keep`` selected minima (all candidates), or >= the largest value kept by
    the final selection.
    """
    r, w = block.shape
    if w < 4 * keep * _GROUP:
        return torch.topk(block, min(keep, w), dim=1, largest=False, sorted=False)
    g = w // _GROUP
    minima = block[:, :g * _GROUP].unflatten(1, (_GROUP, g)).amin(1)
    groups = torch.topk(minima, keep, dim=1, largest=False, sorted=False).indices
    cols = torch.cat([(groups[:, :, None] + g * torch.arange(_GROUP)).reshape(r, -1),
                      torch.arange(g * _GROUP, w).expand(r, -1)], 1)
    s, t = torch.topk(block.gather(1, cols), keep, dim=1, largest=False, sorted=False)
    return s, cols.gather(1, t)


def _exact_sq(q64: torch.Tensor, b: torch.Tensor, metric: str, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Float64 squared distances ||q64[rows] - b[cols]||^2 of index pairs, from differences (in bounded pieces)."""
    step = max(1, _RERANK // max(1, q64.shape[1]))
    out = []
    for p in range(0, len(rows), step):
        diff = q64[rows[p:p + step]] - _rows64(b, metric, cols[p:p + step])
        out.append(diff.mul_(diff).sum(1))
    return torch.cat(out) if out else torch.empty(0, dtype=torch.float64)


def _exact_candidates(q64: torch.Tensor, b: torch.Tensor, metric: str, cols: torch.Tensor) -> torch.Tensor:
    """Float64 squared distances ||q64[i] - b[cols[i, j]]||^2 (f, c) of each row of q64 (f, d) to its candidates
    ``cols`` (f, c), from differences (in bounded pieces, the rows of q64 broadcast rather than copied)."""
    f, c = cols.shape
    step = max(1, _RERANK // max(1, c * q64.shape[1]))
    out = []
    for r in range(0, f, step):
        diff = q64[r:r + step, None, :] - _rows64(b, metric, cols[r:r + step].reshape(-1)).view(-1, c, q64.shape[1])
        out.append(diff.mul_(diff).sum(2))
    return torch.cat(out)


def _rank(q64: torch.Tensor, b: torch.Tensor, metric: str, cols: torch.Tensor,
          k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k nearest (squared float64 distances (f, k), indices (f, k)) of each row of q64 (f, d) among its
    candidates ``cols`` (f, c), c >= k: exact distances from differences, ties to the smaller index."""
    exact = _exact_candidates(q64, b, metric, cols)
    order = torch.from_numpy(np.lexsort((cols.numpy(), exact.numpy()), axis=1)[:, :k])  # distance, index
    return exact.gather(1, order), cols.gather(1, order)


def _uncertified(q_sq: torch.Tensor, outside: torch.Tensor, dist_k: torch.Tensor, base: torch.Tensor,
                 coef64: float) -> torch.Tensor:
    """Positions of the rows whose certificate fails: every point not re-ranked has s >= ``outside``, hence an exact
    squared distance >= ||q||^2 + outside - margin (margin = base + coef64 dist_k), which does not exceed the k-th
    exact squared distance ``dist_k`` of the re-ranked points."""
    return torch.nonzero(q_sq + outside.double() - base - coef64 * dist_k <= dist_k).flatten()


def nearest_neighbours(samples: torch.Tensor, train: torch.Tensor, k: int = 2, metric: str = "l2",
                       chunk: int | None = None, ensemble: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(distances (m, k), indices (m, k)) of the k nearest training points of every sample.

    metric "l2": Euclidean distances; "cosine": the per-image-standardised cosine similarity, returned
    as similarities in decreasing order (nearest first). ``chunk``: training rows per block of the search
    (None: all pairs at once for small problems, samples x train x dimension <= 2^22, else
    2^26 / max(min(samples, 2048), dimension)); each block takes 2^26 / max(chunk, dimension) samples (at
    most 2^26 products, 256 MiB in float32). Exact in float64 (the float64 brute-force answer), ties to the
    smaller index; independent of ``chunk``. The inputs are not copied: peak memory is the inputs plus about
    one block (plus, for the cosine metric or inputs that are not float32, the converted rows of a block).

    ``ensemble``: samples (E, m, ...) and train (E, n, ...), the samples of member e against its own training
    set: (distances (E, m, k), indices (E, m, k)), for each member the answer without the member axis (small
    problems: members batched, all pairs at once).
    """
    check_choice("metric", metric, METRICS)
    k = check_int_at_least("k", k, 1)
    a, b = _flat_view("samples", samples, ensemble), _flat_view("train", train, ensemble)
    m, n, d = a.shape[-2], b.shape[-2], a.shape[-1]
    if b.shape[-1] != d:
        raise ConfigError(f"samples and train must have the same dimension (got {d} and {b.shape[-1]})")
    if k > n:
        raise ConfigError(f"k must be at most the number of training points {n} (got {k})")
    if ensemble:
        if len(a) != len(b):
            raise ConfigError(f"samples and train must have the same number of members (got {len(a)} and {len(b)})")
        if chunk is not None or m * n * d > _ALL_PAIRS:
            pairs = [nearest_neighbours(a[e], b[e], k, metric, chunk) for e in range(len(a))]
            return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
        step = max(1, _ALL_PAIRS // (m * n * d))  # members per batch of all pairs
        parts = [_all_pairs(_rows64(a[e:e + step], metric, slice(None)), _rows64(b[e:e + step], metric, slice(None)), k)
                 for e in range(0, len(a), step)]
        return _from_squared(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]), metric)
    if chunk is None and m * n * d <= _ALL_PAIRS:
        return _from_squared(*_all_pairs(_rows64(a, metric, slice(None)), _rows64(b, metric, slice(None)), k), metric)
    keep = min(n, k + _EXTRA)
    chunk = chunk or max(keep, _BLOCK // max(min(m, 2048), d))
    check_int_at_least("chunk", chunk, 1)
    rows = max(1, _BLOCK // max(chunk, d))
    # Round-off bound of s = fl(||b||^2 - 2 q.b) in float32 (inputs rounded to float32, ||b||^2 as the square
    # of the float32 norm, any summation order): |s - (||b||^2 - 2 q.b)| <= (2.04 d + 10) u32 (||q||^2 + ||b||^2)
    # (the square of the rounded norm adds 3 u32 ||b||^2 to the float32 sum of squares); plus the float64 error
    # of the exact distances. Both are taken generously (coef * (||q||^2 + max ||b||^2)).
    coef32 = (2.1 * d + 16) * _U32
    coef64 = 4 * (d + 16) * _U64
    search64 = coef32 > 0.01  # float32 bound meaningless (d > ~8e4): search in float64 instead
    if search64:
        coef32 = (2.1 * d + 16) * _U64
    dtype = torch.float64 if search64 else torch.float32
    b_sq = torch.empty(n, dtype=dtype)  # ||b||^2 in the search precision, filled during the first row block
    buf = torch.empty(min(rows, m) * min(chunk, n), dtype=dtype)  # the product block, reused
    dist_out, idx_out = [], []
    for r0 in range(0, m, rows):
        q64 = _rows64(a, metric, slice(r0, r0 + rows))
        q = q64 if search64 else _search_rows(a, metric, r0, r0 + rows, False)
        nq = len(q)
        best_s = best_i = None
        for c0 in range(0, n, chunk):
            c1 = min(n, c0 + chunk)
            bb = _search_rows(b, metric, c0, c1, search64)
            if r0 == 0:
                b_sq[c0:c1] = torch.linalg.vector_norm(bb, dim=1).square_()
            block = torch.addmm(b_sq[c0:c1], q, bb.T, alpha=-2.0, out=buf[:nq * (c1 - c0)].view(nq, c1 - c0))
            s, i = _smallest(block, keep)
            i += c0
            if best_s is not None:
                s, i = torch.cat([best_s, s], 1), torch.cat([best_i, i], 1)
                if s.shape[1] > keep:
                    s, t = torch.topk(s, keep, dim=1, largest=False, sorted=False)
                    i = i.gather(1, t)
            best_s, best_i = s, i
        if r0 == 0:  # an upper bound of the exact max ||b||^2
            b_max = float(b_sq.max()) * (1.0 if search64 else 1 + (2 * d + 4) * _U32)
        # Certificate: every point outside a re-ranked set has s >= some value S, hence an exact squared distance
        # >= ||q||^2 + S - margin; if that exceeds the k-th exact distance, the re-ranked set holds the answer.
        # First the max(k, 2) candidates of smallest s are re-ranked (S: the next candidate's s; at least two
        # pairs, so that no exact distance is a reduction to a single value, which may be split over threads),
        # then, for the rows not certified, all candidates (S: the largest s kept; no point is outside when every
        # point is a candidate).
        best_s, order = best_s.sort(1)
        best_i = best_i.gather(1, order)
        q_sq = (q64 * q64).sum(1)
        base = (coef32 + coef64) * (q_sq + b_max)
        first = min(keep, max(k, 2))
        dist, idx = _rank(q64, b, metric, best_i[:, :first], k)
        failed = torch.empty(0, dtype=torch.int64)
        if first < keep:
            failed = _uncertified(q_sq, best_s[:, first], dist[:, -1], base, coef64)
        if len(failed):
            dist[failed], idx[failed] = _rank(q64[failed], b, metric, best_i[failed], k)
            if keep < n:
                failed = failed[_uncertified(q_sq[failed], best_s[failed, -1], dist[failed, -1], base[failed], coef64)]
            else:
                failed = failed[:0]
        if len(failed):
            thr = dist[failed, -1] - q_sq[failed] + base[failed] + coef64 * dist[failed, -1]
            dist[failed], idx[failed] = _research(q64[failed], q[failed], b, b_sq, metric, search64, thr, k, chunk, buf)
        dist_out.append(dist)
        idx_out.append(idx)
    return _from_squared(torch.cat(dist_out), torch.cat(idx_out), metric)


def _from_squared(sq: torch.Tensor, idx: torch.Tensor, metric: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(distances, indices) from squared float64 distances; for "cosine", similarities 1 - ||phi(a) - phi(b)||^2 / 2."""
    dist = sq.sqrt()
    if metric == "cosine":
        return 1.0 - dist**2 / 2.0, idx
    return dist, idx


def _all_pairs(a: torch.Tensor, b: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k nearest (squared distances (..., m, k), indices (..., m, k)) of float64 rows a (..., m, d) among
    b (..., n, d), from the differences of all pairs, ties to the smaller index (a stable sort): the brute
    force itself, for problems of at most ``_ALL_PAIRS`` elements."""
    diff = a[..., :, None, :] - b[..., None, :, :]
    sq = diff.mul_(diff).sum(-1)
    if k == 1:  # min returns the first of equal minima
        return sq.min(-1, keepdim=True)
    sq, idx = sq.sort(dim=-1, stable=True)
    return sq[..., :k], idx[..., :k]


def _research(q64: torch.Tensor, q: torch.Tensor, b: torch.Tensor, b_sq: torch.Tensor, metric: str, search64: bool,
              thr: torch.Tensor, k: int, chunk: int, buf: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Second pass for samples whose candidates were not certified: every training point with
    s = ||b||^2 - 2 q.b <= ``thr`` (which contains all points at or below the k-th exact distance) is
    re-ranked exactly; (squared distances (f, k), indices (f, k)). ``buf``: room for a (f, chunk) product block."""
    if not search64:  # the smallest float32 >= thr
        thr = torch.nextafter(thr.to(torch.float32), torch.tensor(math.inf, dtype=torch.float32))
    pr, pj = [], []
    for c0 in range(0, len(b), chunk):
        c1 = min(len(b), c0 + chunk)
        bb = _search_rows(b, metric, c0, c1, search64)
        block = torch.addmm(b_sq[c0:c1], q, bb.T, alpha=-2.0, out=buf[:len(q) * (c1 - c0)].view(len(q), c1 - c0))
        r, j = torch.nonzero(block <= thr[:, None], as_tuple=True)
        pr.append(r)
        pj.append(j + c0)
    rows, cols = torch.cat(pr), torch.cat(pj)
    exact = _exact_sq(q64, b, metric, rows, cols)
    order = np.lexsort((cols.numpy(), exact.numpy(), rows.numpy()))  # by sample, distance, index
    start = np.searchsorted(rows.numpy()[order], np.arange(len(q64)))
    take = torch.from_numpy(order[(start[:, None] + np.arange(k)).reshape(-1)])
    return exact[take].reshape(-1, k), cols[take].reshape(-1, k)


@dataclass(frozen=True)
class MemorizationFraction:
    """f_mem (fraction of samples with d1/d2 < threshold) with its bootstrap and Wilson intervals.

    value: the observed fraction; interval: percentile bootstrap interval; boot_mean, se: mean and
    standard deviation (ddof = 1) of the bootstrap replicates; wilson_upper: the upper end of the Wilson
    score interval at the same level, informative when no sample is a copy (docs/theory/generalization.md, section 2).
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


def threshold_label(t: float) -> str:
    """'1/3' for a threshold within 1e-4 of 1/k (k = 2..20), else the number."""
    for k in range(2, 21):
        if abs(t - 1 / k) < 1e-4:
            return f"1/{k}"
    return f"{t:g}"


def _nearest_two(distances: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(d1, d2) (..., m) of the two nearest L2 distances (..., m, k >= 2)."""
    if distances.ndim < 2 or distances.shape[-1] < 2:
        raise ConfigError(f"distances must have shape (..., m, 2) (got {tuple(distances.shape)})")
    return distances[..., 0], distances[..., 1]


def copies_from_distances(distances: torch.Tensor, threshold: float = 1 / 3) -> torch.Tensor:
    """Copy indicators (..., m) bool from the two nearest L2 distances (..., m, 2): d1 < threshold * d2.

    A sample whose two nearest training points are both at distance 0 (a duplicated training image
    copied exactly) counts as a copy [choice].
    """
    if not 0 < threshold < 1:
        raise ConfigError(f"threshold must lie in (0, 1) (got {threshold})")
    d1, d2 = _nearest_two(distances)
    return (d1 < threshold * d2) | (d2 == 0)


def distance_ratio(distances: torch.Tensor) -> torch.Tensor:
    """d1/d2 (..., m) from the two nearest L2 distances (..., m, 2); 0 where d1 = d2 = 0 (an exact copy of a
    duplicated training point, a copy for :func:`copies_from_distances`)."""
    d1, d2 = _nearest_two(distances)
    return torch.where(d2 > 0, d1 / d2.clamp_min(1e-300), torch.zeros_like(d1))


def fraction_with_interval(copies: torch.Tensor | np.ndarray, threshold: float, n_boot: int = 1000,
                           level: float = 0.95, seed: int = 0) -> MemorizationFraction:
    """f_mem of copy indicators (m,), with a percentile bootstrap over samples (:func:`bootstrap_mean`) and
    the Wilson upper bound."""
    check_int_at_least("n_boot", n_boot, 10)
    copies = np.asarray(copies, dtype=bool)
    boot = bootstrap_mean(copies, n_boot, level, seed)
    return MemorizationFraction(boot.value, boot.interval, threshold, len(copies), n_boot, boot.boot_mean, boot.se,
                                wilson_upper(int(copies.sum()), len(copies), level))


def memorization_fraction(samples: torch.Tensor, train: torch.Tensor, threshold: float = 1 / 3, n_boot: int = 1000,
                          level: float = 0.95, seed: int = 0, chunk: int | None = None) -> MemorizationFraction:
    """Fraction of samples with d1/d2 < ``threshold`` (L2 distances to the nearest and second-nearest training
    point), with a percentile bootstrap interval over samples and the Wilson upper bound."""
    if not 0 < threshold < 1:
        raise ConfigError(f"threshold must lie in (0, 1) (got {threshold})")
    dist, _ = nearest_neighbours(samples, train, k=2, chunk=chunk)
    return fraction_with_interval(copies_from_distances(dist, threshold), threshold, n_boot, level, seed)


def nearest_similarity(samples: torch.Tensor, reference: torch.Tensor, chunk: int | None = None,
                       ensemble: bool = False) -> torch.Tensor:
    """s_j = max_y phi(x_j) . phi(y) over the reference set: each sample's similarity (per-image-standardised
    cosine) to its nearest reference point (:func:`nearest_neighbours`, metric "cosine"), float64 (m,)
    (``ensemble``: samples (E, m, ...) against references (E, n, ...) -> (E, m))."""
    return nearest_neighbours(samples, reference, k=1, metric="cosine", chunk=chunk, ensemble=ensemble)[0][..., 0]


def split_similarity(samples: torch.Tensor, own: torch.Tensor, other: torch.Tensor,
                     chunk: int | None = None) -> dict[str, float]:
    """Mean nearest-neighbour similarity (:func:`nearest_similarity`) of a model's samples to its own
    training split and to another, disjoint split; their difference is the sample-split bias
    (docs/theory/generalization.md: a positive gap means samples lean towards the model's own data)."""
    s_own, s_other = nearest_similarity(samples, own, chunk), nearest_similarity(samples, other, chunk)
    return {"own": float(s_own.mean()), "other": float(s_other.mean()), "gap": float((s_own - s_other).mean())}


def _same_shape(what: str, a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape:
        raise ConfigError(f"{what} must have the same shape (got {tuple(a.shape)} and {tuple(b.shape)})")


def paired_similarity(a: torch.Tensor, b: torch.Tensor, ensemble: bool = False) -> torch.Tensor:
    """phi(a_j) . phi(b_j): per-pair standardised cosine similarity of two models' samples driven by the same
    noise, float64 (m,) (``ensemble``: samples (E, m, ...) -> (E, m))."""
    a, b = standardize(a, ensemble), standardize(b, ensemble)
    _same_shape("paired samples", a, b)
    return (a * b).sum(-1)


def denoiser_similarity(first: torch.Tensor, second: torch.Tensor, ensemble: bool = False) -> float | torch.Tensor:
    """Mean over inputs of cos(D_1(x_j), D_2(x_j)): cosine similarity of two denoisers' outputs (n, ...) on the
    same noisy inputs (no standardisation). ``ensemble``: outputs (E, n, ...) -> float64 (E,)."""
    a, b = _flat("first", first, ensemble), _flat("second", second, ensemble)
    _same_shape("outputs", a, b)
    cosine = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(1e-300)
    return cosine.mean(-1) if ensemble else float(cosine.mean())
