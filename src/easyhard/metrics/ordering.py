"""Phase ordering of two training curves, decided by the curves with bootstrap errors
(docs/theory/generalization.md section 10).

A statistic is recorded at C checkpoints for U units (models, pairs of models or test inputs), curves (U, C),
or on two crossed unit axes, curves (U, V, C) (e.g. pairs of models x inputs shared by every pair). Its
curve is the unit mean m(c) = mean_u curves[u, c] (mean over u and v for two axes). A marker is the extremum
of m among the eligible checkpoints (ties to the earliest).

Bootstrap: a replicate resamples the units with replacement, each unit axis independently (the two-way
bootstrap for crossed axes: rows and columns resampled separately; :func:`~easyhard.metrics.bootstrap_replicates`
with one stratum per axis), and recomputes the mean curve m_b. The marker's interval is the 95% range of the
replicates' extremum steps (lower and upper order statistics, so both ends are checkpoint steps). The error
of a difference m(at) - m(ref) is the standard deviation over replicates of m_b(at) - m_b(ref): a paired
bootstrap, both checkpoints taken on the same resampled units.

Phase ordering (:func:`phase_ordering`) of an early statistic (marker tau_early, e.g. the maximum of a
cross-split similarity) and a late one (tau_late, e.g. the minimum of the test loss):

    early_gap = how much worse the early statistic is at tau_late than at tau_early   (> 0: worse)
    late_gap  = how much worse the late statistic is at tau_early than at tau_late
    ordered   = tau_early < tau_late  and  early_gap > z se(early_gap)  and  late_gap > z se(late_gap)

Coinciding markers give gaps of exactly 0, never ordered; a positive gap with a zero error (every replicate
agrees) passes, a zero gap never does. The lead is tau_late - tau_early in checkpoints; its interval comes
from the replicates of both markers (the two statistics' units resampled independently).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from easyhard._validate import ConfigError, check_n_boot, check_nonnegative
from easyhard.metrics.bootstrap import Seed, bootstrap_replicates

#: the coverage of the marker and lead intervals
LEVEL = 0.95


@dataclass(frozen=True)
class Marker:
    """The extremum of a mean curve: its checkpoint position, its step, and the 95% interval (low, high) of
    its step over bootstrap replicates (both checkpoint steps)."""

    position: int
    step: int
    interval: tuple[int, int]

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class PhaseOrdering:
    """The verdict of :func:`phase_ordering` (module docstring): both markers, the lead in checkpoints
    (late.position - early.position) with its 95% interval, each gap with its paired-bootstrap standard
    error, the criterion z and whether the curves are ordered."""

    early: Marker
    late: Marker
    lead: int
    lead_interval: tuple[int, int]
    early_gap: float
    early_se: float
    late_gap: float
    late_se: float
    z: float
    ordered: bool

    @property
    def early_z(self) -> float:
        """early_gap / early_se (inf for a positive gap with zero error, 0 for a zero gap)."""
        return _ratio(self.early_gap, self.early_se)

    @property
    def late_z(self) -> float:
        """late_gap / late_se (inf for a positive gap with zero error, 0 for a zero gap)."""
        return _ratio(self.late_gap, self.late_se)

    def to_dict(self) -> dict:
        """The fields as JSON-ready values, plus early_z and late_z (None where infinite: a positive gap with
        zero error)."""
        out = asdict(self)
        out.update({k: (v if np.isfinite(v) else None) for k, v in (("early_z", self.early_z), ("late_z", self.late_z))})
        return out


def _ratio(gap: float, se: float) -> float:
    if se > 0:
        return gap / se
    return float(np.sign(gap)) * float("inf") if gap != 0 else 0.0


def _steps(steps: np.ndarray) -> np.ndarray:
    """Checkpoint steps (C,), strictly increasing integers."""
    steps = np.asarray(steps)
    if steps.ndim != 1 or len(steps) == 0 or not np.issubdtype(steps.dtype, np.integer):
        raise ConfigError(f"steps must be a non-empty 1-d array of integer steps (got shape {steps.shape}, "
                          f"dtype {steps.dtype})")
    if (np.diff(steps) <= 0).any():
        raise ConfigError("steps must be strictly increasing")
    return steps


def _units(name: str, curves: np.ndarray, C: int) -> np.ndarray:
    """Curves (U, C) or (U, V, C) with U, V >= 1, finite, float64."""
    curves = np.asarray(curves, dtype=np.float64)
    if curves.ndim not in (2, 3) or curves.shape[-1] != C or 0 in curves.shape:
        raise ConfigError(f"{name} must have shape (U, C) or (U, V, C) with C = {C} checkpoints "
                          f"(got {curves.shape})")
    if not np.isfinite(curves).all():
        raise ConfigError(f"{name} must be finite")
    return curves


def _eligible(eligible: np.ndarray | None, C: int) -> np.ndarray:
    """(C,) bool with at least one True (all checkpoints when None)."""
    if eligible is None:
        return np.ones(C, dtype=bool)
    eligible = np.asarray(eligible)
    if eligible.shape != (C,) or eligible.dtype != bool or not eligible.any():
        raise ConfigError(f"eligible must be a bool array of shape ({C},) with at least one True "
                          f"(got shape {eligible.shape}, dtype {eligible.dtype})")
    return eligible


def _counts(idx: np.ndarray, n: int) -> np.ndarray:
    """Resampled indices (B, n) -> how often each unit was drawn, (B, n) float64."""
    B = len(idx)
    flat = (idx + n * np.arange(B)[:, None]).ravel()
    return np.bincount(flat, minlength=B * n).reshape(B, n).astype(np.float64)


def _replicate_means(curves: np.ndarray, n_boot: int = 1000, seed: Seed = 0) -> np.ndarray:
    """Mean curves of ``n_boot`` bootstrap replicates (module docstring), (n_boot, C), for curves (U, C) or
    (U, V, C) (two-way: rows and columns resampled independently): m_b(c) = sum_{u,v} w_bu w'_bv curves[u, v, c]
    with w, w' the resampling frequencies (counts / U, counts / V)."""
    curves = np.asarray(curves, dtype=np.float64)
    n_boot = check_n_boot("n_boot", n_boot)
    sizes = curves.shape[:-1]

    def statistic(*idx: np.ndarray) -> np.ndarray:
        w_u = _counts(idx[0], sizes[0]) / sizes[0]  # (B, U)
        if len(sizes) == 1:
            return w_u @ curves
        w_v = _counts(idx[1], sizes[1]) / sizes[1]  # (B, V)
        # sum over v first as one matrix product: (B, V) @ (V, U*C) -> (B, U, C)
        per_row = (w_v @ np.moveaxis(curves, 1, 0).reshape(sizes[1], -1)).reshape(len(w_u), sizes[0], -1)
        return np.einsum("bu,buc->bc", w_u, per_row)

    return bootstrap_replicates(statistic, list(sizes), n_boot, seed, vectorized=True)


