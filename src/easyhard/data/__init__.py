"""Data models with exact statistics: the mixed cumulant model, its latent laws and Gaussian equivalents."""

from easyhard.data.latents import (
    ABS_NORMAL_MEDIAN,
    COUPLINGS,
    LATENT_LAWS,
    BernoulliGauss,
    Laplace,
    LatentLaw,
    LatentPair,
    Rademacher,
    TwoPoint,
    Uniform,
    latent_law_from_dict,
    make_latent_law,
)
from easyhard.data.mcm import GaussianModel, MixedCumulantModel

__all__ = [
    "ABS_NORMAL_MEDIAN", "COUPLINGS", "LATENT_LAWS", "BernoulliGauss", "GaussianModel", "Laplace",
    "LatentLaw", "LatentPair", "MixedCumulantModel", "Rademacher", "TwoPoint", "Uniform",
    "latent_law_from_dict", "make_latent_law",
]
