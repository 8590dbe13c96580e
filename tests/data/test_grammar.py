"""HierarchicalGrammar: construction of docs/theory/grammar.md section 1.1, seeded sampling, grammaticality
against top-down enumeration, exact leaf marginals against sample frequencies."""

from __future__ import annotations

import itertools

import pytest
import torch

from easyhard._validate import ConfigError
from easyhard.data.grammar import HierarchicalGrammar


def _support(grammar: HierarchicalGrammar) -> set[tuple[int, ...]]:
    """Every sequence with positive probability, generated top-down from each root symbol."""
    def expand(symbol: int, depth: int) -> list[tuple[int, ...]]:
        if depth == 0:
            return [(symbol,)]
        out = []
        for b, c in zip(*torch.nonzero(grammar.productions[symbol] > 0, as_tuple=True)):
            out += [left + right for left in expand(int(b), depth - 1) for right in expand(int(c), depth - 1)]
        return out
    return {seq for root in range(grammar.q) for seq in expand(root, grammar.depth)}


def test_create_gives_disjoint_normalised_productions_of_size_q_eff():
    grammar = HierarchicalGrammar.create(depth=4, q=6, q_eff=4, sigma=1.0, seed=0)
    p = grammar.productions
    assert p.shape == (6, 6, 6) and p.dtype == torch.float64
    assert ((p > 0).sum((1, 2)) == 4).all()
    assert ((p > 0).sum(0) <= 1).all() and int((p.sum(0) == 0).sum()) == 36 - 24
    torch.testing.assert_close(p.sum((1, 2)), torch.ones(6, dtype=torch.float64), rtol=0, atol=1e-14)
    assert len(set(p[p > 0].tolist())) > 4  # sigma > 0: weights are not all equal


def test_create_is_seeded():
    first, again = HierarchicalGrammar.create(seed=3), HierarchicalGrammar.create(seed=3)
    assert torch.equal(first.productions, again.productions)
    assert not torch.equal(first.productions, HierarchicalGrammar.create(seed=4).productions)


def test_sigma_zero_gives_uniform_productions():
    p = HierarchicalGrammar.create(q=5, q_eff=3, sigma=0.0).productions
    torch.testing.assert_close(p[p > 0], torch.full((15,), 1 / 3, dtype=torch.float64))


@pytest.mark.parametrize(("kwargs", "name"), [
    ({"depth": 0}, "depth"), ({"depth": 11}, "depth"), ({"q": 1}, "q"), ({"q_eff": 0}, "q_eff"),
    ({"q": 4, "q_eff": 5}, "q_eff"), ({"sigma": -1.0}, "sigma"), ({"sigma": float("nan")}, "sigma"),
    ({"seed": -1}, "seed"),
])
def test_create_rejects_bad_parameters(kwargs, name):
    with pytest.raises(ConfigError, match=rf"^{name} ") as err:
        HierarchicalGrammar.create(**kwargs)
    assert "\n" not in str(err.value)


def test_sampling_is_seeded_and_grammatical():
    grammar = HierarchicalGrammar.create()
    x = grammar.sample(500, torch.Generator().manual_seed(1))
    assert x.shape == (500, 16) and x.dtype == torch.int64
    assert torch.equal(x, grammar.sample(500, torch.Generator().manual_seed(1)))
    assert grammar.is_grammatical(x).all()


def test_a_leaf_forming_a_forbidden_pair_is_ungrammatical():
    grammar = HierarchicalGrammar.create()
    x = grammar.sample(1, torch.Generator().manual_seed(2))
    forbidden = grammar.productions.sum(0) == 0
    (bad,) = torch.nonzero(forbidden[:, x[0, 1]])[0]  # a left symbol that cannot precede x[0, 1]
    x[0, 0] = bad
    assert not grammar.is_grammatical(x).any()


def test_is_grammatical_matches_enumerated_support_on_every_sequence():
    grammar = HierarchicalGrammar.create(depth=3, q=3, q_eff=2, seed=5)
    support = _support(grammar)
    assert len(support) == 3 * 2 ** 7
    everything = torch.tensor(list(itertools.product(range(3), repeat=8)))
    expected = torch.tensor([tuple(seq) in support for seq in everything.tolist()])
    assert torch.equal(grammar.is_grammatical(everything), expected)


def test_leaf_marginals_match_sample_frequencies():
    grammar = HierarchicalGrammar.create()
    n = 20_000
    freq = grammar.one_hot(grammar.sample(n, torch.Generator().manual_seed(7))).mean(0)
    marginals = grammar.leaf_marginals()
    torch.testing.assert_close(marginals.sum(1), torch.ones(16, dtype=torch.float64))
    se = (marginals * (1 - marginals) / n).sqrt()
    assert ((freq - marginals).abs() <= 4 * se + 1e-12).all()


def test_sequences_are_validated():
    grammar = HierarchicalGrammar.create(depth=2, q=3, q_eff=2)
    with pytest.raises(ConfigError, match="^x must"):
        grammar.is_grammatical(torch.zeros(2, 8, dtype=torch.int64))
    with pytest.raises(ConfigError, match="^x must"):
        grammar.one_hot(torch.full((2, 4), 3))


def test_draw_splits_gives_sizes_and_a_test_set_unseen_in_every_split():
    grammar = HierarchicalGrammar.create(depth=3, q=6, q_eff=4, seed=0)
    splits, test = grammar.draw_splits([64, 64, 32], 200, torch.Generator().manual_seed(1))
    assert [len(s) for s in splits] == [64, 64, 32] and test.shape == (200, 8)
    seen = {tuple(row) for s in splits for row in s.tolist()}
    assert not seen & {tuple(row) for row in test.tolist()}
    assert bool(grammar.is_grammatical(test).all())
    again, test_again = grammar.draw_splits([64, 64, 32], 200, torch.Generator().manual_seed(1))
    assert all(torch.equal(a, b) for a, b in zip(splits, again)) and torch.equal(test, test_again)


def test_draw_splits_refuses_a_test_set_larger_than_the_unseen_support():
    grammar = HierarchicalGrammar.create(depth=1, q=2, q_eff=1, seed=0)  # support: 2 sequences
    with pytest.raises(ConfigError, match="n_test"):
        grammar.draw_splits([8], 4, torch.Generator().manual_seed(0))
