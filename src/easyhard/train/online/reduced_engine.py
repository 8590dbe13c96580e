"""The ``reduced`` engine: the exact-in-law simulation of the overlaps of the tied single neuron
(:mod:`easyhard.train._reduced`), at a cost per step that does not depend on d.

Two implementations run the same chain: :class:`ReducedEngine`, the numba kernel on CPU, and
:class:`TorchReducedEngine`, all members at once in torch, used on CUDA, where the draws come per block
from one device generator (normals and exact chi-square draws via torch's gamma sampler). On CPU (tests)
the torch one consumes the member streams of the numba kernel, so the two can be compared number for number.
"""

from __future__ import annotations

import numpy as np
import torch

from easyhard.models import Committee
from easyhard.train.online.config import OnlineSGDConfig
from easyhard.train.online.engine import EngineSetup
from easyhard.train.online.numba_engine import kernel_activation, kernel_unsupported, recovery_arrays
from easyhard.train.online.torch_engine import DrawBlocks, TensorTracks, device_generator


def chain_unsupported(model: Committee, config: OnlineSGDConfig) -> str | None:
    """None if the exact reduced chain describes this setting, else the reason it does not."""
    if model.K != 1 or model.second_layer != "tied":
        return "it needs the tied single neuron (K = 1)"
    if config.n_samples is not None or config.t_range is not None or not config.spherical:
        return "it needs fresh samples, a fixed t and spherical SGD"
    if model.d < 8:
        return "it needs d >= 8"
    return None


def _initial_overlaps(setup: EngineSetup) -> torch.Tensor:
    """alpha = w . (u, v, m) of each member's initial neuron: (E, 3) float64."""
    return setup.model.overlaps(setup.params, torch.from_numpy(setup.P))[:, 0]


class ReducedEngine:
    """State of the exact reduced simulation: the overlaps (E, 3) of each member (:func:`._reduced.run_reduced`)."""

    @staticmethod
    def unsupported(model: Committee, config: OnlineSGDConfig) -> str | None:
        """The chain's conditions, and activations the numba kernel knows."""
        return chain_unsupported(model, config) or kernel_unsupported(model, config)

    def __init__(self, setup: EngineSetup):
        self.model, self.config = setup.model, setup.config
        self.alpha = np.ascontiguousarray(_initial_overlaps(setup).numpy())
        self.coef, self.states, self.etas, self.thr = setup.coef, setup.states, setup.etas, setup.thresholds
        self.code, self.act_par = kernel_activation(self.model.activation)
        self.loss_acc = np.zeros(len(self.etas))
        self.peak = np.zeros(len(self.etas))
        self.tracks = recovery_arrays((len(self.etas), 3, len(self.thr)))

    def load_chunk(self, chunk):
        self.chunk = chunk

    def run(self, i0, i1, step0):
        from easyhard.train._reduced import run_reduced

        c = self.chunk
        a, s, skip, wt = (float(x) for x in c["tco"][0, 0])
        run_reduced(self.alpha, self.states, self.coef, c["lam"], c["nu"], i0, i1, step0, a, s, skip, wt, self.code,
                    self.act_par, float(self.model.a_out), float(self.model.d - 4), self.etas, self.loss_acc, self.peak,
                    self.thr, self.config.persistence, *self.tracks)

    def take_loss(self):
        out = self.loss_acc.copy()
        self.loss_acc[:] = 0.0
        return out

    def overlaps(self):
        return self.alpha[:, None, :].copy()

    def peak_norm(self):
        return self.peak.copy()

    def recovery(self):
        return self.tracks[0][:, None].copy(), self.tracks[2][:, None].copy()

    def live_state(self) -> dict[str, np.ndarray]:
        return {"alpha": self.alpha, "states": self.states, "loss_acc": self.loss_acc, "peak": self.peak,
                **{f"track{i}": t for i, t in enumerate(self.tracks)}}

    def params(self):
        return {"alpha": torch.from_numpy(self.overlaps())}


class TorchReducedEngine(TensorTracks):
    """The reduced simulation in torch, all members at once (:func:`._reduced.reduced_step_torch`)."""

    unsupported = staticmethod(chain_unsupported)

    def __init__(self, setup: EngineSetup):
        self.model, self.config = setup.model, setup.config
        self.dev = torch.device(self.config.device)
        put = lambda a: torch.as_tensor(a).to(self.dev, torch.float64)  # noqa: E731
        self.alpha = put(_initial_overlaps(setup)).contiguous()
        self.coef, self.eta, self.thr = put(setup.coef), put(setup.etas), put(setup.thresholds)
        self.states = setup.states
        self._init_tracks((len(setup.etas), 1, 3, len(setup.thresholds)))
        self.m_r = float(self.model.d - 4)
        self.gen = device_generator(self.dev, setup.states)

    def load_chunk(self, chunk):
        self.chunk = {k: torch.as_tensor(v).to(self.dev) for k, v in chunk.items()}
        self.draws = DrawBlocks(self._draw, len(self.eta) * 11)

    def _draw(self, steps: int) -> torch.Tensor:
        """(E, steps, 11) random numbers of :func:`._reduced.fill_reduced_draws`: the kernel's member streams on
        CPU; on CUDA normals and exact chi-square (gamma) draws from the device generator."""
        from easyhard.train._reduced import fill_reduced_draws

        E = len(self.eta)
        if self.gen is None:
            buf = np.empty((E, steps, 11))
            fill_reduced_draws(self.states, self.m_r, buf)
            return torch.from_numpy(buf)
        normals = torch.randn((E, steps, 9), generator=self.gen, dtype=torch.float64, device=self.dev)
        shape = torch.full((E, steps, 2), 0.5 * self.m_r, dtype=torch.float64, device=self.dev)
        shape[..., 1] -= 0.5
        chi2 = 2.0 * torch._standard_gamma(shape, generator=self.gen)
        return torch.cat([normals[..., :8], chi2, normals[..., 8:]], -1)

    def run(self, i0, i1, step0):
        from easyhard.train._reduced import reduced_step_torch

        ch, m = self.chunk, self.model
        a, s, c, wt = (float(x) for x in ch["tco"][0, 0])
        for i in range(i0, i1):
            draws = self.draws.step(i, ch["tco"].shape[1])
            loss, norm = reduced_step_torch(self.alpha, draws, ch["lam"][:, i].double(), ch["nu"][:, i].double(),
                                            self.coef, a, s, c, wt, m.activation, float(m.a_out), self.eta)
            self.loss_acc.add_(loss)
            self._raise_peak(norm)
            self._track(self.alpha.abs()[:, None, :], step0 + i + 1)

    def overlaps(self):
        return self.alpha[:, None, :].cpu().numpy()

    def live_state(self) -> dict:
        out = {"alpha": self.alpha, "states": self.states, "loss_acc": self.loss_acc, "peak": self.peak,
               "hits": self.hits, "pending": self.pending, "rec": self.rec}
        return out | ({"gen": self.gen} if self.gen is not None else {})

    def params(self):
        return {"alpha": torch.from_numpy(self.overlaps())}
