"""One description of the problem every MCM experiment studies: the data model and the single-neuron denoiser.

:class:`MCMSettings` are the fields of the mixed cumulant model (docs/theory/mcm.md sections 1-2): the latent
law nu of the cumulant spike (with its parameter), the spike strengths beta_u and beta_v, and the coupling
of the latents (with q for the sign coupling). :class:`NeuronSettings` are those of the tied single-neuron
denoiser D(x_t) = c x_t + a_out w sigma(w.x_t) at OU time t (docs/theory/mcm.md section 4): the activation,
t, the fixed output scale a_out and the skip coefficient c (default e^-t).

Experiment configs compose them as fields (``mcm``, ``neuron``), so each field is declared and validated
once; the command line generates its options from these dataclasses (``--beta-u``, ``--t``, ...), and
config files may name a sub-field by its own name (``beta_v = 20`` for ``mcm.beta_v``) where that is
unambiguous. Each field's ``metadata["help"]`` is its one-line description.

Valid ranges (docs/theory/mcm.md section 10; refused with a ConfigError naming the field): beta_u and beta_v in
[0, 100] and t in [1e-4, 20], where the quadratures of the theory commands are validated against
higher-precision references; outside, results lose accuracy (coupled latent grids, cancellation in 1 - e^-2t)
or the signal of x_t falls below float64 resolution (e^-2t < 2^-53 for t > 20).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from easyhard._validate import ConfigError, check_choice, check_finite
from easyhard.activations import Activation
from easyhard.data import COUPLINGS, LATENT_LAWS, MixedCumulantModel, make_latent_law
from easyhard.data.latents import LatentLaw
from easyhard.oracles import ACTIVATIONS, make_activation
from easyhard.oracles.bayes_mcm import THEORY_BETA_MAX, THEORY_T_RANGE, check_theory_beta, check_theory_time
from easyhard.theory.loss import SingleNeuron

_LAW_HELP = ", ".join(LATENT_LAWS) + " (two_point and bernoulli_gauss take --nu-param p, or NAME:p)"


@dataclass(frozen=True)
class MCMSettings:
    """The mixed cumulant model's parameters (module docstring); defaults: the paper's canonical setting.

    ConfigError unless beta_u, beta_v lie in [0, THEORY_BETA_MAX] (module docstring).
    """

    nu: str = field(default="rademacher", metadata={"help": f"latent law: {_LAW_HELP}"})
    nu_param: float | None = field(default=None, metadata={"help": "parameter p of two_point / bernoulli_gauss"})
    beta_u: float = field(default=5.0, metadata={"help": f"covariance spike strength, in [0, {THEORY_BETA_MAX:g}]"})
    beta_v: float = field(default=5.0, metadata={"help": f"cumulant spike strength, in [0, {THEORY_BETA_MAX:g}]"})
    coupling: str = field(default="independent", metadata={"help": f"one of {', '.join(COUPLINGS)}"})
    q: float = field(default=1.0, metadata={"help": "sign coupling: probability that nu = sign(lambda)"})

    def __post_init__(self):
        check_theory_beta("beta_u", self.beta_u)
        check_theory_beta("beta_v", self.beta_v)
        check_choice("coupling", self.coupling, COUPLINGS)
        self.model(3)  # the law and the coupling run their own checks

    def law(self) -> LatentLaw:
        """The latent law nu of the cumulant spike."""
        return make_latent_law(self.nu, self.nu_param)

    def model(self, d: int = 3) -> MixedCumulantModel:
        """The model in dimension d (d = 3 suffices for population quantities: they depend on overlaps only)."""
        return MixedCumulantModel.create(d=d, beta_u=self.beta_u, beta_v=self.beta_v, nu=self.law(),
                                         coupling=self.coupling, q=self.q)


#: the largest |a_out| and |skip| the theory commands accept
SCALE_LIMIT = 100.0


@dataclass(frozen=True)
class NeuronSettings:
    """The tied single-neuron denoiser's parameters (module docstring); defaults: tanh at t = 0.5.

    ConfigError unless t lies in THEORY_T_RANGE (module docstring).
    """

    activation: str = field(default="tanh", metadata={"help": f"one of {', '.join(ACTIVATIONS)}"})
    t: float = field(default=0.5, metadata={"help": "OU time t, in [%g, %g]" % THEORY_T_RANGE})
    a_out: float = field(default=1.0, metadata={"help": "fixed output scale a_t (nonzero, |a_out| <= 100)"})
    skip: float | None = field(default=None, metadata={"help": "skip coefficient c_t, |c_t| <= 100 [default: e^-t]"})

    def __post_init__(self):
        check_choice("activation", self.activation, ACTIVATIONS)
        check_theory_time(self.t)
        for name in ("a_out", "skip"):  # beyond 100 the loss polynomial's a_out^2 terms leave the validated range
            value = getattr(self, name)
            if value is not None and not abs(check_finite(name, value)) <= SCALE_LIMIT:
                raise ConfigError(f"{name} must lie in [-{SCALE_LIMIT:g}, {SCALE_LIMIT:g}] (got {value:g})")
        SingleNeuron(make_activation("linear"), self.t, self.skip, self.a_out)  # t, a_out and skip: its checks

    def activation_for(self, mcm: MCMSettings) -> Activation:
        """sigma; ``matched`` is the Bayes-matched activation of the model's latent law, beta_v and t."""
        return make_activation(self.activation, mcm.law(), mcm.beta_v, self.t)

    def neuron(self, mcm: MCMSettings) -> SingleNeuron:
        """The population-loss description of this denoiser on the model ``mcm``."""
        return SingleNeuron(self.activation_for(mcm), self.t, self.skip, self.a_out)


def problem_from(**fields) -> tuple[MCMSettings, NeuronSettings]:
    """(MCMSettings, NeuronSettings) from flat field names (``beta_v=20, t=0.1``); the rest take defaults."""
    from dataclasses import fields as fields_of

    names = {cls: {f.name for f in fields_of(cls)} for cls in (MCMSettings, NeuronSettings)}
    unknown = set(fields) - names[MCMSettings] - names[NeuronSettings]
    if unknown:
        raise ConfigError(f"unknown setting(s) {', '.join(sorted(unknown))} (allowed: "
                          f"{', '.join(sorted(names[MCMSettings] | names[NeuronSettings]))})")
    return tuple(cls(**{k: v for k, v in fields.items() if k in names[cls]}) for cls in (MCMSettings, NeuronSettings))
