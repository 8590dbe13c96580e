"""Population losses of simple denoisers, their Hermite expansion and the diffusion information exponent."""

from easyhard.theory.exponent import (
    DirectionExponent,
    diffusion_exponents,
    log_log_slope,
    loss_slope,
    sample_complexity,
)
from easyhard.theory.hermite import (
    hermite_coefficients,
    hermite_he,
    hermite_moment_polynomial,
    joint_moments,
    loss_polynomial,
)
from easyhard.theory.loss import SingleNeuron, circle_minimiser, constant_term, overlap_loss

__all__ = [
    "DirectionExponent", "SingleNeuron", "circle_minimiser", "constant_term", "diffusion_exponents", "hermite_coefficients",
    "hermite_he", "hermite_moment_polynomial", "joint_moments", "log_log_slope", "loss_polynomial", "loss_slope",
    "overlap_loss", "sample_complexity",
]
