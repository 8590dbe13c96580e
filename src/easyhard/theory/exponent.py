"""The diffusion information exponent and the predicted online-SGD cost (docs/theory/mcm.md section 6).

For a spike direction s, expand the spherical population loss around a random start:

    L(alpha_s) - L(0) = sum_k c_k alpha_s^k,        k*(s) = min{k : c_k != 0}

(a) analytic: c_k from the Hermite coefficients (``theory.hermite.loss_polynomial``);
(b) cross-check: log-log slope of |L(alpha) - L(0)| on alpha in [0.02, 0.2] from direct quadrature.

The conditional exponent of v once u is learned (alpha_u = Theta(1)) is the smallest power of alpha_v
that appears in the loss together with some power of alpha_u: min{j >= 1 : c_ij != 0 for some i}.
Its cross-check slope is taken at a fixed alpha_u (default 0.5) against L(alpha_u, 0).

Predicted online-SGD sample complexity (Ben Arous, Gheissari & Jagannath 2021): k = 1: n ~ d;
k = 2: n ~ d log d (step delta/d); k >= 3: n ~ d^(k-1) with step ~ d^(-k/2). An even leading term
with a positive coefficient repels the spike: it is never learned from a random start.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from fractions import Fraction

import numpy as np
import torch

from easyhard._validate import ConfigError
from easyhard.data.mcm import MixedCumulantModel
from easyhard.theory.hermite import check_k_max, loss_polynomial
from easyhard.theory.loss import SingleNeuron, overlap_loss

#: coefficients below this are zero (parity zeros come out at ~1e-16)
COEFFICIENT_TOL = 1e-9
#: |L(alpha) - L(0)| below this on the whole slope grid means the loss does not depend on alpha
FLAT_TOL = 1e-10
SLOPE_GRID = (0.02, 0.2)


@dataclass(frozen=True)
class DirectionExponent:
    """Exponent of one direction with its leading term, cross-check slope and predicted cost."""

    direction: str
    exponent: int | None
    term: str | None  # leading monomial, e.g. "alpha_v^4" or "alpha_u alpha_v"
    coefficient: float | None
    slope: float | None
    attractive: bool | None
    samples: str
    step: str
    conditional_on: dict | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def sample_complexity(k: int | None, attractive: bool | None = True) -> tuple[str, str]:
    """(samples, step) of online SGD for exponent k (BAGJ 2021): d, d log d, d^(k-1) with step d^(-k/2)."""
    if k is None:
        return "never (no dependence)", "-"
    if not attractive:
        return "never (repelled)", "-"
    if k == 1:
        return "d", "delta/d"
    if k == 2:
        return "d log d", "delta/d, delta <~ 1/log d"
    half = Fraction(k, 2)
    return f"d^{k - 1}", f"~ d^-{half}"


def _monomial(i: int, j: int) -> str:
    parts = [f"alpha_{name}" + (f"^{p}" if p > 1 else "") for name, p in (("u", i), ("v", j)) if p > 0]
    return " ".join(parts)


def log_log_slope(alphas: np.ndarray, excess: np.ndarray) -> float | None:
    """Least-squares slope of log|excess| against log alpha; None when the loss is flat (< FLAT_TOL)."""
    excess = np.abs(np.asarray(excess, dtype=float))
    if excess.max() < FLAT_TOL or (excess <= 0).any():
        return None
    return float(np.polyfit(np.log(alphas), np.log(excess), 1)[0])


def loss_slope(model: MixedCumulantModel, neuron: SingleNeuron, direction: str, alpha_u_fixed: float = 0.0,
               n_points: int = 10) -> float | None:
    """Slope estimator (b): |L(alpha) - L(0)| on a log grid of alpha in [0.02, 0.2], by quadrature.

    ``direction`` "u" varies alpha_u (alpha_v = 0); "v" varies alpha_v at alpha_u = ``alpha_u_fixed``.
    """
    alphas = np.geomspace(*SLOPE_GRID, n_points)
    grid = torch.from_numpy(alphas)
    if direction == "u":
        excess = overlap_loss(model, neuron, grid, 0.0) - overlap_loss(model, neuron, 0.0, 0.0)
    else:
        excess = overlap_loss(model, neuron, alpha_u_fixed, grid) - overlap_loss(model, neuron, alpha_u_fixed, 0.0)
    return log_log_slope(alphas, excess.numpy())


def _leading(poly: dict[tuple[int, int], float], terms: list[tuple[int, int]]) -> tuple[int, int] | None:
    """First (i, j) in ``terms`` order whose coefficient is nonzero."""
    return next((ij for ij in terms if abs(poly.get(ij, 0.0)) > COEFFICIENT_TOL), None)


def _direction_result(direction, poly, ij, power, slope, conditional_on=None) -> DirectionExponent:
    if ij is None:
        samples, step = sample_complexity(None)
        return DirectionExponent(direction, None, None, None, slope, None, samples, step, conditional_on)
    coef = poly[ij]
    attractive = power % 2 == 1 or coef < 0
    samples, step = sample_complexity(power, attractive)
    return DirectionExponent(direction, power, _monomial(*ij), coef, slope, attractive, samples, step, conditional_on)


def diffusion_exponents(model: MixedCumulantModel, neuron: SingleNeuron, k_max: int = 8,
                        alpha_u_learned: float = 0.5) -> dict[str, DirectionExponent]:
    """Exponents of u and v for the single-neuron family on the MCM.

    u: from a random start (terms alpha_u^k). v: from a random start for independent latents; for coupled
    latents, once u is learned (smallest j with some c_ij != 0; slope at alpha_u = ``alpha_u_learned``).
    k_max in [2, K_MAX_LIMIT] (ConfigError, checked before any work).
    """
    check_k_max(k_max, 2)
    if not 0 < alpha_u_learned < 1:
        raise ConfigError(f"alpha_u_learned must lie in (0, 1) (got {alpha_u_learned:g})")
    poly = loss_polynomial(model, neuron, k_max)
    ks = range(1, k_max + 1)
    u_ij = _leading(poly, [(k, 0) for k in ks])
    u = _direction_result("u", poly, u_ij, u_ij[0] if u_ij else None, loss_slope(model, neuron, "u"))
    if model.latents.coupling == "independent":
        v_ij = _leading(poly, [(0, k) for k in ks])
        v = _direction_result("v", poly, v_ij, v_ij[1] if v_ij else None, loss_slope(model, neuron, "v"))
    else:
        terms = [(i, j) for j in ks for i in range(k_max - j + 1)]
        v_ij = _leading(poly, terms)
        slope = loss_slope(model, neuron, "v", alpha_u_learned)
        v = _direction_result("v", poly, v_ij, v_ij[1] if v_ij else None, slope, {"alpha_u": alpha_u_learned})
    return {"u": u, "v": v}
