"""Exact or closed-form denoisers: Wiener (Gaussian), Bayes-optimal for the MCM, empirical-optimal."""

from easyhard.oracles.bayes_mcm import GaussianChannels, MCMBayesDenoiser, per_direction_mse, v_posterior_mean
from easyhard.oracles.empirical import empirical_denoiser, empirical_score
from easyhard.oracles.wiener import WienerDenoiser

__all__ = [
    "GaussianChannels", "MCMBayesDenoiser", "WienerDenoiser", "empirical_denoiser", "empirical_score",
    "per_direction_mse", "v_posterior_mean",
]
