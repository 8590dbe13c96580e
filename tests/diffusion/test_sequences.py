"""sample_sequences: the ancestral reverse process with the exact BP denoiser gives grammatical sequences whose
single-site frequencies pass a chi-square test against the exact leaf marginals; an ensemble run equals its
members' runs under common random numbers; the empirical denoiser reproduces its own sequences."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import chi2

from easyhard._validate import ConfigError
from easyhard.data.grammar import HierarchicalGrammar
from easyhard.diffusion import DDPMSchedule, SamplerNoise
from easyhard.diffusion.sequences import sample_sequences
from easyhard.oracles.grammar_bp import BeliefPropagationDenoiser
from easyhard.oracles.sequences import EmpiricalSequenceDenoiser

SCHEDULE = DDPMSchedule(T=500, beta_start=2e-4, beta_end=0.04, index_base=1)
GRAMMAR = HierarchicalGrammar.create(depth=3, q=6, q_eff=4, sigma=1.0, seed=0)


def _chi_square_per_site(x: torch.Tensor, marginals: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pearson statistics (L,) of the symbol counts at each site against n * marginals, and their degrees of
    freedom (L,) (symbols of positive probability minus one)."""
    counts = torch.nn.functional.one_hot(x, marginals.shape[1]).sum(0).double()
    expected = x.shape[0] * marginals
    positive = marginals > 0
    assert (counts[~positive] == 0).all()
    terms = torch.where(positive, (counts - expected) ** 2 / expected.clamp(min=1e-300), 0.0)
    return terms.sum(1), positive.sum(1) - 1


@pytest.mark.parametrize(("n", "steps"), [(300, 100), (200, 500)])
def test_bp_samples_are_grammatical_with_the_exact_single_site_marginals(n, steps):
    """Each site's statistic is chi-square(df) under exact sampling; the test fails with probability <= 1e-3
    over the L sites (Bonferroni)."""
    x = sample_sequences(BeliefPropagationDenoiser(GRAMMAR), SCHEDULE, n, steps,
                         generator=torch.Generator().manual_seed(steps))
    assert x.shape == (n, GRAMMAR.length) and x.dtype == torch.int64
    assert GRAMMAR.is_grammatical(x).all()
    statistic, df = _chi_square_per_site(x, GRAMMAR.leaf_marginals())
    bound = torch.tensor(chi2.isf(1e-3 / GRAMMAR.length, df.numpy()), dtype=torch.float64)
    assert (statistic < bound).all()


def test_ensemble_equals_its_members_under_common_random_numbers():
    class Stacked:
        prediction, ensemble = "x0", True

        def __init__(self, members):
            self.members = members

        def __call__(self, x_t, level):
            return torch.stack([member(x_t[e], level) for e, member in enumerate(self.members)])

    members = [BeliefPropagationDenoiser(GRAMMAR), BeliefPropagationDenoiser(GRAMMAR, factorised=2),
               EmpiricalSequenceDenoiser(GRAMMAR.sample(50, torch.Generator().manual_seed(1)), GRAMMAR.q)]
    noise = SamplerNoise.draw((16, GRAMMAR.length, GRAMMAR.q), torch.Generator().manual_seed(2), dtype=torch.float64)
    joint = sample_sequences(Stacked(members), SCHEDULE, (3, 16, GRAMMAR.length, GRAMMAR.q), 40, noise=noise)
    assert joint.shape == (3, 16, GRAMMAR.length)
    for e, member in enumerate(members):
        assert torch.equal(joint[e], sample_sequences(member, SCHEDULE, 16, 40, noise=noise))


def test_empirical_denoiser_reproduces_its_sequences():
    train = GRAMMAR.sample(20, torch.Generator().manual_seed(3))
    x = sample_sequences(EmpiricalSequenceDenoiser(train, GRAMMAR.q), SCHEDULE, 64, 100,
                         generator=torch.Generator().manual_seed(4))
    assert ((x[:, None] == train[None]).all(-1)).any(1).all()


def test_a_number_needs_a_denoiser_with_length_and_q():
    def eps_zero(x_t, i):
        return torch.zeros_like(x_t)

    with pytest.raises(ConfigError, match="^n_or_shape "):
        sample_sequences(eps_zero, SCHEDULE, 4, 10)
    with pytest.raises(ConfigError, match="^n_or_shape "):
        sample_sequences(eps_zero, SCHEDULE, (4, 8), 10)
    assert sample_sequences(eps_zero, SCHEDULE, (4, 8, 6), 10).shape == (4, 8)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_sampling_is_grammatical():
    x = sample_sequences(BeliefPropagationDenoiser(GRAMMAR), SCHEDULE, 256, 100,
                         generator=torch.Generator("cuda").manual_seed(0))
    assert x.device.type == "cuda" and GRAMMAR.is_grammatical(x).all()
