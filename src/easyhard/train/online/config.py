"""Settings and records of an online-SGD ensemble run (docs/theory/mcm.md section 8.1)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from easyhard._validate import (
    ConfigError,
    check_choice,
    check_int_at_least,
    check_nonnegative,
    check_positive,
    check_unit_interval,
)

WEIGHTINGS = ("none", "eps")
DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass(frozen=True)
class OnlineSGDConfig:
    """Online SGD settings (docs/theory/mcm.md section 8.1).

    steps: SGD steps per member; step size eta = delta / d**p (``delta`` a number or one per member).
    spherical: project the gradient on the tangent space and renormalise (else plain SGD).
    n_samples: None for a fresh sample every step, else a fixed training set of that many samples
        per member, visited in passes with a fresh random order each pass (multi-pass SGD).
    t: fixed OU time, or ``t_range`` = (t_min, t_max) to draw t ~ U(t_min, t_max) every step.
    weighting: loss weight per step, "none" (x0-loss) or "eps" (a_t^2/s_t^2: the noise-prediction loss).
    n_logs: number of log-spaced record points (half as many linearly spaced ones are added).
    thresholds: |alpha| levels whose first-passage steps are tracked at every step.
    persistence: a crossing at step tau counts as recovery only if |alpha| >= threshold still holds at
        step tau + floor(persistence * tau) (0: every first passage counts).
    graph_block: steps per CUDA-graph block of the torch engine (0: GRAPH_BLOCK on CUDA, none on CPU); a
        positive value also runs the static-buffer block path on CPU, which is how it is tested there.
    engine: a name of :data:`easyhard.train.online.registry.REGISTRY`: "numba" (CPU kernel), "torch"
        (CPU/CUDA), "reduced" (the exact-in-law simulation of the overlaps: tied single neuron, fresh
        samples, fixed t, spherical SGD; :mod:`easyhard.train._reduced`), whose cost per step does not grow
        with d; or "auto" (numba on CPU when supported, else torch).
    """

    steps: int = 10_000
    delta: float | tuple[float, ...] = 0.5
    p: float = 1.0
    spherical: bool = True
    n_samples: int | None = None
    t: float = 0.5
    t_range: tuple[float, float] | None = None
    weighting: str = "none"
    n_logs: int = 120
    thresholds: tuple[float, ...] = (0.2, 0.5)
    persistence: float = 0.5
    graph_block: int = 0
    engine: str = "auto"
    dtype: str = "float32"
    device: str = "cpu"

    def __post_init__(self):
        from easyhard.train.online.registry import engine_names

        check_int_at_least("steps", self.steps, 1)
        for i, dl in enumerate(self.deltas):
            check_positive("delta" if len(self.deltas) == 1 else f"delta[{i}]", dl)
        check_nonnegative("p", self.p)
        if self.n_samples is not None:
            check_int_at_least("n_samples", self.n_samples, 1)
        check_positive("t", self.t)
        if self.t_range is not None:
            lo, hi = self.t_range
            check_positive("t_range[0]", lo)
            if not hi > lo:
                raise ConfigError(f"t_range must satisfy 0 < t_min < t_max (got {self.t_range})")
        check_choice("weighting", self.weighting, WEIGHTINGS)
        check_int_at_least("n_logs", self.n_logs, 2)
        if not self.thresholds:
            raise ConfigError("thresholds must hold at least one level in (0, 1]")
        for th in self.thresholds:
            check_unit_interval("thresholds", th)
        check_nonnegative("persistence", self.persistence)
        check_int_at_least("graph_block", self.graph_block, 0)
        check_choice("engine", self.engine, engine_names())
        check_choice("dtype", self.dtype, DTYPES)
        if self.device != "cpu" and not self.device.startswith("cuda"):
            raise ConfigError(f"device must be cpu or cuda[:N] (got {self.device!r})")

    @property
    def deltas(self) -> tuple[float, ...]:
        return tuple(self.delta) if isinstance(self.delta, (tuple, list)) else (float(self.delta),)

    def etas(self, d: int, E: int) -> np.ndarray:
        """Per-member step sizes eta_e = delta_e / d**p, shape (E,)."""
        deltas = self.deltas
        if len(deltas) not in (1, E):
            raise ConfigError(f"delta must be one number or one per member ({E}), got {len(deltas)} values")
        return np.broadcast_to(np.asarray(deltas, dtype=np.float64) / d**self.p, (E,)).copy()

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class OnlineSGDResult:
    """What one ensemble run recorded.

    log_steps (L,): steps after which the state was recorded (0 = initialisation).
    overlaps (L, E, K, 3): w_k . (u, v, m) / ||w_k|| at those steps.
    loss (L-1, E): mean weighted sample loss over the steps (log_steps[l-1], log_steps[l]].
    first_hit (E, K, 3, T): first step with |overlap| >= thresholds[T] (-1: never), checked every step.
    recovered (E, K, 3, T): recovery step with the persistence check of the config (-1: censored).
    params: final parameters {"w": (E,K,d)[, "o": (E,K,d)]} on the host; the reduced engine has no
        weights and returns the final overlaps {"alpha": (E,1,3)}.
    """

    log_steps: np.ndarray
    overlaps: np.ndarray
    loss: np.ndarray
    first_hit: np.ndarray
    recovered: np.ndarray
    thresholds: tuple[float, ...]
    etas: np.ndarray
    seeds: tuple[int, ...]
    engine: str
    params: dict[str, torch.Tensor] = field(repr=False)
    training_counts: np.ndarray | None = field(default=None, repr=False)

    def _level(self, threshold: float) -> int:
        if threshold not in self.thresholds:
            raise ConfigError(f"threshold must be one of the tracked {self.thresholds} (got {threshold})")
        return self.thresholds.index(threshold)

    def hits(self, threshold: float) -> np.ndarray:
        """first_hit at one of the tracked thresholds: (E, K, 3)."""
        return self.first_hit[..., self._level(threshold)]

    def recoveries(self, threshold: float) -> np.ndarray:
        """Persistent recovery steps at one of the tracked thresholds (-1: censored): (E, K, 3)."""
        return self.recovered[..., self._level(threshold)]


def log_steps(steps: int, n_logs: int) -> np.ndarray:
    """0, ``n_logs`` geometrically spaced steps in [1, steps] and ``n_logs // 2`` linearly spaced ones."""
    geo = np.rint(np.geomspace(1, steps, n_logs))
    lin = np.rint(np.linspace(0, steps, n_logs // 2 + 1))
    return np.unique(np.concatenate([[0], geo, lin, [steps]])).astype(np.int64)
