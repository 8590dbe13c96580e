"""Population losses of simple denoisers, their Hermite expansion and the diffusion information exponent."""

from easyhard.theory.calibration import (
    Calibration,
    calibrate,
    escape_barrier,
    escape_median,
    gradient_noise,
    leading_coefficient,
)
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
from easyhard.theory.problem import MCMSettings, NeuronSettings

__all__ = [
    "Calibration", "DirectionExponent", "MCMSettings", "NeuronSettings", "SingleNeuron", "calibrate", "circle_minimiser", "constant_term",
    "diffusion_exponents", "escape_barrier", "escape_median", "gradient_noise", "hermite_coefficients", "hermite_he",
    "hermite_moment_polynomial", "joint_moments", "leading_coefficient", "log_log_slope", "loss_polynomial",
    "loss_slope", "overlap_loss", "sample_complexity",
]
