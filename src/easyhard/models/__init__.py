"""Trainable denoisers batched over an ensemble axis: the committee / single neuron and its SGD steps."""

from easyhard.models.committee import Committee, plain_step, spherical_step

__all__ = ["Committee", "plain_step", "spherical_step"]

from easyhard.models.mlp import MLPConfig, MLPDenoiser, edm_coefficients, sinusoidal_embedding
from easyhard.models.unet import UNET_PRESETS, UNetConfig, UNetDenoiser, make_unet, n_parameters

__all__ += ["MLPConfig", "MLPDenoiser", "UNET_PRESETS", "UNetConfig", "UNetDenoiser", "edm_coefficients",
            "make_unet", "n_parameters", "sinusoidal_embedding"]
