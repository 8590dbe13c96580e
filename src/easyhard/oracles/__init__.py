"""Exact or closed-form denoisers: Wiener (Gaussian), Bayes-optimal for the MCM, empirical-optimal, belief
propagation for the hierarchical grammar; the Bayes-matched activation and the factory of every activation by
name."""

from easyhard.oracles.bayes_mcm import GaussianChannels, MCMBayesDenoiser, per_direction_mse, v_posterior_mean
from easyhard.oracles.empirical import EmpiricalDenoiser, empirical_denoiser, empirical_score
from easyhard.oracles.grammar_bp import BeliefPropagationDenoiser, factorisation_kl, root_channels
from easyhard.oracles.sequences import EmpiricalSequenceDenoiser
from easyhard.oracles.matched import ACTIVATIONS, Matched, make_activation
from easyhard.oracles.wiener import WienerDenoiser

__all__ = [
    "ACTIVATIONS", "BeliefPropagationDenoiser", "EmpiricalDenoiser", "EmpiricalSequenceDenoiser", "GaussianChannels",
    "MCMBayesDenoiser", "Matched", "WienerDenoiser", "empirical_denoiser", "empirical_score", "factorisation_kl",
    "make_activation", "per_direction_mse", "root_channels", "v_posterior_mean",
]
