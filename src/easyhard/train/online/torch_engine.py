"""The ``torch`` engine (CPU or CUDA): :class:`easyhard.models.Committee` gradients on a leading member axis.

On CPU it reads the same member streams as the numba kernel (:mod:`easyhard.train._rng`), so the two
engines can be compared number for number. On CUDA it replays blocks of steps captured in a CUDA graph,
with noise drawn per block from one device generator, and never synchronises with the host inside a block.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from easyhard.models import Committee, plain_step, spherical_step
from easyhard.train.online.config import DTYPES, OnlineSGDConfig
from easyhard.train.online.engine import EngineSetup

#: steps captured per CUDA graph by the torch engine on CUDA (fewer when a block's noise would exceed NOISE_BLOCK)
GRAPH_BLOCK = 32
#: most Gaussians the torch engine holds at once (2**26 float32 = 256 MiB)
NOISE_BLOCK = 2**26


def device_generator(dev: torch.device, states: np.ndarray) -> torch.Generator | None:
    """On CUDA, the one device generator of an ensemble, seeded from member 0's stream state (E,4); None on CPU,
    where the engines read the member streams themselves."""
    if dev.type != "cuda":
        return None
    return torch.Generator(dev).manual_seed(int(np.uint64(states[0, 0]) >> np.uint64(1)))


class DrawBlocks:
    """Random numbers of a chunk drawn block by block: ``draw(steps)`` returns (E, steps, ...) and a block
    holds at most NOISE_BLOCK numbers (``per_step`` numbers per step), so memory stays bounded at large E d.
    Blocks are drawn in step order, so the block size does not change the numbers."""

    def __init__(self, draw: Callable[[int], torch.Tensor], per_step: int):
        self.draw, self.per_step = draw, per_step
        self.block, self.start = None, 0

    def step(self, i: int, length: int) -> torch.Tensor:
        """The numbers of chunk step i (of ``length``): (E, ...)."""
        if self.block is None or i >= self.start + self.block.shape[1]:
            self.block = None  # free the previous block before drawing the next
            self.block = self.draw(min(length - i, max(1, NOISE_BLOCK // self.per_step)))
            self.start = i
        return self.block[:, i - self.start]


def spherical_step_norms(w: torch.Tensor, grad: torch.Tensor, eta: torch.Tensor) -> torch.Tensor:
    """The norms ||w_k - eta g_perp|| (E, K) of a :func:`easyhard.models.spherical_step` before its normalisation.

    g_perp = g - (g.w) w / ||w||^2 is orthogonal to w, so the squared norm is ||w||^2 + eta^2 (||g||^2 - (g.w)^2 /
    ||w||^2) (the last term clamped at 0 against round-off). w, grad (E, K, d); eta (E,).
    """
    w2 = (w * w).sum(-1)
    g_perp2 = ((grad * grad).sum(-1) - (grad * w).sum(-1) ** 2 / w2).clamp_min(0.0)
    return (w2 + eta[:, None] ** 2 * g_perp2).sqrt()


class TensorTracks:
    """First passage and persistent recovery on tensors (hits, pending, rec: (E, K, 3, T), on the device), the
    loss accumulator ``loss_acc`` (E,) float64 of :meth:`easyhard.train.online.engine.Engine.take_loss` and the
    peak weight norm ``peak`` (E,) float64 of :meth:`~easyhard.train.online.engine.Engine.peak_norm`."""

    def _init_tracks(self, shape: tuple[int, ...]) -> None:
        self.hits, self.pending, self.rec = (torch.full(shape, -1, dtype=torch.int64, device=self.dev)
                                             for _ in range(3))
        self.loss_acc, self.peak = (torch.zeros(shape[0], dtype=torch.float64, device=self.dev) for _ in range(2))

    def _raise_peak(self, norms: torch.Tensor) -> None:
        """peak = max(peak, largest of ``norms`` (E,) or (E, K) per member), in place; NaN propagates."""
        top = norms.amax(dim=1) if norms.ndim > 1 else norms
        torch.maximum(self.peak, top.double(), out=self.peak)

    def peak_norm(self):
        return self.peak.cpu().numpy().copy()

    def _track(self, al: torch.Tensor, n) -> None:
        """:func:`easyhard.train._kernel.track_recovery` on all members at once, in place."""
        above = al[..., None] >= self.thr
        self.hits.copy_(torch.where((self.hits < 0) & above, n, self.hits))
        open_ = self.rec < 0
        self.pending.copy_(torch.where(open_ & (self.pending < 0) & above, n, self.pending))
        window = torch.floor(self.pending.double() * self.config.persistence).long()
        due = open_ & (self.pending >= 0) & (n >= self.pending + window)
        self.rec.copy_(torch.where(due & above, self.pending, self.rec))
        self.pending.copy_(torch.where(due & ~above, -1, self.pending))

    def recovery(self):
        return self.hits.cpu().numpy(), self.rec.cpu().numpy()

    def take_loss(self):
        out = self.loss_acc.cpu().numpy().copy()
        self.loss_acc.zero_()
        return out


class TorchEngine(TensorTracks):
    """State of the torch engine: tensors on ``config.device`` with a leading member axis."""

    @staticmethod
    def unsupported(model: Committee, config: OnlineSGDConfig) -> str | None:
        """The torch engine runs every setting."""
        return None

    def __init__(self, setup: EngineSetup):
        model, config, states, etas = setup.model, setup.config, setup.states, setup.etas
        self.model, self.config = model, config
        self.dev, self.dt = torch.device(config.device), DTYPES[config.dtype]
        put = lambda a: torch.as_tensor(a).to(self.dev, self.dt)  # noqa: E731
        self.p = {k: put(v) for k, v in setup.params.items()}
        self.X = put(setup.X) if setup.X is not None else None
        self.P = put(setup.P)
        self.coef = put(setup.coef)
        self.states = states
        self.eta = put(etas)
        self.thr = put(setup.thresholds)
        E = len(etas)
        self.members = torch.arange(E, device=self.dev)
        self._init_tracks((*self.p["w"].shape[:2], 3, len(setup.thresholds)))
        self.cuda_gen = device_generator(self.dev, states)
        # CUDA graphs by default on CUDA; ``config.graph_block`` > 0 forces the static-buffer path (also on CPU)
        block = config.graph_block if config.graph_block > 0 else (GRAPH_BLOCK if self.dev.type == "cuda" else 0)
        per_step = 1 if config.n_samples is not None else 2
        block = min(block, max(1, NOISE_BLOCK // (E * per_step * model.d)))
        self.graphs = block > 0
        self.static = self._static_buffers(block) if self.graphs else None
        self.graph, self.warmed = None, False

    def load_chunk(self, chunk):
        """Move the chunk's draws to the device; its Gaussians are drawn block by block in :meth:`_noise`."""
        self.chunk = {k: torch.as_tensor(v).to(self.dev) for k, v in chunk.items()}
        per_step = 1 if self.config.n_samples is not None else 2
        self.noise = DrawBlocks(self._draw_noise, len(self.eta) * per_step * self.model.d)

    def _noise(self, i: int) -> torch.Tensor:
        """Gaussians of chunk step i: (E, per_step, d), from blocks of at most NOISE_BLOCK numbers (memory
        bounded at large E d); on CPU from the kernel's member streams (in order, so the block size does not
        change them), on CUDA from one device generator."""
        return self.noise.step(i, self.chunk["tco"].shape[1])

    def _draw_noise(self, steps: int) -> torch.Tensor:
        """(E, steps, per_step, d) Gaussians: (z, xi) per step online, xi alone with a training set."""
        from easyhard.train._rng import fill_normal

        E, d = len(self.eta), self.model.d
        per_step = 1 if self.config.n_samples is not None else 2
        if self.cuda_gen is not None:
            return torch.randn((E, steps, per_step, d), generator=self.cuda_gen, device=self.dev, dtype=self.dt)
        buf = np.empty((E, steps * per_step * d))
        fill_normal(self.states, buf)
        return torch.from_numpy(buf).view(E, steps, per_step, d).to(self.dt)

    def run(self, i0, i1, step0):
        """Steps i0 .. i1-1 of the chunk: CUDA-graph blocks where possible (:meth:`_run_blocks`), else eagerly."""
        if self.graphs:
            i0 = self._run_blocks(i0, i1, step0)
        ch = self.chunk
        for i in range(i0, i1):
            self._step(self._noise(i), ch["tco"][:, i].to(self.dt), ch["lam"][:, i:i + 1], ch["nu"][:, i:i + 1],
                       ch["t"][:, i:i + 1], ch["idx"][:, i], step0 + i + 1)

    def _step(self, noise, tco, lam, nu, t, idx, n):
        """One SGD step of every member, updating the state in place (fixed addresses, no host synchronisation).

        noise (E, 1 or 2, d): (z, xi) or xi; tco (E, 4); lam, nu, t (E, 1); idx (E,) training-set rows;
        n: the global step after this one (int, or a 0-d device tensor inside a CUDA graph).
        """
        m, (u, v, mm) = self.model, self.P.unbind(1)
        sbu, sbv, shrink, bm = (c[:, None] for c in self.coef.unbind(1))
        a, s, wt = tco[:, 0:1], tco[:, 1:2], tco[:, 3]
        if self.X is not None:
            x0, xi = self.X[self.members, idx], noise[:, 0]
        else:
            z, xi = noise[:, 0], noise[:, 1]
            cv = sbv * nu.to(self.dt) * (1 - shrink) - shrink * (v * z).sum(-1, keepdim=True)
            x0 = z + sbu * lam.to(self.dt) * u + cv * v + bm * mm
        xt = a * x0 + s * xi
        loss, grads = m.loss_and_gradients(self.p, x0[:, None], xt[:, None], t.to(self.dt), weight=wt[:, None])
        self.loss_acc.add_((wt * loss[:, 0]).double())
        w = self.p["w"]
        if self.config.spherical:
            norms = spherical_step_norms(w, grads["w"], self.eta)
            w.copy_(spherical_step(w, grads["w"], self.eta))
        else:
            w.copy_(plain_step(w, grads["w"], self.eta))
            norms = torch.linalg.vector_norm(w, dim=-1)
        if "o" in grads:
            self.p["o"].copy_(plain_step(self.p["o"], grads["o"], self.eta))
            norms = torch.maximum(norms, torch.linalg.vector_norm(self.p["o"], dim=-1))
        self._raise_peak(norms)
        self._track(m.overlaps(self.p, self.P).abs(), n)

    # ----- CUDA graphs: a block of B steps captured once and replayed --------------------------------------------
    def _static_buffers(self, B: int) -> dict[str, torch.Tensor]:
        """Inputs of one block at fixed addresses: noise (B, E, per_step, d), per-step draws (E, B[, 4]), n0."""
        E, d = len(self.eta), self.model.d
        per_step = 1 if self.config.n_samples is not None else 2
        z = lambda *shape, dtype=self.dt: torch.zeros(shape, dtype=dtype, device=self.dev)  # noqa: E731
        return {"noise": z(B, E, per_step, d), "tco": z(E, B, 4), "lam": z(E, B, dtype=torch.float64),
                "nu": z(E, B, dtype=torch.float64), "t": z(E, B, dtype=torch.float64),
                "idx": z(E, B, dtype=torch.int64), "n0": z(dtype=torch.int64)}

    def _block(self) -> None:
        """The B steps of one block, reading only the static buffers (what a CUDA graph records)."""
        st = self.static
        for j in range(st["noise"].shape[0]):
            self._step(st["noise"][j], st["tco"][:, j], st["lam"][:, j:j + 1], st["nu"][:, j:j + 1],
                       st["t"][:, j:j + 1], st["idx"][:, j], st["n0"] + (j + 1))

    def _fill_block(self, i0: int, step0: int) -> None:
        st, ch = self.static, self.chunk
        B = st["noise"].shape[0]
        for key in ("lam", "nu", "t", "idx"):
            st[key].copy_(ch[key][:, i0:i0 + B])
        st["tco"].copy_(ch["tco"][:, i0:i0 + B])
        if self.cuda_gen is not None:
            torch.randn(st["noise"].shape, generator=self.cuda_gen, dtype=self.dt, device=self.dev, out=st["noise"])
        else:  # CPU (tests): the member streams, as in the eager path
            st["noise"].copy_(torch.stack([self._noise(i0 + j) for j in range(B)]))
        st["n0"].fill_(step0 + i0)

    def _run_blocks(self, i0: int, i1: int, step0: int) -> int:
        """Whole blocks from i0 on; returns where the eager remainder starts. On CUDA the first block runs
        eagerly (warm-up on a side stream), the second is captured, and every block after that is one replay."""
        B = self.static["noise"].shape[0]
        while i1 - i0 >= B:
            self._fill_block(i0, step0)
            if self.dev.type != "cuda":
                self._block()
            elif self.graph is None and not self.warmed:
                side = torch.cuda.Stream(self.dev)
                side.wait_stream(torch.cuda.current_stream(self.dev))
                with torch.cuda.stream(side):
                    self._block()
                torch.cuda.current_stream(self.dev).wait_stream(side)
                self.warmed = True
            else:
                if self.graph is None:
                    self.graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(self.graph):
                        self._block()
                self.graph.replay()
            i0 += B
        return i0

    def overlaps(self):
        return self.model.overlaps(self.p, self.P).double().cpu().numpy()

    def live_state(self) -> dict:
        out = {f"p.{k}": v for k, v in self.p.items()}
        out |= {"states": self.states, "loss_acc": self.loss_acc, "peak": self.peak, "hits": self.hits,
                "pending": self.pending, "rec": self.rec}
        if self.cuda_gen is not None:
            out["cuda_gen"] = self.cuda_gen
        return out

    def params(self):
        return {k: v.cpu() for k, v in self.p.items()}
