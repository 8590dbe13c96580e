"""BeliefPropagationDenoiser: equals the posterior mean by brute-force enumeration of every sequence with
positive probability (Gaussian likelihood written out, not the evidence formula), and has the right limits."""

from __future__ import annotations

import math

import pytest
import torch

from easyhard._validate import ConfigError
from easyhard.data.grammar import HierarchicalGrammar
from easyhard.oracles.grammar_bp import BeliefPropagationDenoiser


def _sequences_with_log_prob(grammar: HierarchicalGrammar) -> tuple[torch.Tensor, torch.Tensor]:
    """All sequences (S, L) with positive probability and their log probabilities (S,), top-down."""
    def expand(symbol: int, depth: int) -> list[tuple[tuple[int, ...], float]]:
        if depth == 0:
            return [((symbol,), 0.0)]
        out = []
        for b, c in zip(*torch.nonzero(grammar.productions[symbol] > 0, as_tuple=True)):
            log_p = math.log(grammar.productions[symbol, b, c])
            out += [(ls + rs, log_p + lp + rp) for ls, lp in expand(int(b), depth - 1)
                    for rs, rp in expand(int(c), depth - 1)]
        return out
    pairs = [(seq, lp - math.log(grammar.q)) for root in range(grammar.q) for seq, lp in expand(root, grammar.depth)]
    return torch.tensor([s for s, _ in pairs]), torch.tensor([lp for _, lp in pairs], dtype=torch.float64)


def _brute_force_posterior(grammar: HierarchicalGrammar, x_t: torch.Tensor, abar: float) -> torch.Tensor:
    sequences, log_prior = _sequences_with_log_prob(grammar)
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


def test_pure_noise_limit_gives_the_prior_marginals():
    grammar = HierarchicalGrammar.create()
    _, x_t = _noisy(grammar, 32, 1e-14, seed=4)
    posterior = BeliefPropagationDenoiser(grammar)(x_t, 1e-14)
    torch.testing.assert_close(posterior, grammar.leaf_marginals().expand(32, -1, -1), rtol=0, atol=1e-6)


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


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    grammar = HierarchicalGrammar.create()
    _, x_t = _noisy(grammar, 8, 0.5, seed=5)
    bp = BeliefPropagationDenoiser(grammar)
    torch.testing.assert_close(bp(x_t.cuda(), 0.5).cpu(), bp(x_t, 0.5), rtol=0, atol=1e-12)
