"""Sequence metrics against brute force and closed forms: clipped KLs (explicit sums), Hamming nearest distances
(all pairs compared position by position), histograms and NN-divergence (counting), U-turn overlaps, the loss
decomposition (E[l~] = 0 on fresh grammar data with the exact BP posterior, and l* = H + KL), grammaticality
(the enumerated support)."""

from __future__ import annotations

import math

import pytest
import torch

from easyhard._validate import ConfigError
from easyhard.data.grammar import HierarchicalGrammar
from easyhard.metrics.sequences import (
    distance_histogram, exact_copies, grammatical_fraction, hamming_nearest, loss_decomposition, nn_divergence,
    pairwise_kl, sequence_kl, symmetric_kl, uturn_overlap, uturn_ratio)
from easyhard.oracles.grammar_bp import BeliefPropagationDenoiser


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _laws(shape: tuple[int, ...], seed: int, sparsity: float = 0.0) -> torch.Tensor:
    """Random per-position laws (..., L, q) float64, with about a ``sparsity`` fraction of exact zeros."""
    gen = _gen(seed)
    w = torch.rand(shape, generator=gen, dtype=torch.float64) ** 3
    w = torch.where(torch.rand(shape, generator=gen, dtype=torch.float64) < sparsity, 0.0, w)
    w[..., 0] += 1e-3  # no all-zero row
    return w / w.sum(-1, keepdim=True)


def _kl_loop(p: torch.Tensor, r: torch.Tensor, clip: float) -> float:
    """sum over positions and symbols of max(p, clip) (log max(p, clip) - log max(r, clip)), entry by entry."""
    total = 0.0
    for i in range(p.shape[0]):
        for a in range(p.shape[1]):
            pc, rc = max(float(p[i, a]), clip), max(float(r[i, a]), clip)
            total += pc * (math.log(pc) - math.log(rc))
    return total


def test_sequence_kl_is_the_clipped_sum_over_positions():
    p, r = _laws((3, 4, 5, 6), 0, sparsity=0.3), _laws((3, 4, 5, 6), 1, sparsity=0.3)
    kl = sequence_kl(p, r)
    assert kl.shape == (3, 4) and kl.dtype == torch.float64
    for idx in [(0, 0), (1, 2), (2, 3)]:
        assert float(kl[idx]) == pytest.approx(_kl_loop(p[idx], r[idx], 1e-8), rel=1e-12, abs=1e-12)
    assert float(sequence_kl(p, r, clip=1e-3)[1, 1]) == pytest.approx(_kl_loop(p[1, 1], r[1, 1], 1e-3), rel=1e-12)
    # no zeros: the plain KL, >= 0, zero exactly at p = r; broadcasting over leading axes
    p, r = _laws((4, 5, 6), 2), _laws((5, 6), 3)
    plain = (p * (p.log() - r.log())).sum((-2, -1))
    torch.testing.assert_close(sequence_kl(p, r), plain, rtol=1e-12, atol=1e-12)
    assert bool((plain > 0).all()) and float(sequence_kl(p, p).abs().max()) == 0.0


def test_clipping_bounds_the_kl_of_a_zero_in_the_reference():
    """p puts mass 1/2 where r has none: that position adds (1/2)(log(1/2) - log clip), finite."""
    p = torch.tensor([[[0.5, 0.5, 0.0]]], dtype=torch.float64)
    r = torch.tensor([[[1.0, 0.0, 0.0]]], dtype=torch.float64)
    clip = 1e-8
    expected = 0.5 * (math.log(0.5) - math.log(1.0)) + 0.5 * (math.log(0.5) - math.log(clip))
    expected += clip * (math.log(clip) - math.log(clip))
    assert float(sequence_kl(p, r, clip)[0]) == pytest.approx(expected, rel=1e-12)


