"""Sequence diagnostics of the grammar experiments: summed KLs between per-position laws, nearest-neighbour
Hamming distances and their divergence, exact copies, U-turn overlaps, the loss decomposition and
grammaticality (docs/theory/generalization.md section 9; the grammar: docs/theory/grammar.md).

Pure functions, torch in and torch out on the inputs' device (loops run over Python ints only, so nothing
waits on the device inside a loop). Conventions of section 9:

- a law over sequences enters as per-position probabilities (..., L, q), rows summing to 1 (not checked);
- KLs are in nats and summed over the L positions, one value per input; both laws are clipped from below at
  ``clip`` (default 1e-8) and *not* renormalised: with p_c = max(p, clip) and r_c = max(r, clip),

      KL_clip(p || r) = sum_{i, a} p_c[i, a] (log p_c[i, a] - log r_c[i, a]);

- sequences are integer tensors (..., n, L) of tokens in {0, ..., q-1}; the Hamming distance of two sequences
  is the number of positions where they differ.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from easyhard._validate import ConfigError, check_int_at_least, check_open_unit
from easyhard.data.grammar import HierarchicalGrammar

#: elements of one float32 block of the (samples x reference) match-count matrix (64 MiB)
_BLOCK = 2**24


def _laws(name: str, x: Tensor) -> Tensor:
    """A floating tensor (..., L, q) with L, q >= 1."""
    if not isinstance(x, Tensor) or x.ndim < 2 or not x.dtype.is_floating_point or 0 in x.shape[-2:]:
        raise ConfigError(f"{name} must be a floating tensor of shape (..., L, q) with L, q >= 1")
    return x


def _lead(what: str, a: Tensor, b: Tensor, trailing: int) -> torch.Size:
    """The broadcast of the leading shapes of a and b (all but their last ``trailing`` axes)."""
    try:
        return torch.broadcast_shapes(a.shape[:-trailing], b.shape[:-trailing])
    except RuntimeError:
        raise ConfigError(f"{what} must have broadcastable leading axes (got {tuple(a.shape)} and "
                          f"{tuple(b.shape)})") from None


def _pair_of_laws(p: Tensor, r: Tensor) -> None:
    """p and r are laws (..., L, q) with the same (L, q) and broadcastable leading axes."""
    _laws("p", p)
    _laws("r", r)
    if p.shape[-2:] != r.shape[-2:]:
        raise ConfigError(f"p and r must have the same (L, q) (got {tuple(p.shape[-2:])} and {tuple(r.shape[-2:])})")
    _lead("p and r", p, r, 2)


def _clipped_log(p: Tensor, clip: float) -> tuple[Tensor, Tensor]:
    """(p_c, log p_c) with p_c = max(p, clip)."""
    p_c = p.clamp_min(clip)
    return p_c, p_c.log()


def sequence_kl(p: Tensor, r: Tensor, clip: float = 1e-8) -> Tensor:
    """KL_clip(p || r) = sum_{i, a} p_c (log p_c - log r_c) over the L positions and q symbols, with
    p_c = max(p, clip), r_c = max(r, clip), not renormalised (module docstring; docs/theory/generalization.md
    section 9): p, r (..., L, q) with broadcastable leading axes -> (...,)."""
    _pair_of_laws(p, r)
    clip = check_open_unit("clip", clip)
    p_c, log_p = _clipped_log(p, clip)
    return (p_c * (log_p - _clipped_log(r, clip)[1])).sum((-2, -1))


def symmetric_kl(p: Tensor, r: Tensor, clip: float = 1e-8) -> Tensor:
    """(KL_clip(p || r) + KL_clip(r || p)) / 2 = (1/2) sum_{i, a} (p_c - r_c)(log p_c - log r_c) (clipping as in
    :func:`sequence_kl`): p, r (..., L, q) -> (...,)."""
    _pair_of_laws(p, r)
    clip = check_open_unit("clip", clip)
    p_c, log_p = _clipped_log(p, clip)
    r_c, log_r = _clipped_log(r, clip)
    return 0.5 * ((p_c - r_c) * (log_p - log_r)).sum((-2, -1))


def pairwise_kl(probs: Tensor, pairs: list[tuple[int, int]], symmetric: bool = True, clip: float = 1e-8) -> Tensor:
    """Sample-split KL D_AB per pair of members and input (docs/theory/generalization.md section 9, sample-split
    KL): probs (E, N, L, q), the laws of E models on the same N inputs -> (P, N), row k the :func:`symmetric_kl`
    (or with ``symmetric=False`` the :func:`sequence_kl` KL_clip(probs[a] || probs[b])) of pair k = (a, b)."""
    _laws("probs", probs)
    if probs.ndim != 4 or 0 in probs.shape:
        raise ConfigError(f"probs must have shape (E, N, L, q) with every size >= 1 (got {tuple(probs.shape)})")
    if not pairs:
        raise ConfigError("pairs must hold at least one pair (a, b) of members")
    members = len(probs)
    for pair in pairs:
        if len(pair) != 2 or not all(isinstance(m, int) and 0 <= m < members for m in pair):
            raise ConfigError(f"pairs must hold pairs (a, b) of members in [0, {members - 1}] (got {pair!r})")
    kl = symmetric_kl if symmetric else sequence_kl
    return torch.stack([kl(probs[a], probs[b], clip) for a, b in pairs])


def _tokens(name: str, x: Tensor, q: int | None = None) -> Tensor:
    """An integer tensor (..., n, L) with n, L >= 1 and tokens >= 0 (and < q when q is given)."""
    if (not isinstance(x, Tensor) or x.ndim < 2 or x.dtype.is_floating_point or x.dtype.is_complex
            or x.dtype == torch.bool or 0 in x.shape[-2:]):
        raise ConfigError(f"{name} must be an integer tensor of shape (..., n, L) with n, L >= 1")
    if x.numel() and bool((x < 0).any()):
        raise ConfigError(f"{name} must hold tokens >= 0")
    if q is not None and x.numel() and bool((x >= q).any()):
        raise ConfigError(f"{name} must hold tokens in [0, {q - 1}]")
    return x


def _one_hot_rows(x: Tensor, q: int) -> Tensor:
    """Sequences (..., m, L) -> flattened one-hot codes (..., m, L q) float32: e(x) . e(y) counts equal positions."""
    return torch.nn.functional.one_hot(x.long(), q).flatten(-2).to(torch.float32)


def hamming_nearest(samples: Tensor, reference: Tensor, chunk: int | None = None) -> Tensor:
    """d(x) = min_y H(x, y) = L - max_y e(x) . e(y): each sample's minimum Hamming distance to the reference set
    (docs/theory/generalization.md section 9, NN-divergence), exact.

    samples (..., M, L) and reference (..., n, L) integer tokens with broadcastable leading axes (e.g. a member
    axis: samples (E, M, L) against each member's own training set (E, n, L), or against one shared set
    (n, L)) -> int64 (..., M). The match counts e(x) . e(y) are float32 products of 0/1 codes, exact for
    L < 2^24 (also under TF32). ``chunk``: reference rows per block (default min(n, 4096)); the samples go
    in blocks of rows such that a block of match counts holds at most 2^24 elements.
    """
    _tokens("samples", samples)
    _tokens("reference", reference)
    length, n = samples.shape[-1], reference.shape[-2]
    if reference.shape[-1] != length:
        raise ConfigError(f"samples and reference must have the same length L (got {length} and "
                          f"{reference.shape[-1]})")
    lead = _lead("samples and reference", samples, reference, 2)
    chunk = min(n, 4096) if chunk is None else check_int_at_least("chunk", chunk, 1)
    q = int(torch.maximum(samples.max(), reference.max())) + 1
    rows = max(1, _BLOCK // (math.prod(lead) * max(chunk, length * q)))
    out = []
    for r0 in range(0, samples.shape[-2], rows):
        a = _one_hot_rows(samples[..., r0:r0 + rows, :], q)  # (..., rows, L q)
        best = None
        for c0 in range(0, n, chunk):
            b = _one_hot_rows(reference[..., c0:c0 + chunk, :], q)  # (..., chunk, L q)
            matches = torch.matmul(a, b.mT).amax(-1)  # (lead..., rows)
            best = matches if best is None else torch.maximum(best, matches)
        out.append(length - best.to(torch.int64))
    return torch.cat(out, dim=-1)


def exact_copies(samples: Tensor, train: Tensor, chunk: int | None = None) -> Tensor:
    """Bool (..., M): True where a sample equals some training sequence, d(x) = 0 (:func:`hamming_nearest`), the
    sequence analogue of the memorisation indicator of docs/theory/generalization.md section 2."""
    return hamming_nearest(samples, train, chunk) == 0


def _distances(name: str, d: Tensor, length: int) -> Tensor:
    """Integer distances (m,) with m >= 1, each in [0, L]."""
    if not isinstance(d, Tensor) or d.ndim != 1 or len(d) == 0 or d.dtype.is_floating_point or d.dtype == torch.bool:
        raise ConfigError(f"{name} must be an integer tensor of shape (m,) with m >= 1")
    if bool((d < 0).any()) or bool((d > length).any()):
        raise ConfigError(f"{name} must hold distances in [0, L = {length}]")
    return d


def distance_histogram(d: Tensor, length: int) -> Tensor:
    """P(k) = #{j : d_j = k} / m for k = 0..L: the normalised histogram of integer distances d (m,) in [0, L]
    -> float64 (L + 1,) on d's device."""
    length = check_int_at_least("L", length, 1)
    d = _distances("d", d, length)
    return torch.bincount(d.long(), minlength=length + 1).to(torch.float64) / len(d)


