"""Trainable denoisers batched over an ensemble axis: the committee / single neuron and its SGD steps, the MLP and
U-Net denoisers of images, the stacked ensembles of MLPs and of sequence transformers."""

from easyhard.models.committee import Committee, plain_step, spherical_step
from easyhard.models.ensemble import EnsembleConfig, EnsembleMLP
from easyhard.models.mlp import MLPConfig, MLPDenoiser, edm_coefficients, sinusoidal_embedding
from easyhard.models.transformer import EnsembleTransformer, SequenceTransformerConfig
from easyhard.models.unet import UNET_PRESETS, UNetConfig, UNetDenoiser, make_unet, n_parameters

__all__ = [
    "Committee", "EnsembleConfig", "EnsembleMLP", "EnsembleTransformer", "MLPConfig", "MLPDenoiser", "UNET_PRESETS", "UNetConfig",
    "SequenceTransformerConfig", "UNetDenoiser", "edm_coefficients", "make_unet", "n_parameters", "plain_step",
    "sinusoidal_embedding",
    "spherical_step",
]