def _extremum(means: np.ndarray, maximum: bool, eligible: np.ndarray) -> np.ndarray:
    """Positions (...) of the extremum of mean curves (..., C) among eligible checkpoints, ties to the earliest."""
    v = -means if maximum else means
    return np.argmin(np.where(eligible, v, np.inf), axis=-1)


def _integer_interval(values: np.ndarray) -> tuple[int, int]:
    """The 95% range of integer replicates: the lower and upper order statistics at 2.5% and 97.5%."""
    tail = 50 * (1 - LEVEL)
    return (int(np.percentile(values, tail, method="lower")), int(np.percentile(values, 100 - tail, method="higher")))


def _marker(steps: np.ndarray, curves: np.ndarray, boots: np.ndarray, maximum: bool, eligible: np.ndarray
            ) -> tuple[Marker, np.ndarray]:
    """The marker of the full data and the replicates' extremum positions (n_boot,)."""
    position = int(_extremum(curves.reshape(-1, len(steps)).mean(0), maximum, eligible))
    positions = _extremum(boots, maximum, eligible)
    return Marker(position, int(steps[position]), _integer_interval(steps[positions])), positions


def locate(steps: np.ndarray, curves: np.ndarray, maximum: bool = False, eligible: np.ndarray | None = None,
           n_boot: int = 1000, seed: Seed = 0) -> Marker:
    """The minimum (or maximum) of the unit-mean curve of ``curves`` (U, C) or (U, V, C) over the checkpoints
    ``steps`` (C,), among ``eligible`` (C,) bool checkpoints (default all), with the 95% interval of its step
    over ``n_boot`` bootstrap replicates (module docstring)."""
    steps = _steps(steps)
    curves = _units("curves", curves, len(steps))
    eligible = _eligible(eligible, len(steps))
    return _marker(steps, curves, _replicate_means(curves, n_boot, seed), maximum, eligible)[0]


