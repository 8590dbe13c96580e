"""BeliefPropagationDenoiser: equals the posterior mean by brute-force enumeration of every sequence with
positive probability (Gaussian likelihood written out, not the evidence formula), and has the right limits;
BP_k equals the posterior mean of the factorised model by enumeration of its configurations; the curves
KL(BP_0 || BP_k)(t) have the ordering of docs/theory/grammar.md section 1.6."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from easyhard._validate import ConfigError
from easyhard.data.grammar import HierarchicalGrammar
from easyhard.diffusion import DDPMSchedule, NoiseLevel
from easyhard.oracles.grammar_bp import BeliefPropagationDenoiser, factorisation_kl, root_channels

#: the sequence schedule of docs/theory/generalization.md section 1 (T = 500, t in 1..500)
SCHEDULE = DDPMSchedule(T=500, beta_start=2e-4, beta_end=0.04, index_base=1)


def _subtrees(grammar: HierarchicalGrammar, symbol: int, depth: int) -> list[tuple[tuple[int, ...], float]]:
    """Every leaf sequence of positive probability of a subtree of ``depth`` levels below a node carrying
    ``symbol``, with its log probability, top-down."""
    if depth == 0:
        return [((symbol,), 0.0)]
    out = []
    for b, c in zip(*torch.nonzero(grammar.productions[symbol] > 0, as_tuple=True)):
        log_p = math.log(grammar.productions[symbol, b, c])
        out += [(ls + rs, log_p + lp + rp) for ls, lp in _subtrees(grammar, int(b), depth - 1)
                for rs, rp in _subtrees(grammar, int(c), depth - 1)]
    return out


def _factorised_configurations(grammar: HierarchicalGrammar, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Leaf sequences (S, L) and log probabilities (S,) of every configuration of the factorised model: root r
    uniform, the 2^k level-k nodes independent given r with laws P_j[r, .] (P_j multiplied out along the path,
    bit 0 = left), exact subtrees below them. A sequence appears once per configuration producing it."""
    left, right = grammar.productions.sum(2), grammar.productions.sum(1)
    channels = []
    for j in range(2 ** k):
        p = torch.eye(grammar.q, dtype=torch.float64)
        for step in range(k):
            p = p @ (right if (j >> (k - 1 - step)) & 1 else left)
        channels.append(p)
    below = {s: _subtrees(grammar, s, grammar.depth - k) for s in range(grammar.q)}
    sequences, log_probs = [], []
    for r in range(grammar.q):
        options = [[(seq, math.log(p[r, s]) + lp) for s in range(grammar.q) if p[r, s] > 0 for seq, lp in below[s]]
                   for p in channels]
        for choice in itertools.product(*options):
            sequences.append(sum((seq for seq, _ in choice), ()))
            log_probs.append(sum(lp for _, lp in choice) - math.log(grammar.q))
    return torch.tensor(sequences), torch.tensor(log_probs, dtype=torch.float64)


def _brute_force_posterior(grammar: HierarchicalGrammar, x_t: torch.Tensor, abar: float,
                           factorised: int = 0) -> torch.Tensor:
    sequences, log_prior = _factorised_configurations(grammar, factorised)
    codes = grammar.one_hot(sequences)  # (S, L, q)
    sq = ((x_t[:, None] - math.sqrt(abar) * codes[None]) ** 2).sum((2, 3))  # (B, S)
    weights = torch.softmax(log_prior[None] - sq / (2 * (1 - abar)), dim=1)
    return torch.einsum("bs,slq->blq", weights, codes)


def _noisy(grammar, n, abar, seed):
    gen = torch.Generator().manual_seed(seed)
    x0 = grammar.sample(n, gen)
    eps = torch.randn(n, grammar.length, grammar.q, generator=gen, dtype=torch.float64)
    return x0, math.sqrt(abar) * grammar.one_hot(x0) + math.sqrt(1 - abar) * eps