def test_symmetric_kl_is_the_mean_of_both_directions():
    p, r = _laws((7, 8, 6), 4, sparsity=0.2), _laws((7, 8, 6), 5, sparsity=0.2)
    both = 0.5 * (sequence_kl(p, r) + sequence_kl(r, p))
    torch.testing.assert_close(symmetric_kl(p, r), both, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(symmetric_kl(p, r), symmetric_kl(r, p), rtol=0, atol=0)


@pytest.mark.parametrize("symmetric", [True, False])
def test_pairwise_kl_per_pair_and_input(symmetric):
    probs = _laws((4, 9, 8, 6), 6, sparsity=0.2)
    pairs = [(0, 1), (2, 3), (3, 0), (1, 1)]
    out = pairwise_kl(probs, pairs, symmetric=symmetric)
    assert out.shape == (4, 9)
    one = symmetric_kl if symmetric else sequence_kl
    for k, (a, b) in enumerate(pairs):
        torch.testing.assert_close(out[k], one(probs[a], probs[b]), rtol=1e-12, atol=1e-12)
    assert float(out[3].abs().max()) == 0.0


def _hamming_brute(samples: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """min over reference rows of the number of differing positions, all pairs at once: (M, L), (n, L) -> (M,)."""
    return (samples[:, None, :] != reference[None, :, :]).sum(-1).min(-1).values


@pytest.mark.parametrize("chunk", [None, 1, 7, 200])
def test_hamming_nearest_equals_brute_force(chunk):
    gen = _gen(7)
    reference = torch.randint(4, (150, 12), generator=gen)
    samples = torch.randint(4, (90, 12), generator=gen)
    samples[:10] = reference[5:15]  # copies
    samples[10:20] = reference[20:30]
    samples[10:20, 3] = (samples[10:20, 3] + 1) % 4  # one substitution
    d = hamming_nearest(samples, reference, chunk)
    assert d.dtype == torch.int64 and d.shape == (90,)
    assert torch.equal(d, _hamming_brute(samples, reference))
    assert bool((d[:10] == 0).all()) and bool((d[10:20] <= 1).all())
    assert torch.equal(exact_copies(samples, reference, chunk), d == 0)


def test_hamming_nearest_with_a_member_axis_and_a_shared_reference():
    gen = _gen(8)
    samples = torch.randint(6, (3, 40, 8), generator=gen, dtype=torch.int32)
    own = torch.randint(6, (3, 60, 8), generator=gen)
    shared = torch.randint(6, (60, 8), generator=gen)
    per_member = hamming_nearest(samples, own, chunk=16)
    against_shared = hamming_nearest(samples, shared)
    assert per_member.shape == against_shared.shape == (3, 40)
    for e in range(3):
        assert torch.equal(per_member[e], _hamming_brute(samples[e], own[e]))
        assert torch.equal(against_shared[e], _hamming_brute(samples[e], shared))


def test_distance_histogram_and_nn_divergence_by_counting():
    length = 6
    d_gen = torch.tensor([0, 1, 1, 2, 2, 2, 3, 6])
    d_ref = torch.tensor([1, 2, 2, 3, 3, 4])
    hist = distance_histogram(d_gen, length)
    assert hist.shape == (7,) and hist.dtype == torch.float64
    expected = torch.tensor([1, 2, 3, 1, 0, 0, 1], dtype=torch.float64) / 8
    torch.testing.assert_close(hist, expected, rtol=0, atol=0)
    p = [max(float(v), 1e-8) for v in expected]
    r = [max(c / 6, 1e-8) for c in (0, 1, 2, 2, 1, 0, 0)]
    closed = sum(pk * (math.log(pk) - math.log(rk)) for pk, rk in zip(p, r))
    assert nn_divergence(d_gen, d_ref, length) == pytest.approx(closed, rel=1e-12)
    assert nn_divergence(d_ref, d_ref, length) == 0.0


def test_uturn_overlap_and_ratio():
    original = torch.tensor([[0, 1, 2, 3], [3, 3, 3, 3], [1, 0, 1, 0]])
    denoised = original.expand(2, 3, 4).clone()
    denoised[0, 0, :2] = 5
    denoised[1, 2] = 2
    overlap = uturn_overlap(denoised, original)
    assert overlap.dtype == torch.float64
    torch.testing.assert_close(overlap, torch.tensor([[0.5, 1.0, 1.0], [1.0, 1.0, 0.0]], dtype=torch.float64))
    model, bp = torch.tensor([0.5, 0.9, 0.6, 0.3]), torch.tensor([1.0, 0.9, 0.8, 0.6])
    ratios = [0.5, 1.0, 0.75, 0.5]
    mean = sum(ratios) / 4
    sem = math.sqrt(sum((x - mean) ** 2 for x in ratios) / 3) / 2
    assert uturn_ratio(model, bp) == pytest.approx((mean, sem), rel=1e-6)
    with pytest.raises(ConfigError, match="bp_overlap must be > 0"):
        uturn_ratio(model, torch.tensor([1.0, 0.0, 0.8, 0.6]))


def _grammar_batch(grammar: HierarchicalGrammar, n: int, abar: float, seed: int):
    """Fresh (x0 (n, L), x_t (n, L, q), exact posterior (n, L, q)) at noise level abar."""
    gen = _gen(seed)
    x0 = grammar.sample(n, gen)
    noise = torch.randn((n, grammar.length, grammar.q), generator=gen, dtype=torch.float64)
    x_t = math.sqrt(abar) * grammar.one_hot(x0) + math.sqrt(1 - abar) * noise
    return x0, x_t, BeliefPropagationDenoiser(grammar)(x_t, abar)


def _smooth_model(x_t: torch.Tensor, seed: int) -> torch.Tensor:
    """A fixed random smooth function of x_t (n, L, q) -> log-probabilities (n, L, q), mixing all positions."""
    n, length, q = x_t.shape
    gen = _gen(seed)
    w1 = torch.randn((length * q, 32), generator=gen, dtype=torch.float64) / math.sqrt(length * q)
    w2 = torch.randn((32, length * q), generator=gen, dtype=torch.float64)
    logits = torch.tanh(x_t.reshape(n, -1) @ w1) @ w2 + 2 * x_t.reshape(n, -1)
    return torch.log_softmax(logits.view(n, length, q), -1)


def test_loss_decomposition_excess_is_zero_on_fresh_data_and_negative_for_a_copying_model():
    grammar = HierarchicalGrammar.create(depth=3, q=6, q_eff=4, seed=0)
    x0, x_t, posterior = _grammar_batch(grammar, 4000, abar=0.4, seed=1)
    parts = loss_decomposition(_smooth_model(x_t, 2), x0, posterior)
    assert set(parts) == {"l", "l_star", "l_tilde"} and parts["l"].shape == (4000,)
    excess = parts["l_tilde"]
    se = float(excess.std() / math.sqrt(len(excess)))
    assert abs(float(excess.mean())) < 4 * se
    # power: with the prior leaf marginals in place of the posterior the excess is far from 0
    prior = grammar.leaf_marginals().expand_as(posterior)
    wrong = loss_decomposition(_smooth_model(x_t, 2), x0, prior)["l_tilde"]
    assert abs(float(wrong.mean())) > 10 * float(wrong.std() / math.sqrt(len(wrong)))
    # a "model" that has seen x0 (memorisation-type fit): the excess is far below 0
    cheat = torch.log_softmax(_smooth_model(x_t, 2) + 3 * grammar.one_hot(x0), -1)
    excess = loss_decomposition(cheat, x0, posterior)["l_tilde"]
    assert float(excess.mean()) < -10 * float(excess.std() / math.sqrt(len(excess)))


def test_loss_decomposition_matches_its_definitions_and_entropy_plus_kl():
    grammar = HierarchicalGrammar.create(depth=2, q=5, q_eff=3, seed=3)
    x0, x_t, posterior = _grammar_batch(grammar, 50, abar=0.6, seed=4)
    log_p = torch.stack([_smooth_model(x_t, 5), _smooth_model(x_t, 6)])  # a member axis (2, N, L, q)
    parts = loss_decomposition(log_p, x0, posterior)
    assert parts["l"].shape == (2, 50)
    for e in range(2):
        l_direct = torch.tensor([-sum(float(log_p[e, j, i, x0[j, i]]) for i in range(grammar.length))
                                 for j in range(50)], dtype=torch.float64)
        torch.testing.assert_close(parts["l"][e], l_direct, rtol=1e-12, atol=1e-12)
        excess = -((grammar.one_hot(x0) - posterior) * log_p[e]).sum((-2, -1))
        torch.testing.assert_close(parts["l_tilde"][e], excess, rtol=1e-10, atol=1e-10)
        entropy = -torch.special.xlogy(posterior, posterior).sum((-2, -1))
        kl = sequence_kl(posterior, log_p[e].exp(), clip=1e-300)
        torch.testing.assert_close(parts["l_star"][e], entropy + kl, rtol=1e-10, atol=1e-10)


def test_loss_decomposition_counts_zero_posterior_terms_as_zero():
    posterior = torch.tensor([[[1.0, 0.0]]], dtype=torch.float64)
    log_p = torch.tensor([[[0.0, -math.inf]]], dtype=torch.float64)
    parts = loss_decomposition(log_p, torch.tensor([[0]]), posterior)
    assert float(parts["l"][0]) == 0.0 and float(parts["l_star"][0]) == 0.0 and float(parts["l_tilde"][0]) == 0.0


def test_grammatical_fraction_against_the_enumerated_support():
    grammar = HierarchicalGrammar.create(depth=2, q=4, q_eff=2, seed=1)
    assert grammatical_fraction(grammar, grammar.sample(200, _gen(0))) == 1.0
    support = set()
    for root in range(4):
        for b, c in zip(*torch.nonzero(grammar.productions[root] > 0, as_tuple=True)):
            for bl, br in zip(*torch.nonzero(grammar.productions[b] > 0, as_tuple=True)):
                for cl, cr in zip(*torch.nonzero(grammar.productions[c] > 0, as_tuple=True)):
                    support.add((int(bl), int(br), int(cl), int(cr)))
    assert len(support) == 4 * 2**3
    samples = torch.randint(4, (500, 4), generator=_gen(2))
    expected = sum(tuple(s.tolist()) in support for s in samples) / 500
    assert grammatical_fraction(grammar, samples) == expected and 0 < expected < 1


def test_bad_inputs_raise_config_errors():
    p = _laws((2, 4, 3), 0)
    with pytest.raises(ConfigError, match=r"same \(L, q\)"):
        sequence_kl(p, _laws((2, 4, 5), 1))
    with pytest.raises(ConfigError, match=r"same \(L, q\)"):
        symmetric_kl(p, _laws((2, 5, 3), 1))
    with pytest.raises(ConfigError, match="broadcastable"):
        sequence_kl(p, _laws((3, 4, 3), 1))
    with pytest.raises(ConfigError, match="clip must lie in"):
        sequence_kl(p, p, clip=0.0)
    with pytest.raises(ConfigError, match="floating tensor"):
        sequence_kl(torch.ones((4, 3), dtype=torch.int64), p)
    with pytest.raises(ConfigError, match="members in"):
        pairwise_kl(p[None].expand(2, 2, 4, 3), [(0, 2)])
    with pytest.raises(ConfigError, match="at least one pair"):
        pairwise_kl(p[None].expand(2, 2, 4, 3), [])
    tokens = torch.zeros((5, 8), dtype=torch.int64)
    with pytest.raises(ConfigError, match="same length L"):
        hamming_nearest(tokens, torch.zeros((5, 7), dtype=torch.int64))
    with pytest.raises(ConfigError, match="tokens >= 0"):
        hamming_nearest(tokens - 1, tokens)
    with pytest.raises(ConfigError, match="integer tensor"):
        hamming_nearest(tokens.double(), tokens)
    with pytest.raises(ConfigError, match="chunk must be an integer >= 1"):
        hamming_nearest(tokens, tokens, chunk=0)
    with pytest.raises(ConfigError, match=r"distances in \[0, L = 4\]"):
        distance_histogram(torch.tensor([0, 5]), 4)
    with pytest.raises(ConfigError, match="same \\(N, L\\)"):
        uturn_overlap(tokens[None], tokens[:, :4])
    posterior = _laws((5, 8, 3), 2)
    with pytest.raises(ConfigError, match=r"tokens in \[0, 2\]"):
        loss_decomposition(posterior.log(), tokens + 3, posterior)
    with pytest.raises(ConfigError, match="same \\(N, L, q\\)"):
        loss_decomposition(_laws((5, 8, 4), 3).log(), tokens, posterior)
    with pytest.raises(ConfigError, match=r"x0 must have shape \(5, 8\)"):
        loss_decomposition(posterior.log(), tokens[:, :4], posterior)


def test_per_member_inputs_broadcast_like_shared_ones():
    """uturn_overlap, uturn_ratio and loss_decomposition with one input set per member (E, N, ...) equal the
    per-member calls with shared inputs."""
    g = torch.Generator().manual_seed(3)
    E, N, L, q = 3, 5, 4, 3
    original = torch.randint(0, q, (E, N, L), generator=g)
    denoised = torch.randint(0, q, (E, N, L), generator=g)
    log_p = torch.log_softmax(torch.randn(E, N, L, q, generator=g, dtype=torch.float64), -1)
    posterior = torch.softmax(torch.randn(E, N, L, q, generator=g, dtype=torch.float64), -1)
    overlap = uturn_overlap(denoised, original)
    bp = torch.rand(E, N, generator=g, dtype=torch.float64) + 0.5
    mean, sem = uturn_ratio(overlap, bp)
    whole = loss_decomposition(log_p, original, posterior)
    for e in range(E):
        torch.testing.assert_close(overlap[e], uturn_overlap(denoised[e], original[e]))
        m, s = uturn_ratio(overlap[e], bp[e])
        torch.testing.assert_close((mean[e], sem[e]), (m, s))
        one = loss_decomposition(log_p[e], original[e], posterior[e])
        for key in one:
            torch.testing.assert_close(whole[key][e], one[key])
    with pytest.raises(ConfigError, match="original"):
        uturn_overlap(denoised, original[:2])
