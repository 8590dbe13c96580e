"""EmpiricalSequenceDenoiser: equals a direct double loop over inputs and stored sequences, and over the full
support of a grammar with uniform productions (uniform law on the support) equals exact BP."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from easyhard._validate import ConfigError
from easyhard.data.grammar import HierarchicalGrammar
from easyhard.diffusion import DDPMSchedule, NoiseLevel
from easyhard.oracles.grammar_bp import BeliefPropagationDenoiser
from easyhard.oracles.sequences import EmpiricalSequenceDenoiser

SCHEDULE = DDPMSchedule(T=500, beta_start=2e-4, beta_end=0.04, index_base=1)


def _direct(x_t: torch.Tensor, sequences: torch.Tensor, q: int, abar: list[float]) -> torch.Tensor:
    """For each input b: weights exp(-||x_t - sqrt(abar) e(x^mu)||^2 / (2 (1 - abar))) / sum, one loop over mu."""
    out = torch.zeros_like(x_t)
    for b in range(x_t.shape[0]):
        codes = [torch.nn.functional.one_hot(seq, q).double() for seq in sequences]
        logits = torch.stack([-((x_t[b] - math.sqrt(abar[b]) * c) ** 2).sum() / (2 * (1 - abar[b])) for c in codes])
        weights = torch.exp(logits - logits.max())
        out[b] = sum(w * c for w, c in zip(weights / weights.sum(), codes))
    return out


def test_equals_direct_loop_for_numbers_tensors_and_levels():
    gen = torch.Generator().manual_seed(0)
    sequences = torch.randint(5, (40, 7), generator=gen)
    x_t = torch.randn(6, 7, 5, generator=gen, dtype=torch.float64)
    denoiser = EmpiricalSequenceDenoiser(sequences, 5)
    i = torch.tensor([1, 30, 75, 150, 300, 500])
    abar = SCHEDULE.alpha_bar(i)
    expected = _direct(x_t, sequences, 5, abar.tolist())
    torch.testing.assert_close(denoiser(x_t, abar), expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(denoiser(x_t, NoiseLevel.at_index(SCHEDULE, i)), expected, rtol=0, atol=1e-12)
    batched = denoiser(x_t.view(2, 3, 7, 5), 0.4)
    torch.testing.assert_close(batched, _direct(x_t, sequences, 5, [0.4] * 6).view(2, 3, 7, 5), rtol=0, atol=1e-12)


@pytest.mark.parametrize("depth", [2, 3])
def test_over_the_support_of_a_uniform_grammar_equals_exact_bp(depth):
    """sigma = 0 gives each parent q_eff equally likely pairs, so every grammatical sequence has probability
    q^-1 q_eff^-(L-1): the law is uniform on the support, whose empirical denoiser is the exact posterior mean."""
    grammar = HierarchicalGrammar.create(depth=depth, q=3, q_eff=2, sigma=0.0, seed=1)
    every = torch.tensor(list(itertools.product(range(3), repeat=grammar.length)))
    support = every[grammar.is_grammatical(every)]
    assert len(support) == 3 * 2 ** (grammar.length - 1)
    gen = torch.Generator().manual_seed(2)
    for abar in (0.1, 0.5, 0.9):
        x0 = grammar.one_hot(grammar.sample(8, gen))
        x_t = math.sqrt(abar) * x0 + math.sqrt(1 - abar) * torch.randn(x0.shape, generator=gen, dtype=torch.float64)
        torch.testing.assert_close(EmpiricalSequenceDenoiser(support, 3)(x_t, abar),
                                   BeliefPropagationDenoiser(grammar)(x_t, abar), rtol=0, atol=1e-10)


def test_inputs_are_validated():
    with pytest.raises(ConfigError, match="^sequences "):
        EmpiricalSequenceDenoiser(torch.zeros(3, 4), 3)
    with pytest.raises(ConfigError, match="^sequences "):
        EmpiricalSequenceDenoiser(torch.full((3, 4), 3), 3)
    denoiser = EmpiricalSequenceDenoiser(torch.zeros(3, 4, dtype=torch.int64), 3)
    assert denoiser.prediction == "x0" and (denoiser.length, denoiser.q) == (4, 3)
    with pytest.raises(ConfigError, match="^x_t "):
        denoiser(torch.zeros(2, 4, 2), 0.5)
    with pytest.raises(ConfigError, match="^abar "):
        denoiser(torch.zeros(2, 4, 3), torch.tensor([0.5, 0.5, 0.5]))
    with pytest.raises(ConfigError, match="^abar "):
        denoiser(torch.zeros(2, 4, 3), 1.0)
