"""The monitor: generalisation and memorisation measurements of one denoiser during (or after) training
(docs/monitor.md).

At every update, with all noise fixed across updates (common random numbers), :class:`Monitor` measures

- **losses**: the eps-loss per noise level on a training subset and on the held-out set, and their gap, each with
  its standard error over points (:func:`~easyhard.metrics.eps_loss_per_point`);
- **samples** from fixed initial noise (:func:`~easyhard.diffusion.sample`): f_mem at each threshold with its
  bootstrap interval (:func:`~easyhard.metrics.fraction_with_interval`), nearest-neighbour distance quantiles to
  the training and held-out sets (:func:`~easyhard.metrics.nearest_neighbours`), the own-versus-held-out
  nearest-neighbour similarity gap (:func:`~easyhard.metrics.nearest_similarity`, the gap of
  :func:`~easyhard.metrics.split_similarity`) and the held-out-referenced quality KL_hat
  (:func:`~easyhard.metrics.knn_divergence`);
- with a **twin** (a denoiser trained on a disjoint split): the paired similarity of coupled ancestral samples
  (:func:`~easyhard.metrics.paired_similarity`) and the denoiser similarity on the model's training inputs versus
  held-out inputs (:func:`~easyhard.metrics.denoiser_similarity`).

Changes across updates are paired: a curve's distance to its own extremum so far is the mean of per-unit
differences (units: held-out points, samples, inputs), with the standard error of that mean. The status
(:data:`STATUSES`) follows from the record with :func:`assess`.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from torch import Tensor

from easyhard._io import (atomic_write_json, atomic_write_text, canonical_json, environment_info, json_sha256,
                          load_tensors, save_tensors)
from easyhard._validate import (ConfigError, check_choice, check_int_at_least, check_open_unit, check_positive,
                                check_seed)
from easyhard.diffusion.ddpm import DDPMSchedule
from easyhard.diffusion.denoiser import Denoiser, NoiseLevel, as_denoiser, predict_eps
from easyhard.diffusion.samplers import METHODS, SPACINGS, SamplerNoise, sample
from easyhard.metrics.images import eps_loss_per_point, fixed_noise
from easyhard.metrics.memorization import (copies_from_distances, denoiser_similarity, fraction_with_interval,
                                           nearest_neighbours, nearest_similarity, paired_similarity,
                                           threshold_label)
from easyhard.metrics.quality import knn_divergence
from easyhard.monitor.adapters import AdaptedDenoiser, check_output

STATUSES = ("generalising", "biased", "overfitting", "memorising")
RECORDS = "monitor.jsonl"
META = "monitor.json"
STATE = "monitor_state.pt"
PREVIOUS = "previous:"  # tensor-name prefix of the state before the latest record, in the state file
QUANTILES = (0.05, 0.5, 0.95)


@dataclass(frozen=True)
class MonitorConfig:
    """Settings of a :class:`Monitor` [choice, defaults stated].

    Losses: ``levels`` step indices (empty: ``n_levels`` midpoints of equal bins of 0..T-1), ``loss_train`` training
    points (the first ones, tiled when the set is smaller) and ``loss_test`` held-out points. Samples: ``samples``
    from ``sampler`` ("ddim" or "ancestral") with ``sampler_steps`` steps on the ``spacing`` grid, ``heun`` and
    ``clip_x0`` as in :func:`~easyhard.diffusion.sample`; f_mem at ``thresholds``, the status at ``threshold``.
    Twin: ``pair_samples`` coupled ancestral samples of ``pair_steps`` steps; denoiser similarity at
    ``score_index`` (None: T // 10) on ``score_inputs`` inputs. Noise seeds: ``train_seed``, ``test_seed`` (the loss
    noise, :func:`~easyhard.metrics.fixed_noise`), ``sampler_seed`` (initial and per-step sampler noise, samples
    first, then coupled samples), ``score_seed`` (the denoiser-similarity inputs); the first three default to the
    seeds of ``reproduce memorization``, so a monitor on its member 0 reproduces its records. Status: memorising
    when f_mem's lower bootstrap bound exceeds ``memorising_level``; a change counts when it exceeds ``z``
    standard errors; the split-similarity peak is searched after the held-out loss has fallen ``peak_fraction`` of
    the way to its minimum. ``n_boot`` bootstrap replicates; ``batch_size`` inputs per denoiser call.
    """

    levels: tuple[int, ...] = ()
    n_levels: int = 10
    loss_train: int = 256
    loss_test: int = 256
    samples: int = 256
    sampler: str = "ddim"
    sampler_steps: int = 40
    spacing: str = "quadratic"
    heun: bool = False
    clip_x0: float | None = None
    thresholds: tuple[float, ...] = (1 / 4, 1 / 3, 1 / 2)
    threshold: float = 1 / 3
    pair_samples: int = 128
    pair_steps: int = 40
    score_index: int | None = None
    score_inputs: int = 128
    memorising_level: float = 0.05
    z: float = 3.0
    peak_fraction: float = 0.75
    n_boot: int = 1000
    train_seed: int = 12
    test_seed: int = 11
    sampler_seed: int = 13
    score_seed: int = 14
    batch_size: int = 1024

    def __post_init__(self) -> None:
        for name in ("n_levels", "loss_train", "loss_test", "sampler_steps", "pair_steps", "score_inputs",
                     "batch_size"):
            check_int_at_least(name, getattr(self, name), 1)
        check_int_at_least("samples", self.samples, 3)
        check_int_at_least("pair_samples", self.pair_samples, 2)
        check_int_at_least("n_boot", self.n_boot, 10)
        check_choice("sampler", self.sampler, METHODS)
        check_choice("spacing", self.spacing, SPACINGS)
        if self.clip_x0 is not None:
            check_positive("clip_x0", self.clip_x0)
        if not self.thresholds or any(not 0 < t < 1 for t in self.thresholds):
            raise ConfigError(f"thresholds must be values in (0, 1) (got {self.thresholds})")
        if self.threshold not in self.thresholds:
            raise ConfigError(f"threshold must be one of thresholds {self.thresholds} (got {self.threshold})")
        check_open_unit("memorising_level", self.memorising_level)
        check_positive("z", self.z)
        check_open_unit("peak_fraction", self.peak_fraction)
        for name in ("train_seed", "test_seed", "sampler_seed", "score_seed"):
            check_seed(name, getattr(self, name))
        if any(int(i) < 0 for i in self.levels):
            raise ConfigError(f"levels must be step indices >= 0 (got {self.levels})")

    def loss_levels(self, schedule: DDPMSchedule) -> list[int]:
        """The loss levels: ``levels``, or ``n_levels`` midpoints of equal bins of the schedule's indices."""
        T, base = schedule.T, schedule.index_base
        if self.levels:
            bad = [i for i in self.levels if not base <= int(i) <= base + T - 1]
            if bad:
                raise ConfigError(f"levels must lie in {base}..{base + T - 1} (got {bad})")
            return [int(i) for i in self.levels]
        if self.n_levels > T:
            raise ConfigError(f"n_levels must be at most the schedule length {T} (got {self.n_levels})")
        return [base + int((2 * j + 1) * T // (2 * self.n_levels)) for j in range(self.n_levels)]

    def index(self, schedule: DDPMSchedule) -> int:
        """The denoiser-similarity step index (``score_index`` or T // 10)."""
        i = schedule.T // 10 + schedule.index_base if self.score_index is None else int(self.score_index)
        if not schedule.index_base <= i <= schedule.index_base + schedule.T - 1:
            raise ConfigError(f"score_index must lie in the schedule's indices (got {i})")
        return i


# ============================================================================================ data checks
def check_data(name: str, x: Tensor) -> Tensor:
    """``x`` as a float tensor (n, ...) with n >= 2 finite rows, else ConfigError naming ``name``."""
    if not isinstance(x, Tensor):
        raise ConfigError(f"{name} must be a tensor (n, ...) (got {type(x).__name__})")
    if x.ndim < 2 or len(x) < 2:
        raise ConfigError(f"{name} must hold at least 2 points of shape (n, ...) (got shape {tuple(x.shape)})")
    if not x.is_floating_point():
        raise ConfigError(f"{name} must be a floating-point tensor (got {x.dtype})")
    if not bool(torch.isfinite(x).all()):
        raise ConfigError(f"{name} holds NaN or inf values")
    return x


def check_same_scale(train: Tensor, test: Tensor, factor: float = 3.0) -> None:
    """ConfigError if the two sets differ in shape or in scale: their standard deviations differ by more than
    ``factor``, or their means by more than ``factor`` training standard deviations (e.g. one set in [0, 255] and
    the other in [-1, 1])."""
    if train.shape[1:] != test.shape[1:]:
        raise ConfigError(f"train and test points must have the same shape (got {tuple(train.shape[1:])} and "
                          f"{tuple(test.shape[1:])})")
    s_train, s_test = float(train.double().std()), float(test.double().std())
    shift = abs(float(train.double().mean()) - float(test.double().mean()))
    if not (s_train / factor <= s_test <= s_train * factor) or shift > factor * max(s_train, 1e-12):
        raise ConfigError(f"train and test have different scales (mean {float(train.mean()):.3g} and "
                          f"{float(test.mean()):.3g}, std {s_train:.3g} and {s_test:.3g}): use one normalisation")


# ============================================================================================ paired tracking
@dataclass
class Extremum:
    """The extremum so far of a curve measured on fixed units: its step, value and per-unit values (one or two
    groups: the curve is mean(units[0]) - mean(units[1]) for two groups)."""

    step: int
    value: float
    units: list[Tensor]


def paired_change(units: list[Tensor], ref: Extremum) -> tuple[float, float]:
    """(change, SE) of a curve from its reference extremum: mean(u0 - r0) [- mean(u1 - r1)], with the standard error
    sqrt(sum_g var(u_g - r_g) / n_g) of independent groups of paired units."""
    change, var = 0.0, 0.0
    for g, (u, r) in enumerate(zip(units, ref.units)):
        diff = u.double() - r.double()
        change += float(diff.mean()) * (1 if g == 0 else -1)
        var += float(diff.var()) / len(diff) if len(diff) > 1 else 0.0
    return change, math.sqrt(var)


def _curve(units: list[Tensor]) -> float:
    """mean(u0) [- mean(u1)]."""
    return float(units[0].double().mean()) - (float(units[1].double().mean()) if len(units) > 1 else 0.0)


# ============================================================================================ the status
def moved_away(move: dict | None, z: float) -> bool:
    """Whether a tracked curve's paired change from its extremum so far (a record's ``changes[key]``) exceeds
    ``z`` standard errors; False for a curve without a reference yet (its first record) or not tracked."""
    return move is not None and move["ref_step"] is not None and move["change"] > z * move["se"]


def assess(record: dict, config: MonitorConfig) -> tuple[str, list[str]]:
    """(status, evidence) of one record (module docstring): "memorising" when f_mem's lower bound at the status
    threshold exceeds ``memorising_level``; else "overfitting" when the held-out loss is above its minimum so far by
    more than z SE; else "biased" when a bias indicator has moved away from its extremum by more than z SE (the
    train-minus-held-out loss gap, the own-versus-held-out nearest-neighbour gap or, with a twin, the denoiser
    bias rose; the twin's paired similarity fell from its peak); else "generalising". Evidence: one line per
    finding."""
    z = config.z
    f = record["f_mem"][threshold_label(config.threshold)]
    evidence = []
    memorising = f["interval"][0] > config.memorising_level
    if memorising:
        evidence.append(f"f_mem({threshold_label(config.threshold)}) = {f['value']:.3f} with 95% interval "
                        f"[{f['interval'][0]:.3f}, {f['interval'][1]:.3f}] above {config.memorising_level:g}")
    moves = record["changes"]
    loss = moves["test_loss"]
    overfitting = moved_away(loss, z)
    if overfitting:
        evidence.append(f"held-out loss {record['test_loss_mean']:.4g} is {loss['change']:.3g} above its minimum at "
                        f"step {loss['ref_step']} ({_z(loss)} SE)")
    biased = []
    for key, text in (("gap", "train-minus-held-out loss gap rose by {c:.3g} since step {s}"),
                      ("nn_gap", "own-minus-held-out nearest-neighbour similarity rose by {c:.3g} since step {s}"),
                      ("denoiser_bias", "twin agreement on held-out minus own training inputs rose by {c:.3g} since "
                                        "step {s}"),
                      ("pair_similarity", "twin paired similarity fell by {c:.3g} from its peak at step {s}")):
        move = moves.get(key)
        if moved_away(move, z):
            biased.append(text.format(c=move["change"], s=move["ref_step"]) + f" ({_z(move)} SE)")
    evidence += biased
    status = ("memorising" if memorising else "overfitting" if overfitting else "biased" if biased
              else "generalising")
    return status, evidence


def _z(move: dict) -> str:
    return f"{move['change'] / move['se']:.1f}" if move["se"] > 0 else "inf"


# ============================================================================================ the monitor
@dataclass
class _Trackers:
    """Extrema so far of the tracked curves (minima unless named in MAXIMA)."""

    extrema: dict[str, Extremum] = field(default_factory=dict)
    first_loss: float | None = None

    MAXIMA = ("pair_similarity",)


class Monitor:
    """Generalisation and memorisation monitor of ``denoiser`` trained on ``train`` (n, ...), with held-out data
    ``test`` (m, ...), written to ``out_dir`` (module docstring; docs/monitor.md).

    denoiser: any :class:`~easyhard.diffusion.Denoiser` or callable ``f(x_t, i) -> eps_hat`` (adapters in
    :mod:`easyhard.monitor.adapters`); ``schedule`` its DDPM schedule (default: ``denoiser.schedule``).
    twin, twin_train: optionally a denoiser trained on a disjoint split, and that split. ``update(step)`` measures,
    appends one record to ``monitor.jsonl`` and rebuilds ``report.md`` (``report=True``) and, at most every
    ``figure_seconds`` of wall time (drawing costs about a second), ``monitor.png``; :meth:`close` (or
    :meth:`write_report`) draws it in any case. Calling the monitor is the same as ``update`` (a training callback). A folder with records of the same monitor (same config and data) is continued:
    steps at or before the last recorded one are skipped. ``strict=False``: an error inside an update is recorded
    and returned instead of raised. ``device``: where data and noise live (default: the data's device).
    """

    def __init__(self, denoiser: Denoiser | Callable, train: Tensor, test: Tensor, out_dir: str | Path,
                 schedule: DDPMSchedule | None = None, *, twin: Denoiser | Callable | None = None,
                 twin_train: Tensor | None = None, config: MonitorConfig | None = None, strict: bool = True,
                 report: bool = True, figure_seconds: float = 60.0,
                 device: str | torch.device | None = None) -> None:
        self.config = config or MonitorConfig()
        self.schedule = schedule if schedule is not None else getattr(denoiser, "schedule", None)
        if not isinstance(self.schedule, DDPMSchedule):
            raise ConfigError("schedule must be a DDPMSchedule (pass schedule=, or use an adapter that carries one)")
        self.train, self.test = check_data("train", train), check_data("test", test)
        check_same_scale(self.train, self.test)
        self.device = torch.device(device) if device is not None else self.train.device
        self.train, self.test = self.train.to(self.device), self.test.to(self.device)
        self.denoiser = _scheduled(denoiser, self.schedule)
        self.twin = None if twin is None else _scheduled(twin, self.schedule)
        if (twin is None) != (twin_train is None):
            raise ConfigError("twin and twin_train must be given together (a twin model and its disjoint split)")
        self.twin_train = None if twin_train is None else check_data("twin_train", twin_train).to(self.device)
        if self.twin_train is not None:
            check_same_scale(self.train, self.twin_train)
        self.levels = self.config.loss_levels(self.schedule)
        self.strict, self.report = bool(strict), bool(report)
        self.figure_seconds, self._drawn = float(figure_seconds), -math.inf
        for model in (self.denoiser, self.twin):
            if model is not None:
                check_output(model, self.test, batch=2)
        self._inputs()
        self.out = Path(out_dir)
        self.records: list[dict] = []
        self._trackers = _Trackers()
        self._saved: tuple[dict, dict | None] = ({}, None)  # the last state written (tensors, meta)
        self._open()

    # ------------------------------------------------------------------------------------------ fixed inputs
    def _inputs(self) -> None:
        """The fixed evaluation inputs: loss points, sampler noises, denoiser-similarity inputs."""
        c, shape = self.config, tuple(self.train.shape[1:])
        self.loss_train = self.train[torch.arange(c.loss_train, device=self.device) % len(self.train)]
        self.loss_test = self.test[:c.loss_test]
        gen = torch.Generator().manual_seed(c.sampler_seed)
        self.sample_noise = SamplerNoise.draw((c.samples, *shape), gen).to(self.device)
        self.pair_noise = SamplerNoise.draw((c.pair_samples, *shape), gen).to(self.device)
        m = min(len(self.train), len(self.test))
        self.own_ref, self.held_ref = self.train[:m], self.test[:m]  # equal sizes: a fair nearest-neighbour gap
        if self.twin is not None:
            i = c.index(self.schedule)
            a, s = self.schedule.coefficients(i)
            own = self.train[torch.arange(c.score_inputs, device=self.device) % len(self.train)]
            held = self.test[-c.score_inputs:]
            d = own[0].numel()
            noise_own = fixed_noise(len(own), d, i, c.score_seed).reshape(own.shape).to(own)
            noise_held = fixed_noise(len(held), d, i, c.score_seed + 1).reshape(held.shape).to(held)
            self.score_own, self.score_held = a * own + s * noise_own, a * held + s * noise_held

    def _identity(self) -> dict:
        """What a continued run must share: config, schedule, levels and fingerprints of the data."""
        def digest(x: Tensor | None) -> str | None:
            if x is None:
                return None
            data = x.detach().cpu().contiguous()
            return hashlib.sha256(f"{data.dtype} {tuple(data.shape)}".encode() + data.numpy().tobytes()).hexdigest()

        return {"config": _config_dict(self.config), "schedule": asdict(self.schedule), "levels": self.levels,
                "train": digest(self.train), "test": digest(self.test), "twin_train": digest(self.twin_train),
                "shape": list(self.train.shape[1:]), "n_train": len(self.train), "n_test": len(self.test)}

    # ------------------------------------------------------------------------------------------ the folder
    def _open(self) -> None:
        """Create the folder, or continue the records of the same monitor in it."""
        self.out.mkdir(parents=True, exist_ok=True)
        identity = self._identity()
        meta_path, records_path = self.out / META, self.out / RECORDS
        if meta_path.exists():
            try:
                saved = json.loads(meta_path.read_text())
            except (OSError, ValueError) as err:
                raise ConfigError(f"{meta_path} cannot be read ({type(err).__name__}): use another out_dir") from None
            if saved.get("identity_sha256") != json_sha256(identity):
                raise ConfigError(f"{self.out} holds a monitor with another config or other data: use another out_dir")
            self.records = read_records(records_path) if records_path.exists() else []
            self._load_state()
        else:
            atomic_write_json(meta_path, {"easyhard": "monitor", "identity": identity,
                                          "identity_sha256": json_sha256(identity), "environment": environment_info(),
                                          "device": str(self.device), "created": time.strftime("%Y-%m-%dT%H:%M:%S")})

    def _last_measured(self) -> int | None:
        """The step of the last successful update (records of failed ones carry "error"), or None."""
        return next((r["step"] for r in reversed(self.records) if "error" not in r), None)

    def _save_state(self) -> None:
        """Write the extrema's reference units after the latest measured record, with the state before it: the
        state is written before the records, so a crash between the two writes leaves a state one record ahead,
        and the folder continues from the previous state (that step is measured again)."""
        tensors, meta = {}, {"steps": {}, "values": {}, "groups": {}, "first_loss": self._trackers.first_loss,
                             "last_step": self._last_measured()}
        for key, ext in self._trackers.extrema.items():
            meta["steps"][key], meta["values"][key], meta["groups"][key] = ext.step, ext.value, len(ext.units)
            for g, u in enumerate(ext.units):
                tensors[f"{key}.{g}"] = u.detach().cpu()
        previous_tensors, previous_meta = self._saved
        save_tensors(self.out / STATE, {**tensors, **{PREVIOUS + k: v for k, v in previous_tensors.items()}},
                     {**meta, "previous": previous_meta})
        self._saved = tensors, meta

    def _load_state(self) -> None:
        path = self.out / STATE
        last = self._last_measured()
        if last is None:
            return
        if not path.exists():
            raise ConfigError(f"{path} is missing for the records in {self.out}: use another out_dir")
        stored, meta = load_tensors(path, "use another out_dir")
        previous = meta.pop("previous", None) or {}
        if meta.get("last_step") == last:
            tensors = {k: v for k, v in stored.items() if not k.startswith(PREVIOUS)}
        elif previous.get("last_step") == last:  # the state was written, the record not: measure that step again
            tensors, meta = {k[len(PREVIOUS):]: v for k, v in stored.items() if k.startswith(PREVIOUS)}, previous
        else:
            raise ConfigError(f"{path} does not match the last record of {self.out / RECORDS}: use another out_dir")
        self._saved = tensors, meta
        self._trackers.first_loss = meta["first_loss"]
        for key, step in meta["steps"].items():
            units = [tensors[f"{key}.{g}"].to(self.device) for g in range(meta["groups"][key])]
            self._trackers.extrema[key] = Extremum(step, meta["values"][key], units)

    # ------------------------------------------------------------------------------------------ updates
    def __call__(self, step: int) -> dict | None:
        return self.update(step)

    @property
    def last_step(self) -> int | None:
        return self.records[-1]["step"] if self.records else None

    def update(self, step: int) -> dict:
        """Measure at training step ``step`` (module docstring) and write the record; a step at or before the last
        recorded one returns that record unmeasured (a resumed run). With ``strict=False`` an error is recorded
        ({"step", "error"}) and returned instead of raised."""
        step = check_int_at_least("step", int(step), 0)
        if self.records and step <= self.records[-1]["step"]:
            return next((r for r in self.records if r["step"] == step), self.records[-1])
        try:
            record = self._measure(step)
        except Exception as err:  # noqa: BLE001 - strict=False records any failure of a user's model
            if self.strict:
                raise
            record = {"step": step, "error": f"{type(err).__name__}: {' '.join(str(err).split())[:300]}"}
            self._append(record, state=False)
            return record
        self._append(record, state=True)
        return record

    def _append(self, record: dict, state: bool) -> None:
        self.records.append(record)
        text = "".join(canonical_json(r) + "\n" for r in self.records)
        if state:
            self._save_state()
        atomic_write_text(self.out / RECORDS, text)
        if self.report:
            self.write_report(figure=time.monotonic() - self._drawn >= self.figure_seconds)

    def write_report(self, figure: bool = True) -> None:
        """Rebuild ``report.md`` and (``figure``) ``monitor.png`` from the records."""
        from easyhard.report.monitor import monitor_markdown, plot_monitor

        if figure:
            plot_monitor(self.records, self.out / "monitor.png")
            self._drawn = time.monotonic()
        atomic_write_text(self.out / "report.md", monitor_markdown(self.records, _config_dict(self.config)))

    def close(self) -> None:
        """Draw the figure and rebuild the report from every record (call once training ends)."""
        self.write_report(figure=True)

    @torch.no_grad()
    def _measure(self, step: int) -> dict:
        c, started = self.config, time.perf_counter()
        record: dict = {"step": step, "levels": self.levels}
        changes: dict[str, dict] = {}
        # losses per level on the training subset and the held-out set (paired across updates)
        train_pp = eps_loss_per_point(self.denoiser, self.loss_train, self.schedule, self.levels, c.train_seed,
                                      c.batch_size)
        test_pp = eps_loss_per_point(self.denoiser, self.loss_test, self.schedule, self.levels, c.test_seed,
                                     c.batch_size)
        _finite("eps-loss", test_pp, train_pp)
        record.update(**_per_level("train_loss", train_pp), **_per_level("test_loss", test_pp))
        record["gap"] = [t - r for t, r in zip(record["test_loss"], record["train_loss"])]
        record["gap_se"] = [math.hypot(a, b) for a, b in zip(record["test_loss_se"], record["train_loss_se"])]
        test_units, train_units = test_pp.mean(0), train_pp.mean(0)
        record["test_loss_mean"], record["train_loss_mean"] = float(test_units.mean()), float(train_units.mean())
        record["test_loss_mean_se"] = _se(test_units)
        changes["test_loss"] = self._track("test_loss", step, [test_units])
        changes["gap"] = self._track("gap", step, [test_units, train_units])
        if self._trackers.first_loss is None:
            self._trackers.first_loss = record["test_loss_mean"]
        # samples from fixed noise: memorisation, nearest neighbours, quality
        samples = sample(self.denoiser, self.schedule, (c.samples, *self.train.shape[1:]), method=c.sampler,
                         steps=c.sampler_steps, spacing=c.spacing, heun=c.heun, clip_x0=c.clip_x0,
                         noise=self.sample_noise)
        _finite("samples", samples)
        d_train = nearest_neighbours(samples, self.train, k=2)[0]
        d_test = nearest_neighbours(samples, self.test, k=1)[0][:, 0]
        record["f_mem"] = {threshold_label(t): _fraction(copies_from_distances(d_train, t), t, c.n_boot)
                           for t in c.thresholds}
        record["nn_train"] = _quantiles(d_train[:, 0])
        record["nn_test"] = _quantiles(d_test)
        nn_units = nearest_similarity(samples, self.own_ref) - nearest_similarity(samples, self.held_ref)
        record["nn_gap"], record["nn_gap_se"] = float(nn_units.mean()), _se(nn_units)
        changes["nn_gap"] = self._track("nn_gap", step, [nn_units])
        kl = knn_divergence(samples.reshape(len(samples), -1).double(), self.test.reshape(len(self.test), -1).double())
        record["quality_kl"] = kl if math.isfinite(kl) else "inf"
        # the twin: paired samples under shared noise, denoiser agreement on own training versus held-out inputs
        if self.twin is not None:
            pair_units = self._pair_units()
            record["pair_similarity"], record["pair_similarity_se"] = float(pair_units.mean()), _se(pair_units)
            i = c.index(self.schedule)
            on_own, on_held = (self._agreement(x, i) for x in (self.score_own, self.score_held))
            record["denoiser_similarity_train"] = float(on_own.mean())
            record["denoiser_similarity_test"] = float(on_held.mean())
            changes["denoiser_bias"] = self._track("denoiser_bias", step, [on_held, on_own])
            eligible = self._eligible(record["test_loss_mean"])
            changes["pair_similarity"] = self._track("pair_similarity", step, [pair_units], eligible)
        record["changes"] = changes
        record["status"], record["evidence"] = assess(record, c)
        record["recommended"] = {"held_out_loss_min": self._trackers.extrema["test_loss"].step,
                                 "split_similarity_peak": (self._trackers.extrema["pair_similarity"].step
                                                           if "pair_similarity" in self._trackers.extrema else None)}
        record["seconds"] = time.perf_counter() - started
        return record

    def _pair_units(self) -> Tensor:
        """Per-sample paired similarity (P,) of coupled ancestral samples of the model and its twin."""
        c = self.config
        shape = (c.pair_samples, *self.train.shape[1:])
        runs = [sample(den, self.schedule, shape, method="ancestral", steps=c.pair_steps, spacing=c.spacing,
                       clip_x0=c.clip_x0, noise=self.pair_noise) for den in (self.denoiser, self.twin)]
        _finite("coupled samples", *runs)
        return paired_similarity(*runs)

    def _agreement(self, x: Tensor, i: int) -> Tensor:
        """cos(eps_model(x_j), eps_twin(x_j)) per input (n,) at step i (the terms of denoiser_similarity)."""
        level = NoiseLevel.at_index(self.schedule, i)
        outs = [predict_eps(den, x, level) for den in (self.denoiser, self.twin)]
        _finite("denoiser outputs", *outs)
        return denoiser_similarity(outs[0][:, None], outs[1][:, None], ensemble=True)  # each input its own 'member'

    def _eligible(self, loss: float) -> bool:
        """Whether the held-out loss has fallen ``peak_fraction`` of the way from its first value to its minimum."""
        first, best = self._trackers.first_loss, self._trackers.extrema["test_loss"].value
        return first - loss >= self.config.peak_fraction * (first - best) if first > best else True

    def _track(self, key: str, step: int, units: list[Tensor], eligible: bool = True) -> dict:
        """The paired change of a curve from its extremum so far (positive: away from it: a rise from a minimum, a
        fall from a maximum), then the extremum updated with this step."""
        value = _curve(units)
        ref = self._trackers.extrema.get(key)
        maximum = key in _Trackers.MAXIMA
        if ref is None:
            change, se, ref_step = 0.0, 0.0, None
        else:
            change, se = paired_change(units, ref)
            change, ref_step = (-change if maximum else change), ref.step
        if eligible and (ref is None or (value > ref.value if maximum else value < ref.value)):
            self._trackers.extrema[key] = Extremum(step, value, [u.detach().clone() for u in units])
            change, se = 0.0, 0.0
        return {"change": change, "se": se, "ref_step": ref_step}


# ============================================================================================ helpers
def _scheduled(denoiser: Denoiser | Callable, schedule: DDPMSchedule) -> Denoiser:
    """The denoiser with a ``schedule`` attribute: an adapter as it is, anything else wrapped
    (:class:`~easyhard.monitor.adapters.AdaptedDenoiser` around :func:`~easyhard.diffusion.as_denoiser`)."""
    if isinstance(getattr(denoiser, "schedule", None), DDPMSchedule):
        return denoiser
    plain = as_denoiser(denoiser)
    return AdaptedDenoiser(plain, plain.prediction, schedule, ensemble=getattr(plain, "ensemble", False))


def _se(units: Tensor) -> float:
    return float(units.double().std() / math.sqrt(len(units))) if len(units) > 1 else 0.0


def _per_level(name: str, per_point: Tensor) -> dict[str, list[float]]:
    """{name: mean per level, name_se: its standard error over points} of per-point losses (L, n)."""
    return {name: per_point.mean(1).tolist(),
            f"{name}_se": (per_point.std(1) / math.sqrt(per_point.shape[1])).tolist()}


def _finite(what: str, *xs: Tensor) -> None:
    if not all(bool(torch.isfinite(x).all()) for x in xs):
        raise ConfigError(f"the model returned NaN or inf ({what} not finite)")


def _fraction(copies: Tensor, threshold: float, n_boot: int) -> dict:
    f = fraction_with_interval(copies.cpu(), threshold, n_boot)
    return {"value": f.value, "interval": list(f.interval), "se": f.se, "wilson_upper": f.wilson_upper,
            "copies": int(copies.sum())}


def _quantiles(d: Tensor) -> dict[str, float]:
    q = torch.quantile(d.double().cpu(), torch.tensor(QUANTILES, dtype=torch.float64))
    return {f"q{int(round(p * 100)):02d}": float(v) for p, v in zip(QUANTILES, q)}


def _config_dict(config: MonitorConfig) -> dict:
    return {f.name: (list(v) if isinstance(v := getattr(config, f.name), tuple) else v) for f in fields(config)}


def read_records(path: str | Path) -> list[dict]:
    """The records of a ``monitor.jsonl`` file, in order; ConfigError naming the file and line if one is
    malformed."""
    path, records = Path(path), []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            raise ConfigError(f"{path} line {n} is not a JSON record") from None
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            raise ConfigError(f"{path} line {n} is not a monitor record (no integer step)")
        records.append(record)
    steps = [r["step"] for r in records]
    if steps != sorted(set(steps)):
        raise ConfigError(f"{path} has repeated or unordered steps")
    return records


def saved_config(folder: str | Path) -> MonitorConfig:
    """The :class:`MonitorConfig` of the monitor that wrote ``folder`` (read from its ``monitor.json``), so that a
    later run (e.g. the offline mode over the same training's checkpoints) measures with the same settings and
    noise; ConfigError naming the folder if it holds no readable monitor."""
    path = Path(folder) / META
    try:
        values = json.loads(path.read_text())["identity"]["config"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"{folder} holds no readable monitor settings ({path.name}: {type(err).__name__})") from None
    known = {f.name for f in fields(MonitorConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{path} has settings this version does not know: {unknown}")
    return MonitorConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


#: record fields that are neither measurements nor decisions: the update's wall time
_UNMEASURED = ("seconds",)


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def records_difference(a: list[dict], b: list[dict]) -> float:
    """The largest absolute difference between the numbers of two monitors' records (every numeric leaf except
    the update's wall ``seconds``), after checking that they hold the same steps, the same fields and the same
    non-numeric values (statuses, evidence steps, recommended checkpoints, f_mem copy counts); ConfigError naming
    the first step and field that differ otherwise. Used to check that the offline mode reproduces a monitor
    attached to training."""
    if [r["step"] for r in a] != [r["step"] for r in b]:
        raise ConfigError(f"the records hold different steps: {[r['step'] for r in a]} and {[r['step'] for r in b]}")
    worst = 0.0

    def walk(x, y, where: str) -> None:
        nonlocal worst
        if not (_number(x) and _number(y)):
            if isinstance(x, dict) and isinstance(y, dict) and x.keys() == y.keys():
                for key in x:
                    walk(x[key], y[key], f"{where}.{key}")
            elif isinstance(x, list) and isinstance(y, list) and len(x) == len(y):
                for i, (u, v) in enumerate(zip(x, y)):
                    walk(u, v, f"{where}[{i}]")
            elif x != y:
                raise ConfigError(f"the records differ at {where}: {str(x)[:80]} and {str(y)[:80]}")
            return
        if isinstance(x, int) and isinstance(y, int) and x != y:  # counts and steps are decisions, not measurements
            raise ConfigError(f"the records differ at {where}: {x} and {y}")
        worst = max(worst, abs(float(x) - float(y)))

    for r, s in zip(a, b):
        walk({k: v for k, v in r.items() if k not in _UNMEASURED},
             {k: v for k, v in s.items() if k not in _UNMEASURED}, f"step {r['step']}")
    return worst