def nn_divergence(d_gen: Tensor, d_ref: Tensor, length: int, clip: float = 1e-8) -> float:
    """NN-divergence KL(P_gen || P_ref) = sum_k P_c,gen(k) (log P_c,gen(k) - log P_c,ref(k)) over the integer
    distances k = 0..L (docs/theory/generalization.md section 9, NN-divergence): P the
    :func:`distance_histogram` of the generated samples' d_gen (m,) and of the held-out sequences' d_ref (n,),
    both clipped from below at ``clip`` and not renormalised, as in :func:`sequence_kl`."""
    clip = check_open_unit("clip", clip)
    p_gen, p_ref = distance_histogram(d_gen, length), distance_histogram(d_ref, length)
    return float(sequence_kl(p_gen[None], p_ref[None], clip))


def uturn_overlap(denoised: Tensor, original: Tensor) -> Tensor:
    """overlap_j = (1/L) #{i : denoised_j,i = original_j,i}: the fraction of positions a U-turn (noise the
    original, denoise back to t = 0) gives back (docs/theory/generalization.md section 9, U-turn). denoised
    (..., N, L) and original (..., N, L) with leading axes that broadcast (e.g. original (N, L) shared by the
    members of an ensemble, or (E, N, L) one set per member), integer tokens -> float64 (..., N)."""
    _tokens("denoised", denoised)
    _tokens("original", original)
    try:
        lead = torch.broadcast_shapes(denoised.shape[:-2], original.shape[:-2])
    except RuntimeError:
        lead = None
    if original.ndim < 2 or denoised.ndim < 2 or denoised.shape[-2:] != original.shape[-2:] or lead is None:
        raise ConfigError(f"denoised must have shape (..., N, L) and original (..., N, L) with the same (N, L) and "
                          f"leading axes that broadcast (got {tuple(denoised.shape)} and {tuple(original.shape)})")
    return (denoised == original).to(torch.float64).mean(-1)


