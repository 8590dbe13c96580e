"""Online SGD of simple denoisers on the mixed cumulant model, E runs at once (docs/theory/mcm.md section 8.1).

Each of the E ensemble members is an independent run with its own seed (and optionally its own step
size and data model). A step draws one sample x0 (fresh, or from a fixed training set of n samples
visited in reshuffled passes), one noise xi and a time t, and takes a (spherical) SGD step on

    l = weight(t) ||x0 - D_w(a_t x0 + s_t xi)||^2.

Two engines run the same maths on the same random numbers:

- ``numba`` (CPU): a fused, parallel kernel (:mod:`easyhard.train._kernel`) that draws the Gaussians
  of member e from its own xoshiro256** stream, so an ensemble run equals E separate runs bit for bit;
- ``torch`` (CPU or CUDA): :class:`easyhard.models.Committee` gradients on a leading member axis. On
  CPU it reads the same member streams as the kernel (for cross-checks); on CUDA it replays blocks of
  steps captured in a CUDA graph, with noise drawn per block from one device generator, and never
  synchronises with the host inside a block.

A third engine, ``reduced`` (:mod:`easyhard.train._reduced`), simulates the overlaps of the tied single
neuron exactly in law, at a cost per step that does not depend on d.

Latents (lambda, nu), random times and training-set orders come from a per-member torch generator
in chunks of fixed length, so they too do not depend on E. Observables go into preallocated buffers
at log-spaced steps: the overlaps of every neuron with u, v, m and the mean sample loss since the
previous record; the first passage and the persistent recovery of each threshold are tracked every
step. A checkpoint file, written at chunk boundaries, lets an interrupted run resume exactly.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

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
from easyhard.activations import Matched
from easyhard.data.latents import Rademacher
from easyhard.data.mcm import MixedCumulantModel
from easyhard.models import Committee, plain_step, spherical_step

ENGINES = ("auto", "numba", "torch", "reduced")
WEIGHTINGS = ("none", "eps")
DTYPES = {"float32": torch.float32, "float64": torch.float64}
#: steps per chunk of latents / times / orders drawn from the member generators (fixed: keeps streams E-independent)
CHUNK = 2048
#: steps captured per CUDA graph by the torch engine on CUDA (fewer when a block's noise would exceed NOISE_BLOCK)
GRAPH_BLOCK = 32
#: most Gaussians the torch engine holds at once (2**26 float32 = 256 MiB)
NOISE_BLOCK = 2**26


class DivergenceError(RuntimeError):
    """A run produced non-finite weights or loss; the message names the members and the step."""


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
    engine: "numba" (CPU kernel), "torch" (CPU/CUDA), "auto" (numba on CPU when supported), or
        "reduced": the exact-in-law simulation of the overlaps (tied single neuron, fresh samples,
        fixed t, spherical SGD; :mod:`easyhard.train._reduced`), whose cost per step does not grow with d.
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
        check_choice("engine", self.engine, ENGINES)
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


def _matched_coefficients(act: Matched) -> tuple[float, float, float]:
    """sigma_match(h) = c1 h + c2 tanh(c3 h) for Rademacher nu (docs/theory/mcm.md section 4.3)."""
    from easyhard.oracles.bayes_mcm import GaussianChannels

    ch = GaussianChannels.at(0.0, act.beta_v, act.t)
    b = math.sqrt(act.beta_v / (1 + act.beta_v))
    return ch.a / ((1 + act.beta_v) * ch.s2) - ch.a, b * ch.delta / ch.s2, ch.m_v / ch.s2


def _numba_support(model: Committee, config: OnlineSGDConfig) -> str | None:
    """None if the numba kernel runs this setting, else the reason it cannot."""
    if not config.device == "cpu":
        return "the numba engine runs on the CPU only"
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


def _reduced_support(model: Committee, config: OnlineSGDConfig) -> str | None:
    """None if the exact reduced simulation applies to this setting, else the reason it does not."""
    if model.K != 1 or model.second_layer != "tied":
        return "it needs the tied single neuron (K = 1)"
    if config.n_samples is not None or config.t_range is not None or not config.spherical:
        return "it needs fresh samples, a fixed t and spherical SGD"
    if model.d < 8:
        return "it needs d >= 8"
    return _numba_support(model, config) if config.device == "cpu" else None


def _resolve_engine(model: Committee, config: OnlineSGDConfig) -> str:
    if config.engine == "reduced":
        reason = _reduced_support(model, config)
        if reason is not None:
            raise ConfigError(f"engine 'reduced' unavailable: {reason}")
        return "reduced"
    reason = _numba_support(model, config)
    if config.engine == "numba" and reason is not None:
        raise ConfigError(f"engine 'numba' unavailable: {reason}")
    if config.engine == "auto":
        return "numba" if reason is None else "torch"
    return config.engine


class _MemberDraws:
    """Per-member torch generators for initialisation, training sets, latents, times and orders."""

    def __init__(self, seeds: Sequence[int]):
        self.gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
        self.perms: list[torch.Tensor] = []
        self.pos = 0

    def state(self) -> dict[str, torch.Tensor]:
        """Generator states and the current pass order (for checkpoints)."""
        out = {f"draws.gen.{e}": g.get_state() for e, g in enumerate(self.gens)}
        out |= {f"draws.perm.{e}": p.clone() for e, p in enumerate(self.perms)}
        return out | {"draws.pos": torch.tensor(self.pos)}

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        for e, g in enumerate(self.gens):
            g.set_state(tensors[f"draws.gen.{e}"])
        self.perms = [tensors[f"draws.perm.{e}"] for e in range(len(self.gens)) if f"draws.perm.{e}" in tensors]
        self.pos = int(tensors["draws.pos"])

    def chunk(self, models, length: int, config: OnlineSGDConfig, skip: Callable) -> dict[str, np.ndarray]:
        """Draws for ``length`` steps: lam, nu (E,C); idx (E,C) in finite mode; tco (E,C,4) = (a, s, c, weight)."""
        E = len(self.gens)
        lam = np.zeros((E, length))
        nu = np.zeros((E, length))
        t = np.full((E, length), config.t)
        for e, gen in enumerate(self.gens):
            if config.n_samples is None:  # float32 draws: torch's float64 normals cost 5x more
                la, n_ = models[e].latents.sample(length, gen, torch.float32)
                lam[e], nu[e] = la.numpy(), n_.numpy()
            if config.t_range is not None:
                lo, hi = config.t_range
                t[e] = (lo + (hi - lo) * torch.rand(length, generator=gen, dtype=torch.float64)).numpy()
        idx = self._orders(length, config.n_samples) if config.n_samples is not None else np.zeros((E, length), np.int64)
        tt = t if config.t_range is not None else t[:1, :1]  # a fixed t: one (a, s, c, weight), broadcast below
        a = np.exp(-tt)
        s = np.sqrt(-np.expm1(-2 * tt))
        c = np.asarray(skip(torch.from_numpy(tt)), dtype=np.float64) * np.ones_like(tt)
        weight = a * a / (s * s) if config.weighting == "eps" else np.ones_like(tt)
        tco = np.empty((E, length, 4))
        tco[...] = np.stack([a, s, c, weight], -1)
        return {"lam": lam, "nu": nu, "idx": idx, "t": t, "tco": tco}

    def _orders(self, length: int, n: int) -> np.ndarray:
        """Training-set indices for ``length`` steps: passes over range(n), each in a fresh random order."""
        out = np.empty((len(self.gens), length), np.int64)
        filled = 0
        while filled < length:
            if not self.perms or self.pos == n:
                self.perms = [torch.randperm(n, generator=g) for g in self.gens]
                self.pos = 0
            take = min(length - filled, n - self.pos)
            for e, perm in enumerate(self.perms):
                out[e, filled:filled + take] = perm[self.pos:self.pos + take].numpy()
            self.pos += take
            filled += take
        return out


def _spike_axes(P: np.ndarray) -> np.ndarray:
    """Per member, the coordinates of (u, v, m) if all three are coordinate vectors, else (-1, -1, -1): (E, 3)."""
    axes = np.argmax(np.abs(P), axis=-1)
    is_axis = (np.take_along_axis(P, axes[..., None], -1)[..., 0] == 1.0) & ((P != 0).sum(-1) == 1)
    return np.where(is_axis.all(-1, keepdims=True), axes, -1).astype(np.int64)


def _data_arrays(models: Sequence[MixedCumulantModel]) -> tuple[np.ndarray, np.ndarray]:
    """Spikes P (E,3,d) and sampler coefficients (E,4) = (sqrt beta_u, sqrt beta_v, shrink, beta_m)."""
    P = np.stack([m.spike_vectors(torch.float64).numpy() for m in models])
    coef = np.array([[math.sqrt(m.beta_u), math.sqrt(m.beta_v), m.whitening_shrink, m.beta_m] for m in models])
    return P, coef


def _check_inputs(model: Committee, data, seeds) -> list[MixedCumulantModel]:
    E = len(seeds)
    if E < 1:
        raise ConfigError("seeds must hold at least one seed (one per ensemble member)")
    if len(set(int(s) for s in seeds)) != E:
        raise ConfigError("seeds must be distinct (one independent run per member)")
    models = [data] * E if isinstance(data, MixedCumulantModel) else list(data)
    if len(models) != E:
        raise ConfigError(f"data must be one model or one per member ({E}), got {len(models)}")
    for m in models:
        if m.d != model.d:
            raise ConfigError(f"data dimension d={m.d} does not match the model's d={model.d}")
    return models


def run_online_sgd(model: Committee, data: MixedCumulantModel | Sequence[MixedCumulantModel],
                   config: OnlineSGDConfig, seeds: Sequence[int],
                   progress: Callable[[int], None] | None = None, checkpoint: str | Path | None = None,
                   checkpoint_every: float = 60.0) -> OnlineSGDResult:
    """Run ``len(seeds)`` independent online-SGD runs of ``model`` on ``data`` (docs/theory/mcm.md section 8.1).

    ``progress(k)`` is called with the number of steps just completed (for a progress bar).
    Raises :class:`DivergenceError` when weights or loss stop being finite (checked at every record).

    ``checkpoint``: a file that holds the whole state (weights, random streams, generators, records) at
    a chunk boundary, written atomically at most every ``checkpoint_every`` seconds. If it exists when
    the call starts, the run resumes from it and ends with the numbers of an uninterrupted run; it must
    come from the same model, data, config and seeds (else ConfigError). It is deleted at the end.
    """
    models = _check_inputs(model, data, seeds)
    engine = _resolve_engine(model, config)
    from easyhard.train._rng import seed_states

    E, d = len(seeds), model.d
    etas = config.etas(d, E)
    draws = _MemberDraws(seeds)
    inits = [model.init(1, generator=g, dtype=torch.float64) for g in draws.gens]
    params = {k: torch.cat([p[k] for p in inits]) for k in model.param_names}
    X = None
    if config.n_samples is not None:
        X = torch.stack([m.sample(config.n_samples, g, torch.float64) for m, g in zip(models, draws.gens)])
    P, coef = _data_arrays(models)
    states = seed_states([int(s) for s in seeds])
    steps_log = log_steps(config.steps, config.n_logs)
    thr = np.asarray(config.thresholds, dtype=np.float64)
    runner_cls = {"numba": _NumbaRunner, "torch": _TorchRunner,
                  "reduced": REDUCED_RUNNERS[torch.device(config.device).type]}[engine]
    runner = runner_cls(model, config, params, X, P, coef, states, etas, thr)
    overlaps = np.empty((len(steps_log), E, model.K, 3))
    loss = np.empty((len(steps_log) - 1, E))
    overlaps[0] = runner.overlaps()
    counts = np.zeros((E, config.n_samples), np.int64) if config.n_samples is not None else None
    rec, first = 1, 0
    meta = {"version": 1, "model": model.to_dict(), "data": [m.to_dict() for m in models], "config": config.to_dict(),
            "seeds": [int(s) for s in seeds], "engine": engine}
    records = {"overlaps": overlaps, "loss": loss, **({"counts": counts} if counts is not None else {})}
    if checkpoint is not None and Path(checkpoint).exists():
        first, rec = _restore(checkpoint, meta, runner, draws, records)
    saved_at = time.monotonic()
    for start in range(first, config.steps, CHUNK):
        if checkpoint is not None and start > first and time.monotonic() - saved_at >= checkpoint_every:
            _save(checkpoint, meta, runner, draws, records, start, rec)
            saved_at = time.monotonic()
        length = min(CHUNK, config.steps - start)
        chunk = draws.chunk(models, length, config, model.skip_coefficient)
        if counts is not None:
            np.add.at(counts, (np.arange(E)[:, None], chunk["idx"]), 1)
        runner.load_chunk(chunk)
        i = 0
        while i < length:
            stop = min(length, int(steps_log[rec]) - start)
            runner.run(i, stop, start)
            if progress is not None:
                progress(stop - i)
            i = stop
            if start + i == steps_log[rec]:
                loss[rec - 1] = runner.take_loss() / (steps_log[rec] - steps_log[rec - 1])
                overlaps[rec] = runner.overlaps()
                _check_finite(overlaps[rec], loss[rec - 1], int(steps_log[rec]))
                rec += 1
    first_hit, recovered = runner.recovery()
    if checkpoint is not None:
        Path(checkpoint).unlink(missing_ok=True)
    return OnlineSGDResult(steps_log, overlaps, loss, first_hit, recovered, tuple(config.thresholds), etas,
                           tuple(int(s) for s in seeds), engine, runner.params(), counts)


def _as_tensor(x) -> torch.Tensor:
    """A numpy array (uint64 reinterpreted as int64), tensor or generator (its state) as a CPU tensor."""
    if isinstance(x, torch.Generator):
        return x.get_state()
    if isinstance(x, np.ndarray):
        return torch.from_numpy(x.view(np.int64) if x.dtype == np.uint64 else x).clone()
    return x.detach().cpu().clone()


def _assign(live, saved: torch.Tensor) -> None:
    """Copy a saved tensor into a live array, tensor or generator in place (keeps addresses for CUDA graphs)."""
    if isinstance(live, torch.Generator):
        live.set_state(saved)
    elif isinstance(live, np.ndarray):
        live[...] = saved.numpy().view(live.dtype) if live.dtype == np.uint64 else saved.numpy()
    else:
        live.copy_(saved)


def _save(path, meta, runner, draws, records, start, rec) -> None:
    from easyhard._io import save_tensors

    tensors = {f"runner.{k}": _as_tensor(v) for k, v in runner.live_state().items()}
    tensors |= {f"records.{k}": _as_tensor(v) for k, v in records.items()}
    tensors |= draws.state()
    save_tensors(path, tensors, meta | {"start": start, "rec": rec})


def _restore(path, meta, runner, draws, records) -> tuple[int, int]:
    """Load a checkpoint into the live state; returns (chunk start, next record index)."""
    from easyhard._io import load_tensors

    tensors, saved = load_tensors(path)
    position = {k: saved.pop(k, None) for k in ("start", "rec")}
    if json.dumps(saved, sort_keys=True) != json.dumps(json.loads(json.dumps(meta)), sort_keys=True):
        raise ConfigError(f"checkpoint {path} belongs to a different run (model, data, config, seeds or engine "
                          "differ); delete it or use another path")
    for k, v in runner.live_state().items():
        _assign(v, tensors[f"runner.{k}"])
    for k, v in records.items():
        _assign(v, tensors[f"records.{k}"])
    draws.load_state(tensors)
    return int(position["start"]), int(position["rec"])


def _check_finite(overlaps: np.ndarray, loss: np.ndarray, step: int) -> None:
    bad = ~(np.isfinite(overlaps).all(axis=(1, 2)) & np.isfinite(loss))
    if bad.any():
        members = np.flatnonzero(bad)
        raise DivergenceError(f"SGD diverged (non-finite weights or loss) by step {step} in members "
                              f"{members[:8].tolist()}{' ...' if len(members) > 8 else ''}; lower delta")


class _NumbaRunner:
    """State of the numba engine: numpy arrays advanced in place by :func:`_kernel.run_steps`."""

    def __init__(self, model, config, params, X, P, coef, states, etas, thr):
        from easyhard.train._kernel import ACTIVATION_CODES

        dt = np.float32 if config.dtype == "float32" else np.float64
        self.model, self.config = model, config
        self.W = np.ascontiguousarray(params["w"].numpy().astype(dt))
        self.O = np.ascontiguousarray(params["o"].numpy().astype(dt)) if "o" in params else np.zeros((1, 1, 1), dt)
        self.X = np.ascontiguousarray(X.numpy().astype(dt)) if X is not None else np.zeros((1, 1, 1), dt)
        self.P, self.coef, self.states, self.etas, self.thr = P, coef, states, etas, thr
        self.axes = _spike_axes(P)
        self.code = ACTIVATION_CODES[model.activation.name]
        act = model.activation
        self.act_par = np.array(_matched_coefficients(act) if isinstance(act, Matched) else (0.0, 0.0, 0.0))
        self.loss_acc = np.zeros(len(etas))
        self.tracks = _recovery_arrays((*self.W.shape[:2], 3, len(thr)))

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
                      self.etas, self.loss_acc, self.thr, self.config.persistence, *self.tracks)
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

    def recovery(self):
        return self.tracks[0].copy(), self.tracks[2].copy()

    def live_state(self) -> dict[str, np.ndarray]:
        return {"W": self.W, "O": self.O, "states": self.states, "loss_acc": self.loss_acc,
                **{f"track{i}": t for i, t in enumerate(self.tracks)}}

    def params(self):
        return {k: v.clone() for k, v in self._views().items()}


class _Blocks:
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


class _TensorTracks:
    """First passage and persistent recovery on tensors (hits, pending, rec: (E, K, 3, T), on the device)."""

    def _init_tracks(self, shape: tuple[int, ...]) -> None:
        self.hits, self.pending, self.rec = (torch.full(shape, -1, dtype=torch.int64, device=self.dev)
                                             for _ in range(3))

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


class _TorchRunner(_TensorTracks):
    """State of the torch engine: tensors on ``config.device`` with a leading member axis."""

    def __init__(self, model, config, params, X, P, coef, states, etas, thr):
        self.model, self.config = model, config
        self.dev, self.dt = torch.device(config.device), DTYPES[config.dtype]
        put = lambda a: torch.as_tensor(a).to(self.dev, self.dt)  # noqa: E731
        self.p = {k: put(v) for k, v in params.items()}
        self.X = put(X) if X is not None else None
        self.P = put(P)
        self.coef = put(coef)
        self.states = states
        self.eta = put(etas)
        self.thr = put(thr)
        E = len(etas)
        self.members = torch.arange(E, device=self.dev)
        self.loss_acc = torch.zeros(E, device=self.dev, dtype=torch.float64)
        self._init_tracks((*self.p["w"].shape[:2], 3, len(thr)))
        self.cuda_gen = None
        if self.dev.type == "cuda":
            self.cuda_gen = torch.Generator(self.dev).manual_seed(int(np.uint64(states[0, 0]) >> np.uint64(1)))
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
        self.noise = _Blocks(self._draw_noise, len(self.eta) * per_step * self.model.d)

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
        step = spherical_step if self.config.spherical else plain_step
        self.p["w"].copy_(step(self.p["w"], grads["w"], self.eta))
        if "o" in grads:
            self.p["o"].copy_(plain_step(self.p["o"], grads["o"], self.eta))
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

    def take_loss(self):
        out = self.loss_acc.cpu().numpy().copy()
        self.loss_acc.zero_()
        return out

    def overlaps(self):
        return self.model.overlaps(self.p, self.P).double().cpu().numpy()

    def live_state(self) -> dict:
        out = {f"p.{k}": v for k, v in self.p.items()}
        out |= {"states": self.states, "loss_acc": self.loss_acc, "hits": self.hits, "pending": self.pending,
                "rec": self.rec}
        if self.cuda_gen is not None:
            out["cuda_gen"] = self.cuda_gen
        return out

    def params(self):
        return {k: v.cpu() for k, v in self.p.items()}


def _recovery_arrays(shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(first_hit, pending, recovered) int64 arrays of ``shape``, all -1."""
    return tuple(np.full(shape, -1, np.int64) for _ in range(3))


