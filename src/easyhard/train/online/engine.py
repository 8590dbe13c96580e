"""The engine protocol: what the online-SGD driver (:mod:`.driver`) asks of an engine.

An engine holds the mutable state of E independent runs (weights or overlaps, random streams, loss
accumulators, recovery tracks) and advances it through the steps of a chunk of per-member draws
(:class:`easyhard.train.online.draws.MemberDraws`), and keeps, at every step, the peak weight norm of
the divergence rule (:mod:`easyhard.train.divergence`). The driver owns everything else: the draws, the
record points, the divergence check and the checkpoint file. An engine exposes its state as live
arrays, tensors and generators (:meth:`Engine.live_state`); the driver saves them and, on resume,
writes the saved values back into them in place (so addresses captured by a CUDA graph stay valid).

A new engine is a module with a class that satisfies :class:`Engine` and one line in
:data:`easyhard.train.online.registry.REGISTRY`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from easyhard.models import Committee
from easyhard.train.online.config import OnlineSGDConfig

#: what :meth:`Engine.live_state` maps names to: arrays and tensors written back in place, generators re-seeded
LiveState = dict[str, np.ndarray | torch.Tensor | torch.Generator]


@dataclass(frozen=True)
class EngineSetup:
    """The initial state of E runs, from which an engine is built.

    params: initial weights {"w": (E,K,d)[, "o": (E,K,d)]} (float64, host); X: training sets (E,n,d)
    (float64) or None for fresh samples; P: spikes (u, v, m) per member (E,3,d); coef: sampler coefficients
    (E,4) = (sqrt beta_u, sqrt beta_v, whitening shrink, beta_m); states: xoshiro256** member streams
    (E,4) uint64 (:mod:`easyhard.train._rng`); etas: step sizes (E,); thresholds: tracked levels (T,).
    """

    model: Committee
    config: OnlineSGDConfig
    params: dict[str, torch.Tensor]
    X: torch.Tensor | None
    P: np.ndarray
    coef: np.ndarray
    states: np.ndarray
    etas: np.ndarray
    thresholds: np.ndarray


class Engine(Protocol):
    """E online-SGD runs advanced chunk by chunk; K neurons, 3 directions (u, v, m), T thresholds."""

    def __init__(self, setup: EngineSetup) -> None: ...

    @staticmethod
    def unsupported(model: Committee, config: OnlineSGDConfig) -> str | None:
        """None if the engine runs this setting (on a device it is registered for), else the reason."""

    def load_chunk(self, chunk: dict[str, np.ndarray]) -> None:
        """Take the draws of the next chunk of C steps: lam, nu, t (E,C); idx (E,C) training-set rows;
        tco (E,C,4) = (a_t, s_t, skip coefficient c_t, loss weight) (:meth:`.MemberDraws.chunk`)."""

    def run(self, i0: int, i1: int, step0: int) -> None:
        """Advance every member through chunk steps i0 .. i1-1; ``step0`` is the global step of chunk step 0."""

    def take_loss(self) -> np.ndarray:
        """The summed weighted sample losses (E,) since the last call, and reset them."""

    def overlaps(self) -> np.ndarray:
        """w_k . (u, v, m) / ||w_k|| now: (E, K, 3) float64."""

    def peak_norm(self) -> np.ndarray:
        """The largest norm (E,) float64 of any weight vector after any step so far, before normalisation (NaN once
        one was NaN): the quantity of :func:`easyhard.train.divergence.diverged_members`. Part of :meth:`live_state`."""

    def recovery(self) -> tuple[np.ndarray, np.ndarray]:
        """(first_hit, recovered) steps (E, K, 3, T), -1 where none (:func:`easyhard.train._kernel.track_recovery`)."""

    def live_state(self) -> LiveState:
        """Every array, tensor and generator that the steps change, by name (saved and restored by the driver)."""

    def params(self) -> dict[str, torch.Tensor]:
        """The final parameters on the host (:attr:`.OnlineSGDResult.params`)."""