def uturn_ratio(model_overlap: Tensor, bp_overlap: Tensor) -> tuple[Tensor, Tensor]:
    """(mean, SEM) over sequences of r_j = overlap_model,j / overlap_BP,j (docs/theory/generalization.md
    section 9, U-turn), SEM = std(r, ddof = 1) / sqrt(N). model_overlap (..., N) and bp_overlap (..., N) with
    leading axes that broadcast and N >= 2: per-sequence overlaps, e.g. :func:`uturn_overlap` averaged over the
    repetitions; returns two float64 tensors of the broadcast leading shape (0-d for 1-d inputs). A sequence
    with zero BP overlap has no ratio and raises ConfigError (it is not silently dropped)."""
    for name, x in (("model_overlap", model_overlap), ("bp_overlap", bp_overlap)):
        if not isinstance(x, Tensor) or x.ndim < 1 or x.shape[-1] < 2:
            raise ConfigError(f"{name} must be a tensor of shape (..., N) with N >= 2")
    try:
        torch.broadcast_shapes(model_overlap.shape, bp_overlap.shape)
    except RuntimeError:
        raise ConfigError(f"model_overlap and bp_overlap must have shapes that broadcast with the same N (got "
                          f"{tuple(model_overlap.shape)} and {tuple(bp_overlap.shape)})") from None
    if model_overlap.shape[-1] != bp_overlap.shape[-1]:
        raise ConfigError(f"model_overlap and bp_overlap must have the same N (got {tuple(model_overlap.shape)} "
                          f"and {tuple(bp_overlap.shape)})")
    zeros = int((bp_overlap <= 0).sum())
    if zeros:
        raise ConfigError(f"bp_overlap must be > 0 for every sequence (got {zeros} sequences <= 0)")
    r = model_overlap.to(torch.float64) / bp_overlap.to(torch.float64)
    return r.mean(-1), r.std(-1) / math.sqrt(r.shape[-1])


