"""Data: the mixed cumulant model, its latent laws and Gaussian equivalents; natural-image loaders and clones;
folders of samples of any model."""

from easyhard.data.folders import load_tensor_folder
from easyhard.data.images import (
    PHOTOS,
    embedded_patches,
    gaussian_clone,
    load_cifar10,
    load_image_folder,
    load_photos,
)
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
from easyhard.data.grammar import HierarchicalGrammar
from easyhard.data.mcm import GaussianModel, MixedCumulantModel
from easyhard.data.mixture import GaussianMixture, random_mixture

__all__ = [
    "ABS_NORMAL_MEDIAN", "COUPLINGS", "LATENT_LAWS", "PHOTOS", "BernoulliGauss", "GaussianMixture", "GaussianModel",
    "HierarchicalGrammar", "Laplace", "LatentLaw", "LatentPair", "MixedCumulantModel", "Rademacher", "TwoPoint", "Uniform",
    "embedded_patches", "gaussian_clone", "latent_law_from_dict", "load_cifar10", "load_image_folder", "load_photos",
    "load_tensor_folder", "make_latent_law", "random_mixture",
]
