"""The Bayes-matched activation of the single neuron (docs/theory/mcm.md section 4.3) and every activation by name.

sigma_match is the exact posterior mean along v minus the skip part, so it depends on the latent law, beta_v
and the OU time t; it lives with the oracles, and so does the factory that builds it next to the activations
without parameters of :mod:`easyhard.activations`.
"""

from __future__ import annotations

from dataclasses import dataclass

from easyhard._validate import check_choice
from easyhard.activations import PLAIN_ACTIVATIONS, Activation
from easyhard.data.latents import LatentLaw, Rademacher
from easyhard.oracles.bayes_mcm import GaussianChannels, v_posterior_mean


@dataclass(frozen=True)
class Matched(Activation):
    """sigma_match(h) = g_v(h) - a h, with g_v the exact posterior mean along v (docs/theory/mcm.md section 4.3).

    With c_t = e^-t and a_t = 1 the neuron at w = v is then the Bayes-optimal denoiser along v.
    Odd for symmetric latent laws. Depends on the latent law, beta_v and the OU time t.
    """

    law: LatentLaw | None = None
    beta_v: float = 5.0
    t: float = 0.5
    name = "matched"

    @property
    def odd(self) -> bool:  # type: ignore[override]
        return bool(self.law.symmetric)

    def __call__(self, h):
        ch = GaussianChannels.at(0.0, self.beta_v, self.t)
        e_nu = self.law.posterior_mean(h, ch.m_v, ch.s2)
        return v_posterior_mean(h, e_nu, self.beta_v, self.t) - ch.a * h

    def to_dict(self):
        return {"name": self.name, "law": self.law.to_dict(), "beta_v": self.beta_v, "t": self.t}


#: Every activation by name: those without parameters and the Bayes-matched one.
ACTIVATIONS: dict[str, type[Activation]] = {**PLAIN_ACTIVATIONS, "matched": Matched}


def make_activation(name: str, law: LatentLaw | None = None, beta_v: float = 5.0, t: float = 0.5) -> Activation:
    """Activation by name; ``matched`` also needs the latent law (default Rademacher), beta_v and t."""
    check_choice("activation", name, ACTIVATIONS)
    if name == "matched":
        return Matched(law if law is not None else Rademacher(), beta_v, t)
    return ACTIVATIONS[name]()
