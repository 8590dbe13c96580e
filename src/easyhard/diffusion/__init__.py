"""Forward processes (continuous OU, discrete DDPM) and denoiser parametrisations.

Theory convention: x_t = a x0 + s xi with a = exp(-t), s^2 = 1 - exp(-2t); a DDPM step i is the
same process at OU time t_i = -ln(abar_i) / 2. Conversions take (a, s) so that both time
conventions plug in; every denoiser (network, oracle or a user's module) is called as
``denoiser(x_t, level)`` with a :class:`NoiseLevel` that carries (a, s), t and the step index
(:mod:`easyhard.diffusion.denoiser`).
"""

from easyhard.diffusion.ddpm import SCHEDULE_KINDS, DDPMSchedule, cosine_betas, linear_betas
from easyhard.diffusion.ou import (
    check_positive_coefficient,
    ou_coefficients,
    ou_noise,
    per_sample,
    perturb,
)
from easyhard.diffusion.parametrization import (
    SPACES,
    convert,
    convert_mse,
    eps_to_score,
    eps_to_x0,
    score_to_eps,
    score_to_x0,
    x0_to_eps,
    x0_to_score,
)

__all__ = [
    "DDPMSchedule",
    "SCHEDULE_KINDS",
    "SPACES",
    "check_positive_coefficient",
    "convert",
    "convert_mse",
    "cosine_betas",
    "eps_to_score",
    "eps_to_x0",
    "linear_betas",
    "ou_coefficients",
    "ou_noise",
    "per_sample",
    "perturb",
    "score_to_eps",
    "score_to_x0",
    "x0_to_eps",
    "x0_to_score",
]

from easyhard.diffusion.denoiser import (
    CoefficientDenoiser,
    Denoiser,
    EpsModel,
    NoiseLevel,
    OUTimeDenoiser,
    as_denoiser,
    as_step,
    predict_eps,
    predict_x0,
)
from easyhard.diffusion.samplers import METHODS, SPACINGS, SamplerNoise, sample, timesteps
from easyhard.diffusion.sequences import sample_sequences  # noqa: E402

__all__ += ["CoefficientDenoiser", "Denoiser", "EpsModel", "METHODS", "NoiseLevel", "OUTimeDenoiser", "SPACINGS",
            "SamplerNoise", "as_denoiser", "as_step", "predict_eps", "predict_x0", "sample", "sample_sequences", "timesteps"]