def loss_decomposition(log_p: Tensor, x0: Tensor, posterior: Tensor) -> dict[str, Tensor]:
    """Loss decomposition per input, summed over the L positions (docs/theory/generalization.md section 9, loss
    decomposition):

        l  = -e(x0) . log p,
        l* = -x0* . log p = H(x0*) + KL(x0* || p)        (distillation part),
        l~ = l - l* = -(e(x0) - x0*) . log p              (data-dependent excess),

    with p the model's law log_p (..., N, L, q) (log-probabilities), x0 (..., N, L) the clean tokens and x0* =
    posterior (..., N, L, q) the exact posterior E[e(x0) | x_t] (BP leaf marginals); x0 and posterior may have
    fewer leading axes than log_p (e.g. inputs shared by the members of an ensemble) or the same (one set per
    member). Terms with x0*[i, a] = 0 count 0 even where log p = -inf. Returns {"l", "l_star", "l_tilde"}, each
    (..., N) in log_p's dtype."""
    _laws("log_p", log_p)
    _laws("posterior", posterior)
    lead = log_p.shape[:-3]
    if (posterior.ndim < 3 or log_p.ndim < 3 or log_p.shape[-3:] != posterior.shape[-3:]
            or posterior.shape[:-3] != lead[len(lead) - (posterior.ndim - 3):]):
        raise ConfigError(f"log_p must have shape (..., N, L, q) and posterior (..., N, L, q) with the same (N, L, q) "
                          f"and trailing leading axes (got {tuple(log_p.shape)} and {tuple(posterior.shape)})")
    _tokens("x0", x0, posterior.shape[-1])
    if x0.shape != posterior.shape[:-1]:
        raise ConfigError(f"x0 must have shape {tuple(posterior.shape[:-1])} (got {tuple(x0.shape)})")
    index = x0.long().expand(*log_p.shape[:-1]).unsqueeze(-1)
    loss = -log_p.gather(-1, index).squeeze(-1).sum(-1)
    weights = posterior.to(log_p.dtype)
    distill = -torch.where(weights > 0, weights * log_p, 0).sum((-2, -1))
    return {"l": loss, "l_star": distill, "l_tilde": loss - distill}


def grammatical_fraction(grammar: HierarchicalGrammar, samples: Tensor) -> float:
    """Fraction of samples (M, L) that the grammar parses: every adjacent pair at every level, bottom-up, is an
    allowed production (:meth:`HierarchicalGrammar.is_grammatical`; docs/theory/generalization.md section 9,
    grammaticality)."""
    return float(grammar.is_grammatical(samples).to(torch.float64).mean())
