"""Trainable denoisers batched over an ensemble axis: the committee / single neuron and its SGD steps."""

from easyhard.models.committee import Committee, plain_step, spherical_step

__all__ = ["Committee", "plain_step", "spherical_step"]
