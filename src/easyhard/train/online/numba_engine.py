"""The ``numba`` engine (CPU): the fused parallel kernel :func:`easyhard.train._kernel.run_steps`.

The kernel draws the Gaussians of member e from its own xoshiro256** stream, so an ensemble run equals
E separate runs bit for bit. Its state is numpy arrays advanced in place.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from easyhard.activations import Activation
from easyhard.data.latents import Rademacher
from easyhard.models import Committee
from easyhard.oracles import GaussianChannels, Matched
from easyhard.train.online.config import OnlineSGDConfig
from easyhard.train.online.engine import EngineSetup


def matched_coefficients(act: Matched) -> tuple[float, float, float]:
    """sigma_match(h) = c1 h + c2 tanh(c3 h) for Rademacher nu (docs/theory/mcm.md section 4.3)."""
    ch = GaussianChannels.at(0.0, act.beta_v, act.t)
    b = math.sqrt(act.beta_v / (1 + act.beta_v))
    return ch.a / ((1 + act.beta_v) * ch.s2) - ch.a, b * ch.delta / ch.s2, ch.m_v / ch.s2


def kernel_activation(act: Activation) -> tuple[int, np.ndarray]:
    """The kernel's code of ``act`` and its parameters (c1, c2, c3) of :func:`matched_coefficients` (else zeros)."""
    from easyhard.train._kernel import ACTIVATION_CODES

    return ACTIVATION_CODES[act.name], np.array(matched_coefficients(act) if isinstance(act, Matched) else (0.0,) * 3)


def kernel_unsupported(model: Committee, config: OnlineSGDConfig) -> str | None:
    """None if the kernel's activations cover this setting, else the reason they do not."""
    from easyhard.train._kernel import ACTIVATION_CODES

    act = model.activation
    if act.name not in ACTIVATION_CODES:
        return f"activation {act.name!r} has no kernel code"
    if isinstance(act, Matched):
        if not isinstance(act.law, Rademacher):
            return "the kernel's matched activation is the Rademacher closed form"
        if config.t_range is not None:
            return "the matched activation is defined at one time t"
    return None


def recovery_arrays(shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(first_hit, pending, recovered) int64 arrays of ``shape``, all -1."""
    return tuple(np.full(shape, -1, np.int64) for _ in range(3))


def _spike_axes(P: np.ndarray) -> np.ndarray:
    """Per member, the coordinates of (u, v, m) if all three are coordinate vectors, else (-1, -1, -1): (E, 3)."""
    axes = np.argmax(np.abs(P), axis=-1)
    is_axis = (np.take_along_axis(P, axes[..., None], -1)[..., 0] == 1.0) & ((P != 0).sum(-1) == 1)
    return np.where(is_axis.all(-1, keepdims=True), axes, -1).astype(np.int64)


class NumbaEngine:
    """State of the numba engine: numpy arrays advanced in place by :func:`easyhard.train._kernel.run_steps`."""

    unsupported = staticmethod(kernel_unsupported)

    def __init__(self, setup: EngineSetup):
        model, config, params, X = setup.model, setup.config, setup.params, setup.X
        dt = np.float32 if config.dtype == "float32" else np.float64
        self.model, self.config = model, config
        self.W = np.ascontiguousarray(params["w"].numpy().astype(dt))
        self.O = np.ascontiguousarray(params["o"].numpy().astype(dt)) if "o" in params else np.zeros((1, 1, 1), dt)
        self.X = np.ascontiguousarray(X.numpy().astype(dt)) if X is not None else np.zeros((1, 1, 1), dt)
        self.P, self.coef, self.states, self.etas, self.thr = (setup.P, setup.coef, setup.states, setup.etas,
                                                               setup.thresholds)
        self.axes = _spike_axes(self.P)
        self.code, self.act_par = kernel_activation(model.activation)
        self.loss_acc = np.zeros(len(self.etas))
        self.peak = np.zeros(len(self.etas))
        self.tracks = recovery_arrays((*self.W.shape[:2], 3, len(self.thr)))

    def load_chunk(self, chunk):
        self.chunk = chunk

    def run(self, i0, i1, step0):
        """Kernel call on at most E threads (more would only wait at the end of every call)."""
        import numba

        from easyhard.train._kernel import run_steps

        c, m = self.chunk, self.model
        threads = numba.get_num_threads()
        numba.set_num_threads(min(threads, len(self.etas)))
        try:
            run_steps(self.W, self.O, self.states, self.P, self.axes, self.coef, c["lam"], c["nu"], self.X, c["idx"],
                      c["tco"], i0, i1, step0, self.code, self.act_par, float(m.K) ** (-m.omega), float(m.a_out),
                      m.second_layer == "tied", self.config.spherical, self.config.n_samples is not None,
                      self.etas, self.loss_acc, self.peak, self.thr, self.config.persistence, *self.tracks)
        finally:
            numba.set_num_threads(threads)

    def take_loss(self):
        out = self.loss_acc.copy()
        self.loss_acc[:] = 0.0
        return out

    def _views(self) -> dict[str, torch.Tensor]:
        """The parameters as tensors sharing memory with the kernel's arrays."""
        out = {"w": torch.from_numpy(self.W)}
        if self.model.second_layer == "untied":
            out["o"] = torch.from_numpy(self.O)
        return out

    def overlaps(self):
        params = {k: v.double() for k, v in self._views().items()}
        return self.model.overlaps(params, torch.from_numpy(self.P)).numpy()

    def peak_norm(self):
        return self.peak.copy()

    def recovery(self):
        return self.tracks[0].copy(), self.tracks[2].copy()

    def live_state(self) -> dict[str, np.ndarray]:
        return {"W": self.W, "O": self.O, "states": self.states, "loss_acc": self.loss_acc, "peak": self.peak,
                **{f"track{i}": t for i, t in enumerate(self.tracks)}}

    def params(self):
        return {k: v.clone() for k, v in self._views().items()}