def _check_position(name: str, value: int, C: int) -> int:
    if isinstance(value, bool) or int(value) != value or not 0 <= int(value) < C:
        raise ConfigError(f"{name} must be a checkpoint position in [0, {C - 1}] (got {value!r})")
    return int(value)


def paired_difference(curves: np.ndarray, at: int, ref: int, n_boot: int = 1000, seed: Seed = 0
                      ) -> tuple[float, float]:
    """(mean over units of curves[..., at] - curves[..., ref], its bootstrap standard error): the paired
    bootstrap over the units of ``curves`` (U, C) or (U, V, C) (module docstring; SE = standard deviation of
    the replicates, ddof = 1)."""
    curves = np.asarray(curves, dtype=np.float64)
    C = curves.shape[-1] if curves.ndim else 0
    curves = _units("curves", curves, C)
    at, ref = _check_position("at", at, C), _check_position("ref", ref, C)
    boots = _replicate_means(curves, n_boot, seed)
    return _difference(curves, boots, at, ref)


def _difference(curves: np.ndarray, boots: np.ndarray, at: int, ref: int) -> tuple[float, float]:
    diff = curves[..., at] - curves[..., ref]
    return float(diff.mean()), float(np.std(boots[:, at] - boots[:, ref], ddof=1))


def phase_ordering(steps: np.ndarray, early_curves: np.ndarray, late_curves: np.ndarray, early_maximum: bool,
                   late_maximum: bool = False, z: float = 3.0, eligible: np.ndarray | None = None,
                   n_boot: int = 1000, seed: Seed = 0) -> PhaseOrdering:
    """Whether the extremum of ``early_curves`` precedes that of ``late_curves``, decided by the curves (module
    docstring).

    steps (C,); early_curves and late_curves (U, C) or (U, V, C), each with its own units; early_maximum /
    late_maximum: whether each marker is a maximum (e.g. a similarity) or a minimum (a loss, a divergence);
    ``eligible`` (C,) restricts the early marker's search. The two statistics are resampled independently
    (seeds [*seed, 0] and [*seed, 1], an int seed taken as [seed]); each gap's error is the paired bootstrap on
    its own statistic's replicates.
    """
    steps = _steps(steps)
    C = len(steps)
    early_curves = _units("early_curves", early_curves, C)
    late_curves = _units("late_curves", late_curves, C)
    eligible = _eligible(eligible, C)
    z = check_nonnegative("z", z)
    base = [seed] if isinstance(seed, (int, np.integer)) else list(seed)
    early_boots = _replicate_means(early_curves, n_boot, [*base, 0])
    late_boots = _replicate_means(late_curves, n_boot, [*base, 1])
    early, early_positions = _marker(steps, early_curves, early_boots, early_maximum, eligible)
    late, late_positions = _marker(steps, late_curves, late_boots, late_maximum, np.ones(C, dtype=bool))
    # "worse" is lower for a maximum, higher for a minimum
    early_gap, early_se = _difference(early_curves, early_boots, late.position, early.position)
    late_gap, late_se = _difference(late_curves, late_boots, early.position, late.position)
    early_gap = (-early_gap if early_maximum else early_gap) + 0.0  # + 0.0: no negative zero
    late_gap = (-late_gap if late_maximum else late_gap) + 0.0
    ordered = early.position < late.position and early_gap > z * early_se and late_gap > z * late_se
    return PhaseOrdering(early, late, late.position - early.position,
                         _integer_interval(late_positions - early_positions), early_gap, early_se, late_gap, late_se,
                         z, bool(ordered))