class _ReducedRunner:
    """State of the exact reduced simulation: the overlaps (E, 3) of each member (:mod:`._reduced`)."""

    def __init__(self, model, config, params, X, P, coef, states, etas, thr):
        from easyhard.train._kernel import ACTIVATION_CODES

        self.model, self.config = model, config
        self.alpha = np.ascontiguousarray(model.overlaps(params, torch.from_numpy(P))[:, 0].numpy())
        self.coef, self.states, self.etas, self.thr = coef, states, etas, thr
        self.code = ACTIVATION_CODES[model.activation.name]
        act = model.activation
        self.act_par = np.array(_matched_coefficients(act) if isinstance(act, Matched) else (0.0, 0.0, 0.0))
        self.loss_acc = np.zeros(len(etas))
        self.tracks = _recovery_arrays((len(etas), 3, len(thr)))

    def load_chunk(self, chunk):
        self.chunk = chunk

    def run(self, i0, i1, step0):
        from easyhard.train._reduced import run_reduced

        c = self.chunk
        a, s, skip, wt = (float(x) for x in c["tco"][0, 0])
        run_reduced(self.alpha, self.states, self.coef, c["lam"], c["nu"], i0, i1, step0, a, s, skip, wt, self.code,
                    self.act_par, float(self.model.a_out), float(self.model.d - 4), self.etas, self.loss_acc, self.thr,
                    self.config.persistence, *self.tracks)

    def take_loss(self):
        out = self.loss_acc.copy()
        self.loss_acc[:] = 0.0
        return out

    def overlaps(self):
        return self.alpha[:, None, :].copy()

    def recovery(self):
        return self.tracks[0][:, None].copy(), self.tracks[2][:, None].copy()

    def live_state(self) -> dict[str, np.ndarray]:
        return {"alpha": self.alpha, "states": self.states, "loss_acc": self.loss_acc,
                **{f"track{i}": t for i, t in enumerate(self.tracks)}}

    def params(self):
        return {"alpha": torch.from_numpy(self.overlaps())}