@pytest.mark.parametrize(("depth", "q", "q_eff"), [(3, 3, 2), (2, 4, 2), (1, 3, 3), (3, 3, 1)])
@pytest.mark.parametrize("abar", [0.05, 0.3, 0.7, 0.95])
def test_bp_equals_brute_force_enumeration(depth, q, q_eff, abar):
    grammar = HierarchicalGrammar.create(depth=depth, q=q, q_eff=q_eff, sigma=1.0, seed=depth + q)
    _, x_t = _noisy(grammar, 6, abar, seed=11)
    x_t[0] = 2 * torch.randn(x_t.shape[1:], generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    posterior = BeliefPropagationDenoiser(grammar)(x_t, abar)
    torch.testing.assert_close(posterior, _brute_force_posterior(grammar, x_t, abar), rtol=0, atol=1e-10)


def test_per_sequence_abar_tensor_equals_scalar_calls():
    grammar = HierarchicalGrammar.create(depth=3, q=4, q_eff=3)
    _, x_t = _noisy(grammar, 3, 0.5, seed=1)
    abar = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    bp = BeliefPropagationDenoiser(grammar)
    expected = torch.cat([bp(x_t[i:i + 1], float(a)) for i, a in enumerate(abar)])
    torch.testing.assert_close(bp(x_t, abar), expected, rtol=0, atol=1e-13)


def test_posteriors_are_distributions():
    grammar = HierarchicalGrammar.create()
    _, x_t = _noisy(grammar, 32, 0.4, seed=2)
    posterior = BeliefPropagationDenoiser(grammar)(x_t, 0.4)
    assert posterior.shape == (32, 16, 6) and posterior.dtype == torch.float64
    assert (posterior >= 0).all()
    torch.testing.assert_close(posterior.sum(-1), torch.ones(32, 16, dtype=torch.float64), rtol=0, atol=1e-12)


def test_clean_limit_gives_the_one_hot_of_x0():
    grammar = HierarchicalGrammar.create()
    abar = 1 - 1e-9
    x0, x_t = _noisy(grammar, 32, abar, seed=3)
    posterior = BeliefPropagationDenoiser(grammar)(x_t, abar)
    torch.testing.assert_close(posterior, grammar.one_hot(x0), rtol=0, atol=1e-9)


@pytest.mark.parametrize("abar", [SCHEDULE.alpha_bar(1), 1 - 1e-6])
def test_first_step_gives_the_one_hot_of_x0_on_almost_every_site(abar):
    """docs/theory/generalization.md G10: at t = 1 the posterior is the one-hot of x0 on > 99.9% of sites."""
    grammar = HierarchicalGrammar.create()
    x0, x_t = _noisy(grammar, 256, abar, seed=6)
    error = (BeliefPropagationDenoiser(grammar)(x_t, abar) - grammar.one_hot(x0)).abs().amax(-1)
    assert (error < 1e-6).double().mean() > 0.999


def test_pure_noise_limit_gives_the_prior_marginals():
    grammar = HierarchicalGrammar.create()
    _, x_t = _noisy(grammar, 32, 1e-14, seed=4)
    posterior = BeliefPropagationDenoiser(grammar)(x_t, 1e-14)
    torch.testing.assert_close(posterior, grammar.leaf_marginals().expand(32, -1, -1), rtol=0, atol=1e-6)


@pytest.mark.parametrize("abar", [1e-8, SCHEDULE.alpha_bar(500)])
def test_weak_evidence_bound_on_the_distance_to_the_prior_marginals(abar):
    """The evidence multiplies each configuration's prior by exp(sum_i h_i,x_i), which lies within a factor
    exp(R) of every other configuration's, R = sum_i (max_a h_i,a - min_a h_i,a); hence every posterior
    marginal lies within [e^-R, e^R] times the prior marginal, |p_post - p| <= (e^R - 1) p."""
    grammar = HierarchicalGrammar.create()
    _, x_t = _noisy(grammar, 64, abar, seed=7)
    h = math.sqrt(abar) / (1 - abar) * x_t
    spread = (h.amax(-1) - h.amin(-1)).sum(-1)  # R per sequence
    prior = grammar.leaf_marginals()
    deviation = (BeliefPropagationDenoiser(grammar)(x_t, abar) - prior).abs()
    assert (deviation <= torch.expm1(spread)[:, None, None] * prior * (1 + 1e-9) + 1e-15).all()


@pytest.mark.parametrize("abar", [0.0, 1.0, -0.1, float("nan")])
def test_abar_outside_open_unit_interval_is_rejected(abar):
    grammar = HierarchicalGrammar.create(depth=2, q=3, q_eff=2)
    bp = BeliefPropagationDenoiser(grammar)
    with pytest.raises(ConfigError, match="^abar "):
        bp(torch.zeros(2, 4, 3), abar)
    with pytest.raises(ConfigError, match="^abar "):
        bp(torch.zeros(2, 4, 3), torch.tensor([0.5, abar]))


def test_x_t_shape_is_validated():
    bp = BeliefPropagationDenoiser(HierarchicalGrammar.create(depth=2, q=3, q_eff=2))
    with pytest.raises(ConfigError, match="^x_t "):
        bp(torch.zeros(2, 4, 4), 0.5)


def test_noise_level_and_batch_shapes_match_the_plain_call():
    grammar = HierarchicalGrammar.create(depth=3, q=4, q_eff=3)
    bp = BeliefPropagationDenoiser(grammar, factorised=1)
    _, x_t = _noisy(grammar, 6, 0.5, seed=8)
    i = torch.tensor([10, 60, 120])
    by_abar = bp(x_t.view(2, 3, 8, 4), SCHEDULE.alpha_bar(i))
    by_level = bp(x_t.view(2, 3, 8, 4), NoiseLevel.at_index(SCHEDULE, i))
    flat = torch.cat([bp(x_t[b:b + 1], SCHEDULE.alpha_bar(int(i[b % 3]))) for b in range(6)])
    torch.testing.assert_close(by_abar, flat.view(2, 3, 8, 4), rtol=0, atol=1e-12)
    torch.testing.assert_close(by_level, by_abar, rtol=0, atol=1e-12)
    assert bp.prediction == "x0" and (bp.length, bp.q) == (8, 4)


@pytest.mark.parametrize(("depth", "q", "q_eff"), [(3, 3, 2), (2, 4, 2), (3, 3, 3)])
@pytest.mark.parametrize("abar", [0.2, 0.8])
def test_factorised_bp_equals_brute_force_of_the_factorised_model(depth, q, q_eff, abar):
    grammar = HierarchicalGrammar.create(depth=depth, q=q, q_eff=q_eff, sigma=1.0, seed=depth * q + q_eff)
    _, x_t = _noisy(grammar, 4, abar, seed=12)
    for k in range(depth + 1):
        posterior = BeliefPropagationDenoiser(grammar, factorised=k)(x_t, abar)
        torch.testing.assert_close(posterior, _brute_force_posterior(grammar, x_t, abar, factorised=k),
                                   rtol=0, atol=1e-10)
        torch.testing.assert_close(posterior.sum(-1), torch.ones(4, grammar.length, dtype=torch.float64),
                                   rtol=0, atol=1e-12)


def test_leaf_channels_push_the_uniform_root_to_the_leaf_marginals():
    """At k = depth, (1/q) 1^T P_j is the law of leaf j: eq. 1.3 applied along the path."""
    grammar = HierarchicalGrammar.create(depth=4, q=5, q_eff=3, seed=2)
    channels = root_channels(grammar, grammar.depth)
    torch.testing.assert_close(channels.sum(-1), torch.ones(16, 5, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(channels.mean(1), grammar.leaf_marginals(), rtol=0, atol=1e-12)


@pytest.mark.parametrize("factorised", [1, 2, 3, 4])
def test_factorised_models_keep_the_exact_leaf_marginals(factorised):
    """Node j of level k has the law (1/q) 1^T P_j, its exact marginal, so at abar -> 0 every BP_k gives the
    marginals of section 1.2."""
    grammar = HierarchicalGrammar.create()
    _, x_t = _noisy(grammar, 8, 1e-14, seed=9)
    posterior = BeliefPropagationDenoiser(grammar, factorised=factorised)(x_t, 1e-14)
    torch.testing.assert_close(posterior, grammar.leaf_marginals().expand(8, -1, -1), rtol=0, atol=1e-6)


@pytest.mark.parametrize("factorised", [-1, 4, 1.5, True])
def test_factorised_level_outside_the_tree_is_rejected(factorised):
    with pytest.raises(ConfigError, match="^factorised "):
        BeliefPropagationDenoiser(HierarchicalGrammar.create(depth=3), factorised=factorised)


@pytest.mark.parametrize("depth", [3, 4])
def test_factorisation_kl_peaks_later_and_higher_for_larger_k(depth):
    """docs/theory/grammar.md section 1.6: the peak of KL(BP_0 || BP_k)(t) moves (weakly) later and grows with
    k, and the curves vanish at small t (t <= 0.02 T). 1000 sequences: with a few hundred, the argmax of the
    flat k = 1 curve can fall one 5-step grid point after the k = 2 one."""
    grammar = HierarchicalGrammar.create(depth=depth, q=6, q_eff=4, sigma=1.0, seed=0)
    small, grid = [1, 5, 10], list(range(40, 121, 5))
    kl = factorisation_kl(grammar, SCHEDULE, range(1, depth + 1), small + grid, 1000,
                          torch.Generator().manual_seed(depth))
    assert kl.shape == (depth, len(small) + len(grid)) and (kl >= 0).all()
    peaks = kl.argmax(dim=1)
    heights = kl.amax(dim=1)
    assert (peaks >= len(small)).all() and (peaks[:-1] < len(small) + len(grid) - 1).all()  # interior peaks
    assert (peaks.diff() >= 0).all()
    assert (heights.diff() > 0).all()
    assert (kl[:, :len(small)] < 1e-3 * heights[:, None]).all()


def test_factorisation_kl_of_exact_bp_is_zero():
    grammar = HierarchicalGrammar.create(depth=2, q=4, q_eff=2)
    kl = factorisation_kl(grammar, SCHEDULE, [0], [20, 80], 16, torch.Generator().manual_seed(0))
    assert torch.equal(kl, torch.zeros(1, 2, dtype=torch.float64))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("factorised", [0, 2])
def test_cuda_matches_cpu(factorised):
    grammar = HierarchicalGrammar.create()
    _, x_t = _noisy(grammar, 8, 0.5, seed=5)
    bp = BeliefPropagationDenoiser(grammar, factorised=factorised)
    torch.testing.assert_close(bp(x_t.cuda(), 0.5).cpu(), bp(x_t, 0.5), rtol=0, atol=1e-12)
