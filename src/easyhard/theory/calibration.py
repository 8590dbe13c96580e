"""Step-size calibration of online SGD for a direction with exponent k >= 3 (docs/theory/calibration.md;
docs/theory/mcm.md sections 8.2-8.4).

Setting: the tied single neuron D(x_t) = c x_t + a_out w sigma(w.x_t), |w| = 1, per-sample loss
l = ||x0 - D(x_t)||^2 (plain sum), one fresh sample per step, spherical step eta = eps / d^(k/2).
Near a random start the loss along the direction is L(alpha) - L(0) = c_k alpha^k + ..., and the
overlap receives per step the drift -eta k c_k alpha^(k-1), the normalisation shrinkage
-eta^2 ||g_perp||^2 alpha / 2 = -eta^2 d G^2 alpha / 2 and a noise of variance eta^2 G^2. With
s = alpha sqrt(d) and m = n / d^(k-1) every term is of order dm = d^-(k-1) per step:

    ds = (eps k |c_k| s^(k-1) - eps^2 G^2 s / 2) dm + eps G dB_m

(s is oriented so that the drift is attractive; for odd k this picks the sign of alpha). With
T = eps^2 G^2 m this is the d-independent escape SDE

    ds = (zeta s^(k-1) - s / 2) dT + dB_T,     zeta = k |c_k| / (eps G^2),   s_0 ~ N(0, 1),

so the median number of samples is n_med = T*(zeta) / (eps^2 G^2) d^(k-1), T*(zeta) the median
escape time (|s| -> infinity). k = 4 gives zeta = 4 |c_4| / (eps G^2) (docs/theory/calibration.md section 3) and
n_med = T* zeta^2 G^2 / (16 c_4^2) d^3 (docs/theory/mcm.md section 8.3). The barrier of the escape SDE, where its drift
vanishes, is s_c = (2 zeta)^(-1/(k-2)) (1 / sqrt(2 zeta) for k = 4).

Directions with k <= 2 are not described by this SDE: they are learned at ~d log d samples with a
step eta ~ 1/d (docs/theory/mcm.md section 6.2), and :func:`calibrate` refuses them.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass

import numpy as np
import scipy.sparse as sp
import torch
from scipy.integrate import quad
from scipy.sparse.linalg import splu

from easyhard._quadrature import gaussian_panels
from easyhard._validate import ConfigError, check_choice, check_int_at_least, check_open_unit, check_positive
from easyhard.data.mcm import MixedCumulantModel
from easyhard.theory.exponent import COEFFICIENT_TOL
from easyhard.theory.hermite import check_k_max, loss_polynomial
from easyhard.theory.loss import SingleNeuron

#: default escape parameter zeta [choice, docs/theory/mcm.md section 8.3]
DEFAULT_ZETA = 0.3
#: zeta range recommended by docs/theory/calibration.md (cost ~ T* zeta^2 is low, the barrier is crossed by noise)
RECOMMENDED_ZETA = (0.15, 1.0)
#: zeta accepted by calibrate: below, T* grows like exp(1/(8 zeta)) past any run; above, the drift alone
#: escapes (T* ~ 1.1/zeta for k = 4) and eps = k |c_k| / (zeta G^2) is vanishingly small
ZETA_RANGE = (0.02, 100.0)
#: largest dimension d of Calibration.at_dimension: d^(k-1) and d^(k/2) stay finite and exact enough in float64
MAX_DIMENSION = 10**9
#: |c_k| below this is too weak to calibrate (pre-flight rule, docs/theory/mcm.md section 6.6)
WEAK_COEFFICIENT = 1e-3
#: the recovery threshold must exceed this multiple of the barrier: threshold sqrt(d) >= margin s_c [choice]
BARRIER_MARGIN = 2.0

# numerical parameters of escape_median (accuracy study in its docstring)
_GRID_CORE = 2.0  # |s| below which the grid is nearly uniform
_GRID_SPACING = 0.01  # grid spacing at s = 0
_COARSE_SPACING = 0.05
_TAIL_TOLERANCE = 1e-3  # drift-dominated time beyond s_max, relative to T*
_TIME_STEPS = 1000  # BDF2 steps per T*
_T_LIMIT = 1e9


# ----- gradient noise ---------------------------------------------------------------------------

def gradient_noise(neuron: SingleNeuron) -> float:
    """G^2 = E||g_perp||^2 / d per generic coordinate at a random start (alpha = 0, d -> infinity).

    Derivation (docs/theory/mcm.md section 4.4, general skip c; a = e^-t, Delta = 1 - a^2). For a coordinate i
    orthogonal to w and to the spikes, x0_i = z_i, x_i = a z_i + sqrt(Delta) xi_i and
    r_i = (1 - c a) z_i - c sqrt(Delta) xi_i, independent of the variables along w. Along w,
    y = w.x0 ~ N(0, 1) at a random start, h = a y + sqrt(Delta) eta ~ N(0, 1) and
    r_w = y - c h = (a - c) h + sqrt(Delta) zeta with zeta ~ N(0, 1) independent of h (y | h has mean a h
    and variance 1 - a^2 = Delta), so with rho(h) = (a - c) h - a_out sigma(h)

        w.r = r_w - a_out sigma(h) = rho(h) + sqrt(Delta) zeta,
        g_i = -2 a_out [ sigma(h) r_i + (w.r) sigma'(h) x_i ].

    Using E r_i^2 = (1 - c a)^2 + c^2 Delta = Delta + (a - c)^2, E r_i x_i = a - c, E x_i^2 = 1:

        G^2 = E g_i^2 = 4 a_out^2 E_h[ (Delta + (a - c)^2) sigma^2 + 2 (a - c) sigma sigma' rho
                                       + (rho^2 + Delta) sigma'^2 ],      h ~ N(0, 1).

    The two-dimensional Gaussian integral over (y, eta) thus reduces exactly to one over h. At the
    default c = a it is G^2 = 4 a_out^2 [Delta (E sigma^2 + E sigma'^2) + a_out^2 E(sigma^2 sigma'^2)] (docs/theory/calibration.md section 2).
    Only second moments of the data enter, so the value holds for any MCM coordinate of unit variance
    (also the whitened v); at finite d, E||g_perp||^2 = (d - 1) G^2 when every direction orthogonal to w
    has unit variance. Quadrature: composite Gauss-Legendre against N(0, 1) with a panel edge at 0
    (``gaussian_panels``), exact to ~1e-13 for smooth sigma and for the kinks of relu / abs.
    """
    h, weight = gaussian_panels(breakpoints=(0.0,))
    a, delta, c, a_out = neuron.a, neuron.delta, neuron.c, neuron.a_out
    s, ds = neuron.activation(h), neuron.activation.derivative(h)
    rho = (a - c) * h - a_out * s
    integrand = (delta + (a - c) ** 2) * s**2 + 2 * (a - c) * s * ds * rho + (rho**2 + delta) * ds**2
    return float(4 * a_out**2 * torch.sum(weight * integrand))


# ----- leading coefficient ----------------------------------------------------------------------

def _direction_terms(poly: dict[tuple[int, int], float], direction: str) -> dict[int, float]:
    """{k: c_k} of the pure monomials alpha_u^k (direction u) or alpha_v^k (direction v)."""
    return {i + j: c for (i, j), c in poly.items() if (j == 0 if direction == "u" else i == 0)}


def leading_coefficient(model: MixedCumulantModel, neuron: SingleNeuron, direction: str = "v",
                        k_max: int = 8) -> tuple[int, float]:
    """(k, c_k): the lowest order at which the direction enters L(alpha_u, alpha_v) - L(0, 0) on its own.

    u: first c_(k,0) != 0; v: first c_(0,k) != 0 (``loss_polynomial``, docs/theory/mcm.md section 5),
    zero meaning |c| <= COEFFICIENT_TOL. This is the expansion from a random start (all other overlaps
    O(d^-1/2)); with coupled latents the mixed terms c_ij alpha_u^i alpha_v^j are ignored here (see
    :func:`calibrate`, which refuses directions that escape jointly). ConfigError if the direction does
    not enter the loss up to order k_max.
    """
    check_choice("direction", direction, ("u", "v"))
    k_max = check_k_max(k_max)
    return _leading_term(loss_polynomial(model, neuron, k_max), direction, k_max)


def _leading_term(poly: dict[tuple[int, int], float], direction: str, k_max: int) -> tuple[int, float]:
    """(k, c_k) of the first pure term of the direction with |c_k| > COEFFICIENT_TOL in ``poly``."""
    terms = _direction_terms(poly, direction)
    for k in sorted(terms):
        if abs(terms[k]) > COEFFICIENT_TOL:
            return k, terms[k]
    raise ConfigError(f"direction {direction} does not enter the loss up to order k_max = {k_max} "
                      "(blind spot or zero spike strength): nothing to calibrate")


def _lowest_mixed_term(poly: dict[tuple[int, int], float]) -> tuple[int, int] | None:
    """(i, j) with i, j >= 1 of the nonzero mixed monomial alpha_u^i alpha_v^j of lowest degree, or None."""
    mixed = [(i + j, i, j) for (i, j), c in poly.items() if i >= 1 and j >= 1 and abs(c) > COEFFICIENT_TOL]
    return min(mixed)[1:] if mixed else None


# ----- escape SDE -------------------------------------------------------------------------------

def _check_escape_order(k: int) -> int:
    """k >= 3: for k <= 2 the drift does not blow up and the escape SDE does not apply."""
    return check_int_at_least("k", k, 3)


def escape_barrier(zeta: float, k: int = 4) -> float:
    """s_c = (2 zeta)^(-1/(k-2)): where the drift zeta s^(k-1) - s/2 vanishes (k = 4: 1/sqrt(2 zeta))."""
    check_positive("zeta", zeta)
    k = _check_escape_order(k)
    return (2 * zeta) ** (-1 / (k - 2))


def _drift(s: np.ndarray, zeta: float, k: int) -> np.ndarray:
    return zeta * s ** (k - 1) - 0.5 * s


def _tail_time(s_max: float, zeta: float, k: int) -> float:
    """int_{s_max}^inf ds / (zeta s^(k-1) - s/2): deterministic time from s_max to infinity (s_max > s_c)."""
    return quad(lambda s: 1.0 / (zeta * s ** (k - 1) - 0.5 * s), s_max, math.inf)[0]


def _escape_grid(s_max: float, spacing: float) -> np.ndarray:
    """Nodes s = s0 sinh(kappa x), x uniform on [-1, 1], kappa = asinh(s_max / s0): spacing ``spacing`` at 0,
    nearly uniform for |s| < s0 = _GRID_CORE, geometric beyond (where the drift dominates)."""
    kappa = math.asinh(s_max / _GRID_CORE)
    half = math.ceil(_GRID_CORE * kappa / spacing)
    return _GRID_CORE * np.sinh(kappa * np.linspace(-1.0, 1.0, 2 * half + 1))


def _survival_generator(s: np.ndarray, zeta: float, k: int) -> sp.csc_matrix:
    """Generator A S = b(s) S' + S''/2 on the interior nodes of ``s`` with S = 0 at both ends (absorbing).

    Three-point differences on the non-uniform grid: central for the drift where |b| h <= 1 (the
    scheme is then monotone), first-order upwind (towards where the process moves) elsewhere.
    """
    h_minus, h_plus = s[1:-1] - s[:-2], s[2:] - s[1:-1]
    b = _drift(s[1:-1], zeta, k)
    span = h_minus + h_plus
    lower, upper = 1.0 / (h_minus * span), 1.0 / (h_plus * span)  # S''/2
    central = np.abs(b) * np.maximum(h_minus, h_plus) <= 1.0
    lower = lower + np.where(central, -b * h_plus / (h_minus * span), np.where(b < 0, -b / h_minus, 0.0))
    upper = upper + np.where(central, b * h_minus / (h_plus * span), np.where(b > 0, b / h_plus, 0.0))
    diag = -(lower + upper)
    return sp.diags([lower[1:], diag, upper[:-1]], [-1, 0, 1], format="csc")


def _start_weights(s: np.ndarray) -> np.ndarray:
    """Trapezoid weights of s_0 ~ N(0, 1) on the interior nodes, normalised to sum 1.

    Averages are taken as (w * S).sum(), not w @ S: BLAS dot products thread above ~1e4 entries and
    stall on a loaded machine.
    """
    inner = s[1:-1]
    w = 0.5 * (s[2:] - s[:-2]) * np.exp(-0.5 * inner**2)
    return w / w.sum()


def _crossing(times: list[float], probs: list[float]) -> float:
    """Time where the survival probability crosses 1/2, linear interpolation between the last two steps."""
    t0, t1, p0, p1 = times[-2], times[-1], probs[-2], probs[-1]
    return t0 + (p0 - 0.5) / (p0 - p1) * (t1 - t0)


def _coarse_median(zeta: float, k: int) -> float:
    """Rough T*: implicit Euler on a coarse grid, step doubling every 40 steps (brackets T* over many decades)."""
    s_max = max(8.0, 4 * escape_barrier(zeta, k))
    s = _escape_grid(s_max, _COARSE_SPACING)
    A, w = _survival_generator(s, zeta, k), _start_weights(s)
    eye = sp.identity(A.shape[0], format="csc")
    surv, t, dt = np.ones(A.shape[0]), 0.0, 1e-4 * min(1.0, 1.0 / zeta)
    times, probs = [0.0], [1.0]
    while probs[-1] >= 0.5:
        if t > _T_LIMIT:
            raise ConfigError(f"zeta = {zeta:g} is too small: the median escape time exceeds {_T_LIMIT:g} "
                              "(T* grows like exp(1/(8 zeta)) for k = 4)")
        solve = splu((eye - dt * A).tocsc()).solve
        for _ in range(40):
            surv, t = solve(surv), t + dt
            times.append(t)
            probs.append(float((w * surv).sum()))
            if probs[-1] < 0.5:
                break
        dt *= 2
    return _crossing(times, probs) + _tail_time(s_max, zeta, k)


def _absorbing_radius(zeta: float, k: int, t_star: float) -> float:
    """Smallest s_max (>= 6 and >= 4 s_c, grown by 20 %) whose drift time to infinity is < _TAIL_TOLERANCE T*."""
    s_max = max(6.0, 4 * escape_barrier(zeta, k))
    while _tail_time(s_max, zeta, k) > _TAIL_TOLERANCE * t_star:
        s_max *= 1.2
    return s_max


def _median_first_passage(zeta: float, k: int, s_max: float, spacing: float, dt: float) -> float:
    """Median time to reach |s| = s_max: BDF2 (first step implicit Euler) on the backward equation
    dS/dT = A S, S(s, 0) = 1, averaged over s_0 ~ N(0, 1) until the survival probability drops below 1/2."""
    s = _escape_grid(s_max, spacing)
    A, w = _survival_generator(s, zeta, k), _start_weights(s)
    eye = sp.identity(A.shape[0], format="csc")
    prev = np.ones(A.shape[0])
    cur = splu((eye - dt * A).tocsc()).solve(prev)
    bdf2 = splu((1.5 * eye - dt * A).tocsc()).solve
    times, probs = [0.0, dt], [1.0, float((w * cur).sum())]
    while probs[-1] >= 0.5:
        if len(times) > 50 * _TIME_STEPS:
            raise RuntimeError("escape_median: the survival curve did not cross 1/2 (coarse estimate failed)")
        prev, cur = cur, bdf2(2 * cur - 0.5 * prev)
        times.append(times[-1] + dt)
        probs.append(float((w * cur).sum()))
    return _crossing(times, probs)


@functools.lru_cache(maxsize=256)
def _escape_median(zeta: float, k: int) -> float:
    t_coarse = _coarse_median(zeta, k)
    s_max = _absorbing_radius(zeta, k, t_coarse)
    t_pass = _median_first_passage(zeta, k, s_max, _GRID_SPACING, t_coarse / _TIME_STEPS)
    return t_pass + _tail_time(s_max, zeta, k)


def escape_median(zeta: float, k: int = 4) -> float:
    """T*(zeta): median escape time of ds = (zeta s^(k-1) - s/2) dT + dB, s_0 ~ N(0, 1), escape = |s| -> inf.

    Valid for k >= 3 (the drift then blows up in finite time); for odd k the process escapes to +inf
    only (the drift pushes negative s back). Deterministic computation:

    1. Survival S(s, T) = P(no escape by T | s_0 = s) solves the backward Kolmogorov equation
       dS/dT = (zeta s^(k-1) - s/2) dS/ds + (1/2) d^2S/ds^2, S(s, 0) = 1, S(+-s_max, T) = 0, on
       [-s_max, s_max] (no symmetry assumed, so odd k is handled). Space: non-uniform grid
       s = 2 sinh(kappa x), spacing 0.01 at s = 0, central differences where |b| h <= 1, upwind where
       the drift dominates. Time: BDF2 with a constant step T_coarse / 1000 (sparse LU factorised once),
       T_coarse from a coarse implicit-Euler pass.
    2. P(T) = E_{s_0 ~ N(0, 1)} S(s_0, T) (trapezoid weights); the median is where P = 1/2.
    3. Beyond s_max the drift dominates, so the remaining time is nearly deterministic and is added:
       T* = T*_(s_max) + int_{s_max}^inf ds / (zeta s^(k-1) - s/2). s_max is chosen so that this tail
       is < 1e-3 T* itself (s_max ~ 24 for zeta = 0.3, k = 4); the correction then removes most of it.

    Numerical error [measured, k = 3, 4, 6 and zeta in 0.05-2]: < 4e-4 relative (largest at large
    zeta, from the upwind differences) against a 4x finer grid, 4x more time steps and twice s_max;
    the mean exit time of the same discretisation matches the exact double-integral formula to 1e-6,
    and an Euler-Maruyama Monte Carlo of the SDE agrees within its error. Values: T*(0.15, 0.3, 0.6,
    1.0, 2.0) = 6.477, 2.963, 1.502, 0.933, 0.492 (docs/theory/calibration.md, Monte Carlo: 6.47, 2.97, 1.50, 0.93;
    docs/theory/mcm.md section 8.3: 0.50 at zeta = 2). About 0.05-0.3 s per call; results are cached.
    ConfigError for zeta <= 0, k < 3, or zeta so small that T* > 1e9.
    """
    check_positive("zeta", zeta)
    k = _check_escape_order(k)
    return _escape_median(float(zeta), k)


# ----- calibration ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Calibration:
    """Step size and predicted median cost of online SGD for one direction (docs/theory/mcm.md section 8.3).

    eta = eps / d^(k/2), zeta = k |c_k| / (eps G^2), n_med(d) = T*(zeta) / (eps^2 G^2) d^(k-1);
    R = G^2 / c_k^2 is the figure of merit (smaller is cheaper). ``t_star`` and ``n_med_coefficient``
    are None when the direction is repelled (even k with c_k >= 0): it is never learned from a random
    start. ``barrier`` is s_c = (2 zeta)^(-1/(k-2)); ``min_dimension`` the smallest d with
    threshold sqrt(d) >= BARRIER_MARGIN s_c.
    """

    direction: str
    k: int
    c_k: float
    G2: float
    R: float
    attractive: bool
    zeta: float
    eps: float
    t_star: float | None
    n_med_coefficient: float | None
    barrier: float
    threshold: float
    min_dimension: int
    warnings: tuple[str, ...] = ()

    def __post_init__(self):
        check_choice("direction", self.direction, ("u", "v"))
        _check_escape_order(self.k)
        for name in ("G2", "zeta", "eps", "barrier"):
            check_positive(name, getattr(self, name))
        check_open_unit("threshold", self.threshold)
        if self.t_star is not None:
            check_positive("t_star", self.t_star)

    def step(self, d: int) -> float:
        """eta(d) = eps / d^(k/2)."""
        d = check_dimension(d)
        return self.eps / d ** (self.k / 2)

    def predicted_median(self, d: int) -> float:
        """n_med(d) = n_med_coefficient d^(k-1) samples (= steps); inf when repelled."""
        d = check_dimension(d)
        return math.inf if self.n_med_coefficient is None else self.n_med_coefficient * d ** (self.k - 1)

    def dimension_warning(self, d: int) -> str | None:
        """A warning when the threshold at this d is not well beyond the barrier (d < min_dimension)."""
        d = check_dimension(d)
        if d >= self.min_dimension:
            return None
        return (f"d = {d}: threshold sqrt(d) = {self.threshold * math.sqrt(d):.2f} is not well beyond the barrier "
                f"s_c = {self.barrier:.2f} (need d >= {self.min_dimension}); noise excursions can cross the "
                "threshold and fall back")

    def at_dimension(self, d: int) -> dict:
        """{"d", "step", "n_med", "warning"} at dimension d: eta(d), n_med(d) (None when repelled) and
        :meth:`dimension_warning`. ConfigError unless d is an integer in [1, MAX_DIMENSION]; the values are finite."""
        d = check_dimension(d)
        n_med = self.predicted_median(d)
        return {"d": d, "step": self.step(d), "n_med": None if math.isinf(n_med) else n_med,
                "warning": self.dimension_warning(d)}

    @property
    def step_formula(self) -> str:
        return f"eta = {self.eps:.4g} / d^{self.k / 2:g}"

    def to_dict(self) -> dict:
        out = asdict(self)
        out["warnings"] = list(self.warnings)
        out["step_formula"] = self.step_formula
        return out


def check_dimension(d: int, name: str = "d", low: int = 1) -> int:
    """d, an integer in [low, MAX_DIMENSION]; ConfigError naming ``name`` otherwise (the CLI: name="--dims", low=8)."""
    d = check_int_at_least(name, d, low)
    if d > MAX_DIMENSION:
        raise ConfigError(f"{name} must be integers in [{low}, {MAX_DIMENSION:.0e}] (got {d})")
    return d


def _check_zeta(name: str, zeta: float, given: float) -> float:
    """zeta in ZETA_RANGE; the error names the option the user gave (zeta itself, or eps that implies it)."""
    lo, hi = ZETA_RANGE
    if not lo <= zeta <= hi:
        implied = "" if name == "zeta" else f" implies zeta = {zeta:.3g}, outside [{lo:g}, {hi:g}]"
        raise ConfigError(f"{name} = {given:.4g}{implied}: {name} must give zeta in [{lo:g}, {hi:g}] "
                          "(T* exceeds any run below, the step vanishes above)")
    return zeta


def _escape_parameters(k: int, c_k: float, g2: float, zeta: float | None, eps: float | None) -> tuple[float, float]:
    """(zeta, eps) from one of them: zeta = k |c_k| / (eps G^2)."""
    if zeta is not None and eps is not None:
        raise ConfigError("give either zeta or eps, not both (zeta = k |c_k| / (eps G^2))")
    if eps is not None:
        eps = check_positive("eps", eps)
        return _check_zeta("eps", k * abs(c_k) / (eps * g2), eps), eps
    zeta = DEFAULT_ZETA if zeta is None else check_positive("zeta", zeta)
    return _check_zeta("zeta", zeta, zeta), k * abs(c_k) / (zeta * g2)


def _check_escape_direction(model, neuron, direction: str, k_max: int) -> tuple[int, float, list[str]]:
    """(k, c_k, warnings) after refusing directions the escape SDE does not describe."""
    k_max = check_k_max(k_max)
    poly = loss_polynomial(model, neuron, k_max)
    k, c_k = _leading_term(poly, direction, k_max)
    if k <= 2:
        raise ConfigError(f"direction {direction} has leading order k = {k}: the escape SDE applies to k >= 3; "
                          "k <= 2 directions are learned at ~d log d samples with a step eta ~ 1/d")
    mixed = _lowest_mixed_term(poly)
    if mixed is not None and sum(mixed) < k:
        i, j = mixed
        raise ConfigError(f"direction {direction} is coupled to u by the term alpha_u^{i} alpha_v^{j} of order "
                          f"{i + j} < k = {k}: u and v escape jointly (order {i + j}; order <= 2 means ~d log d "
                          "samples with eta ~ 1/d), not by the escape SDE; use beta_u = 0 to calibrate v alone")
    warnings = []
    u_terms = _direction_terms(poly, "u")
    if direction == "v" and u_terms.get(2, 0.0) < -COEFFICIENT_TOL:
        warnings.append(f"beta_u = {model.beta_u:g} > 0: u (k = 2) is learned first, at ~d log d samples; "
                        "this calibration assumes w stays near a random start (v-only runs, beta_u = 0)")
    return k, c_k, warnings


def _regime_warnings(k: int, c_k: float, zeta: float, attractive: bool) -> list[str]:
    warnings = []
    if not attractive:
        warnings.append(f"c_{k} = {c_k:+.4g} >= 0: the direction is repelled and never learned from a random "
                        "start (flip the sign of a_out or use the law-matched activation)")
    if abs(c_k) < WEAK_COEFFICIENT:
        warnings.append(f"|c_{k}| = {abs(c_k):.3g} < {WEAK_COEFFICIENT:g}: the signal is too weak to observe")
    lo, hi = RECOMMENDED_ZETA
    if not lo <= zeta <= hi:
        warnings.append(f"zeta = {zeta:.4g} is outside the recommended [{lo:g}, {hi:g}] "
                        + ("(T* grows like exp(1/(8 zeta)): the step is too large)" if zeta < lo
                           else "(the step is smaller than needed: higher cost)"))
    return warnings


def calibrate(model: MixedCumulantModel, neuron: SingleNeuron, direction: str = "v", zeta: float | None = None,
              eps: float | None = None, k_max: int = 8, threshold: float = 0.5) -> Calibration:
    """Calibrated step eta = eps / d^(k/2) and predicted median cost n_med = T*/(eps^2 G^2) d^(k-1).

    Give ``zeta`` (default 0.3) or ``eps``, not both; zeta (or the zeta that eps implies) must lie in
    ZETA_RANGE and k_max in [1, K_MAX_LIMIT] (ConfigError; zeta is checked before any work); they are tied by zeta = k |c_k| / (eps G^2)
    (k = 4: eps = 4 |c_4| / (zeta G^2), docs/theory/mcm.md section 8.3). k, c_k from :func:`leading_coefficient`,
    G^2 from :func:`gradient_noise`, T* from :func:`escape_median`. ``threshold`` is the |alpha| of weak
    recovery, used for the barrier check. ConfigError when k <= 2 (learned at ~d log d with eta ~ 1/d)
    or when a mixed (alpha_u, alpha_v) term of order < k makes the overlaps escape jointly (coupled
    latents with beta_u > 0). Warnings (strings) flag settings outside the recommended regime.

    Setting S1 of docs/theory/calibration.md (tanh, a_out = -1, t = 0.1, bernoulli_gauss(0.1), beta_v = 20,
    beta_u = 0): c_4 = -0.867, G^2 = 0.923, eps = 12.53 at zeta = 0.3, n_med = 0.0205 d^3.
    """
    check_choice("direction", direction, ("u", "v"))
    threshold = check_open_unit("threshold", threshold)
    if threshold < 1e-6:  # the needed dimension (barrier / threshold)^2 would not be an integer of any run
        raise ConfigError(f"threshold must lie in [1e-06, 1) (got {threshold:g})")
    if zeta is not None and eps is None:
        _check_zeta("zeta", check_positive("zeta", zeta), zeta)
    k, c_k, warnings = _check_escape_direction(model, neuron, direction, k_max)
    g2 = gradient_noise(neuron)
    zeta, eps = _escape_parameters(k, c_k, g2, zeta, eps)
    attractive = k % 2 == 1 or c_k < 0
    t_star = escape_median(zeta, k) if attractive else None
    barrier = escape_barrier(zeta, k)
    return Calibration(
        direction=direction, k=k, c_k=c_k, G2=g2, R=g2 / c_k**2, attractive=attractive, zeta=zeta, eps=eps,
        t_star=t_star, n_med_coefficient=None if t_star is None else t_star / (eps**2 * g2), barrier=barrier,
        threshold=threshold, min_dimension=math.ceil((BARRIER_MARGIN * barrier / threshold) ** 2),
        warnings=tuple(warnings + _regime_warnings(k, c_k, zeta, attractive)),
    )