class _TorchReducedRunner(_TensorTracks):
    """The reduced simulation in torch, all members at once (:func:`._reduced.reduced_step_torch`).

    Used for ``engine="reduced"`` on CUDA, where the draws come per block from one device generator
    (normals and exact chi-square draws via torch's gamma sampler). On CPU (tests) it consumes the member
    streams of the numba kernel, so the two implementations can be compared number for number.
    """

    def __init__(self, model, config, params, X, P, coef, states, etas, thr):
        self.model, self.config = model, config
        self.dev = torch.device(config.device)
        put = lambda a: torch.as_tensor(a).to(self.dev, torch.float64)  # noqa: E731
        self.alpha = put(model.overlaps(params, torch.from_numpy(P))[:, 0]).contiguous()
        self.coef, self.eta, self.thr, self.states = put(coef), put(etas), put(thr), states
        self.loss_acc = torch.zeros(len(etas), dtype=torch.float64, device=self.dev)
        self._init_tracks((len(etas), 1, 3, len(thr)))
        self.m_r = float(model.d - 4)
        self.gen = None
        if self.dev.type == "cuda":
            self.gen = torch.Generator(self.dev).manual_seed(int(np.uint64(states[0, 0]) >> np.uint64(1)))

    def load_chunk(self, chunk):
        self.chunk = {k: torch.as_tensor(v).to(self.dev) for k, v in chunk.items()}
        self.draws = _Blocks(self._draw, len(self.eta) * 11)

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
            loss = reduced_step_torch(self.alpha, draws, ch["lam"][:, i].double(), ch["nu"][:, i].double(),
                                      self.coef, a, s, c, wt, m.activation, float(m.a_out), self.eta)
            self.loss_acc.add_(loss)
            self._track(self.alpha.abs()[:, None, :], step0 + i + 1)

    def take_loss(self):
        out = self.loss_acc.cpu().numpy().copy()
        self.loss_acc.zero_()
        return out

    def overlaps(self):
        return self.alpha[:, None, :].cpu().numpy()

    def live_state(self) -> dict:
        out = {"alpha": self.alpha, "states": self.states, "loss_acc": self.loss_acc, "hits": self.hits,
               "pending": self.pending, "rec": self.rec}
        return out | ({"gen": self.gen} if self.gen is not None else {})

    def params(self):
        return {"alpha": torch.from_numpy(self.overlaps())}


#: the reduced engine's implementation per device type (the torch one also runs on CPU, in tests)
REDUCED_RUNNERS = {"cpu": _ReducedRunner, "cuda": _TorchReducedRunner}
