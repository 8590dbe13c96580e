"""Small experiments shaped for parameter sweeps: a flat frozen config and a run returning flat metrics.

``EXPONENTS``: the diffusion information exponents of u and v for the single-neuron denoiser
D(x_t) = c x_t + a_out w sigma(w.x_t) on the mixed cumulant model (``easyhard exponents`` as an
experiment). It is pure quadrature (no sampling), so a run takes milliseconds to a second.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from easyhard._validate import ConfigError
from easyhard.experiments.registry import Experiment, RunContext
from easyhard.theory import MCMSettings, NeuronSettings, diffusion_exponents, hermite_coefficients
from easyhard.theory.hermite import check_k_max


@dataclass(frozen=True)
class ExponentsConfig:
    """One exponent computation: the model (``mcm``; d = 3 suffices: the loss depends on the overlaps only),
    the neuron and the highest Hermite order ``k_max``. Defaults are the CLI's (``easyhard exponents``)."""

    mcm: MCMSettings = field(default_factory=MCMSettings)
    neuron: NeuronSettings = field(default_factory=NeuronSettings)
    k_max: int = 8
    alpha_u_learned: float = 0.5

    def __post_init__(self):
        check_k_max(self.k_max, 2)
        if not 0 < self.alpha_u_learned < 1:
            raise ConfigError(f"alpha_u_learned must lie in (0, 1) (got {self.alpha_u_learned:g})")


def run_exponents(config: ExponentsConfig, ctx: RunContext | None = None) -> dict:
    """Exponents of u and v as flat metrics.

    Per direction s in (u, v): ``k_s`` (exponent k*, None when the loss does not depend on alpha_s up to
    ``k_max``), ``slope_s`` (log-log cross-check slope), ``coef_s`` and ``term_s`` (leading coefficient and
    monomial), ``attractive_s``, ``samples_s`` (predicted online-SGD cost); ``v_given_alpha_u`` is the
    alpha_u at which v's exponent is conditional (coupled latents) or None. ``hermite_f`` (the list of
    Hermite coefficients f_k(t)) stays in metrics.json only.
    """
    model = config.mcm.model()
    neuron = config.neuron.neuron(config.mcm)
    result = diffusion_exponents(model, neuron, config.k_max, config.alpha_u_learned)
    metrics: dict = {}
    for key, e in result.items():
        metrics |= {f"k_{key}": e.exponent, f"slope_{key}": e.slope, f"coef_{key}": e.coefficient,
                    f"term_{key}": e.term, f"attractive_{key}": e.attractive, f"samples_{key}": e.samples}
    conditional = result["v"].conditional_on
    metrics["v_given_alpha_u"] = None if conditional is None else conditional["alpha_u"]
    metrics["hermite_f"] = hermite_coefficients(neuron, config.k_max).tolist()
    return metrics


EXPONENTS = Experiment("exponents", ExponentsConfig, run_exponents,
                       "diffusion information exponents of u and v for a single-neuron denoiser")
