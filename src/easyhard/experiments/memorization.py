"""Memorisation and biased generalisation: the sample-split protocol over training time
(docs/theory/generalization.md sections 2-7 and its CPU demonstration).

For every seed and training-set size n, K disjoint splits of n points are drawn and one denoiser is
trained per split with identical settings. All models of all seeds and sizes form one ensemble
(:class:`~easyhard.models.EnsembleMLP`), member e = (seed, n, split), trained in one loop. Each model
centres its data by its split's mean; every measurement below is made in the raw data space, where
model e's denoiser is eps_e(x_t, i) = net_e(x_t - a_i m_e, i).

At every checkpoint (fixed inputs and noise, shared by all checkpoints and models):

- eps-loss per noise level on held-out test points and on each model's own training points (their
  difference is the train/test gap), and the distance of each model's denoiser to the empirical-optimal
  denoiser of its split and to the exact denoiser of the data law (Gaussian mixture only);
- ``mem_samples`` DDIM samples per model from shared initial noise: the memorisation fraction f_mem
  (d1/d2 < k against the model's own split, for several k) and a quality measure that tells good
  samples from copies, a k-NN estimate of KL(samples || data law) that becomes large when samples
  collapse on training points (Gaussian mixture: with the exact log-density; images: referenced to the
  held-out test set);
- ``split_samples`` samples per model from the coupled ancestral sampler (shared initial and per-step
  noise): the cross-split similarity S_AB = mean_j Pearson(x_A^j, x_B^j) for every pair of splits (recorded
  per block of samples, ``unit_blocks`` blocks; the test loss likewise per block of test inputs), its
  noise floor (the same model under independent noise), and the own- minus other-split nearest-neighbour
  similarity Delta_NN;
- the denoiser similarity between split models at a fixed index on training versus test inputs (B_score).

Analysis: tau_mem (first checkpoint with f_mem >= ``mem_level``) per model and its power law in n
(Kaplan-Meier medians over replicates, bootstrap interval); tau_gen (first checkpoint within a
tolerance of the best quality); per seed and n the phase ordering of the cross-split similarity peak
tau_split and the test-loss minimum tau_loss (:func:`~easyhard.metrics.ordering.phase_ordering` on the unit
curves: pairs x sample blocks and models x test-input blocks, markers with bootstrap intervals, gaps with
paired-bootstrap errors; the peak is searched among checkpoints whose mean test loss has fallen at least
``peak_fraction`` of the way to its minimum, since shared noise alone makes untrained models similar).
"""

from __future__ import annotations

import functools
import itertools
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from easyhard._io import CorruptedFile, atomic_write_json, json_sha256, read_checked_json, write_checked_json
from easyhard._validate import (ConfigError, check_choice, check_device, check_int_at_least, check_nonnegative,
                                check_positive, check_schedule_length, check_seed, check_workers)
from easyhard.diffusion import DDPMSchedule
from easyhard.experiments.registry import Experiment, Option, RunContext
from easyhard.diffusion.samplers import SPACINGS, SamplerNoise, sample
from easyhard.metrics import (
    bootstrap_replicates, bootstrap_scaling, copies_from_distances, denoiser_distance, denoiser_similarity, eps_loss,
    first_crossing, first_near_best, fixed_noise, kl_to_density, km_median, knn_divergence,
    log_slope, mean_log_likelihood, nearest_neighbours, nearest_similarity, paired_similarity, percentile_interval)
from easyhard.metrics.ordering import phase_ordering
from easyhard.models.ensemble import INITS, MAX_OUTPUT_SCALE, TIME_INPUTS
from easyhard.train.divergence import DivergenceError
from easyhard.train.ensemble import EnsembleTrainConfig, Splits
from easyhard.train.finite import RESTART_HINT, STATE_FILE

DATA = ("mixture", "patches", "cifar10")
STANDARDIZE = ("affine", "scalar")
RECORDS_FILE = "records.json"


@dataclass(frozen=True)
class MemorizationConfig:
    """Settings of ``reproduce memorization``; defaults: the CPU demonstration of docs/theory/generalization.md (section 11).

    Data: ``data`` "mixture" (Gaussian mixture in dimension d with ``components`` equal-weight components,
    power-law spectra, standardised by :func:`mixture_law`: ``standardize``), "patches" (embedded image patches,
    flattened) or "cifar10" (from ``data_dir``). ns: training-set sizes; splits: K disjoint splits per n; seeds:
    independent repetitions. Model: ensemble MLP (width, depth, time_dim, time_scale, time_input, init,
    output_scale: :class:`~easyhard.models.EnsembleConfig`). Training: ``train``. Evaluation: see the module
    docstring; ``spacing`` of both samplers' index grids; ``unit_blocks`` bootstrap units per pair and model;
    ``ordering_z`` the phase-ordering criterion.

    Defaults of data and model [choice, measured]: scalar standardisation, the time embedding into every
    hidden layer, LeCun-uniform initialisation and output_scale 0.5, the denoiser of the CPU demonstration
    (docs/theory/generalization.md section 11.2): with the affine standardisation and PyTorch's default network
    the test-loss valley after the similarity peak is flat (section 11.2 gives the measured comparison).

    Default sizes [choice]: n = 16, 32, 48, 64, the demonstration's 8..64 without n = 8, where fresh data already
    score ~1% memorised (docs/theory/generalization.md section 11.4, pitfall 2), and with n = 48, so that the two
    largest sizes, where the phase ordering is judged, have windows of 4-6 checkpoints (at n = 32 it is 1-4). With
    this data and model n = 128 does not reach its onset within 8,000 steps. Tiled batches continue across steps
    (:meth:`~easyhard.train.ensemble.Splits.draw`), so every point is seen equally often when n does not divide the
    batch. Training measures an EMA (0.99, with warm-up) of the weights: the live weights' checkpoint-to-checkpoint
    noise in the split similarity is as large as its fall after the peak (section 11.6).
    """

    data: str = "mixture"
    data_dir: str | None = None
    d: int = 16
    components: int = 8
    spectrum_power: float = 1.0
    mean_variance: float = 0.25
    standardize: str = "scalar"
    data_seed: int = 0
    patch_size: int = 8
    ns: tuple[int, ...] = (16, 32, 48, 64)
    fit_min_n: int = 16
    splits: int = 4
    seeds: int = 4
    n_test: int = 4000
    width: int = 128
    depth: int = 3
    time_dim: int = 32
    time_scale: float = 1.0
    time_input: str = "every"
    init: str = "lecun"
    output_scale: float = 0.5
    train: EnsembleTrainConfig = field(default_factory=lambda: EnsembleTrainConfig(ema_decay=0.99, ema_warmup=True))
    T: int = 1000
    loss_levels: int = 20
    loss_test: int = 400
    loss_train: int = 256
    mem_samples: int = 400
    mem_steps: int = 40
    split_samples: int = 256
    split_steps: int = 40
    spacing: str = "quadratic"
    thresholds: tuple[float, ...] = (1 / 4, 1 / 3, 1 / 2)
    threshold: float = 1 / 3
    mem_level: float = 0.01
    score_index: int = 100
    score_inputs: int = 256
    peak_fraction: float = 0.75
    unit_blocks: int = 16
    ordering_z: float = 3.0
    gen_tolerance: float = 0.1
    device: str = "cpu"
    threads: int = 2

    def __post_init__(self) -> None:
        check_choice("data", self.data, DATA)
        check_choice("standardize", self.standardize, STANDARDIZE)
        check_choice("spacing", self.spacing, SPACINGS)
        if self.data == "cifar10" and self.data_dir is None:
            raise ConfigError("data cifar10 needs --data-dir (the CIFAR-10 Python batches)")
        for name in ("d", "components", "splits", "seeds", "n_test", "width", "depth", "T", "loss_levels",
                     "loss_test", "loss_train", "mem_samples", "mem_steps", "split_samples", "split_steps",
                     "score_inputs", "threads"):
            check_int_at_least(name, getattr(self, name), 2 if name in ("splits", "mem_steps", "split_steps") else 1)
        if len(self.ns) < 1 or any(int(n) < 2 for n in self.ns) or list(self.ns) != sorted(set(self.ns)):
            raise ConfigError(f"ns must be increasing sizes >= 2 (got {self.ns})")
        if sum(n >= self.fit_min_n for n in self.ns) < 2:
            raise ConfigError(f"at least two of ns = {self.ns} must be >= fit_min_n = {self.fit_min_n}")
        if not 0 < self.threshold < 1 or any(not 0 < k < 1 for k in self.thresholds):
            raise ConfigError(f"threshold and thresholds must lie in (0, 1) (got {self.threshold}, {self.thresholds})")
        check_device("device", self.device)
        if self.threshold not in self.thresholds:
            raise ConfigError(f"threshold {self.threshold} must be one of thresholds {self.thresholds}")
        if not 0 < self.mem_level < 1 or not 0 < self.peak_fraction < 1:
            raise ConfigError("mem_level and peak_fraction must lie in (0, 1)")
        if not 0 <= self.score_index < self.T:
            raise ConfigError(f"score_index must lie in [0, {self.T - 1}] (got {self.score_index})")
        check_positive("gen_tolerance", self.gen_tolerance)
        check_int_at_least("unit_blocks", self.unit_blocks, 1)
        for name in ("loss_test", "split_samples"):
            if getattr(self, name) % self.unit_blocks:
                raise ConfigError(f"unit_blocks must divide {name} = {getattr(self, name)} (got {self.unit_blocks})")
        check_nonnegative("ordering_z", self.ordering_z)
        check_int_at_least("fit_min_n", self.fit_min_n, 2)
        check_schedule_length("T", self.T)
        check_workers("threads", self.threads)
        check_int_at_least("patch_size", self.patch_size, 2)
        for name, high in (("d", 4096), ("components", 10_000), ("patch_size", 64)):
            if getattr(self, name) > high:
                raise ConfigError(f"{name} must be an integer <= {high} (got {getattr(self, name)})")
        for name, high in (("spectrum_power", 10.0), ("mean_variance", 100.0)):
            if getattr(self, name) > high:
                raise ConfigError(f"{name} must be <= {high:g} (got {getattr(self, name):g})")
        check_seed("data_seed", self.data_seed)
        check_positive("time_scale", self.time_scale)
        check_choice("time_input", self.time_input, TIME_INPUTS)
        check_choice("init", self.init, INITS)
        if check_positive("output_scale", self.output_scale) > MAX_OUTPUT_SCALE:
            raise ConfigError(f"output_scale must lie in (0, {MAX_OUTPUT_SCALE:g}] (got {self.output_scale:g})")
        if isinstance(self.train, dict):
            object.__setattr__(self, "train", EnsembleTrainConfig(**self.train))

    @property
    def members(self) -> int:
        return self.seeds * len(self.ns) * self.splits

    def loss_indices(self) -> list[int]:
        """The ``loss_levels`` evaluation indices, the midpoints of equal bins of 0..T-1."""
        return [int((j + 0.5) * self.T / self.loss_levels) for j in range(self.loss_levels)]

    def member(self, seed: int, n_pos: int, split: int) -> int:
        """Ensemble index of (seed, position of n in ns, split)."""
        return (seed * len(self.ns) + n_pos) * self.splits + split

    def to_dict(self) -> dict:
        return asdict(self)


QUICK = MemorizationConfig()
SMOKE = MemorizationConfig(ns=(8, 16, 32), seeds=2, splits=2, n_test=400, width=32, depth=2, loss_levels=4,
                           loss_test=64, loss_train=32, mem_samples=64, mem_steps=6, split_samples=32, split_steps=6,
                           score_inputs=32, train=EnsembleTrainConfig(steps=120, checkpoints=5, first=10, ema_decay=0.99,
                                                                      ema_warmup=True))


def profile(name: str) -> MemorizationConfig:
    """The named settings: "quick" (CPU demonstration), "smoke" (tests) or "full" (image patches, one GPU)."""
    check_choice("profile", name, ("quick", "smoke", "full"))
    if name == "full":
        return MemorizationConfig(data="patches", ns=(64, 128, 256, 512, 1024), fit_min_n=64, width=512, depth=4,
                                  n_test=8000, mem_samples=2000, split_samples=512, device="auto",
                                  train=EnsembleTrainConfig(steps=100_000, batch_size=256, lr=3e-4, checkpoints=40,
                                                            ema_decay=0.99, ema_warmup=True))
    return QUICK if name == "quick" else SMOKE


# ================================================================================================= data
@dataclass(frozen=True)
class Problem:
    """The data of one experiment: per-member splits (raw space), the held-out test set, and, for the
    Gaussian mixture, the data law (``law``: log-density and exact denoiser); ``centres`` (E, 1, d): each
    split's mean, by which its model centres its data."""

    splits: Splits
    test: Tensor
    law: object | None

    @property
    def centres(self) -> Tensor:
        return torch.stack([self.splits.member(e).mean(0) for e in range(len(self.splits.counts))])[:, None, :]


def _image_pool(config: MemorizationConfig) -> tuple[Tensor, Tensor]:
    from easyhard.data import embedded_patches, load_cifar10

    if config.data == "patches":
        train = embedded_patches("train", size=config.patch_size)
        test = embedded_patches("test", size=config.patch_size)
    else:
        train, test = (load_cifar10(config.data_dir, split)[0] for split in ("train", "test"))
    return train.reshape(len(train), -1).float(), test.reshape(len(test), -1).float()


def mixture_law(config: MemorizationConfig):
    """The Gaussian mixture of the config (:func:`~easyhard.data.mixture.random_mixture`), standardised:
    ``standardize="affine"``, x -> Sigma^(-1/2) (x - m) (mean 0, covariance I); "scalar", x -> (x - m) / sigma with
    sigma^2 = tr(Sigma) / d (mean 0, mean per-coordinate variance 1; the shape of the law is kept)."""
    from easyhard.data.mixture import random_mixture

    law = random_mixture(config.d, config.components, config.spectrum_power, config.mean_variance,
                         seed=config.data_seed, standardize=config.standardize == "affine")
    if config.standardize == "affine":
        return law
    sigma = float(torch.trace(law.covariance()) / config.d) ** 0.5
    return law.affine(torch.eye(config.d, dtype=torch.float64) / sigma, -law.mean() / sigma)


def make_problem(config: MemorizationConfig) -> Problem:
    """Draw every split (disjoint within and across seeds) and the test set."""
    need = config.seeds * config.splits * sum(config.ns)
    if config.data == "mixture":
        law = mixture_law(config)
        gen = torch.Generator().manual_seed(config.data_seed + 1)
        pool = law.sample(need, gen).float()
        test = law.sample(config.n_test, gen).float()
    else:
        law = None
        train, test = _image_pool(config)
        if need > len(train):
            raise ConfigError(f"the splits need {need} training images but the data set has {len(train)}")
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(config.data_seed))
        pool = train[order[:need]]
        test = test[torch.randperm(len(test), generator=torch.Generator().manual_seed(config.data_seed + 1))
                    [:config.n_test]]
    sizes = [n for _ in range(config.seeds) for n in config.ns for _ in range(config.splits)]
    return Problem(Splits.stack(list(torch.split(pool, sizes))), test, law)


# =========================================================================================== evaluation
@dataclass(frozen=True)
class Probe:
    """Fixed evaluation inputs, shared by every checkpoint (common random numbers).

    levels: (L,) step indices; test_x (L*Nt, d) with test_eps and test_i; train_x (E, L*Nr, d) with
    train_eps and train_i (per member, its own split); emp_x0 (E, L*Nt, d): the empirical-optimal
    denoiser of each member's split on the test inputs; exact_x0 (L*Nt, d) or None: the data law's
    denoiser; mem_noise, split_noise, floor_noise: sampler noises; score inputs at ``score_index``.
    """

    levels: Tensor
    test_x: Tensor
    test_eps: Tensor
    test_i: Tensor
    train_x: Tensor
    train_eps: Tensor
    train_i: Tensor
    emp_x0: Tensor
    exact_x0: Tensor | None
    mem_noise: SamplerNoise
    split_noise: SamplerNoise
    floor_noise: SamplerNoise
    score_train: Tensor
    score_test: Tensor

    def to(self, device: torch.device | str) -> Probe:
        """The same probe with every tensor (and sampler noise) on ``device``."""
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        for name, value in moved.items():
            if isinstance(value, Tensor):
                moved[name] = value.to(device)
            elif isinstance(value, SamplerNoise):
                moved[name] = value.to(device)
        return Probe(**moved)


def _noised(x0: Tensor, levels: Tensor, schedule: DDPMSchedule, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """(x_t, eps, i) for every point of x0 (..., n, d) at every level: shapes (..., L*n, d), (..., L*n, d), (L*n,)."""
    n, d = x0.shape[-2:]
    xs, es = [], []
    for level in levels.tolist():
        a, s = schedule.coefficients(level)
        eps = fixed_noise(int(np.prod(x0.shape[:-1])), d, level, seed).reshape(x0.shape).to(x0.dtype)
        xs.append(a * x0 + s * eps)
        es.append(eps)
    return torch.cat(xs, -2), torch.cat(es, -2), levels.repeat_interleave(n)


def make_probe(config: MemorizationConfig, problem: Problem, schedule: DDPMSchedule) -> Probe:
    """Build the fixed evaluation inputs and the reference denoisers (computed once)."""
    from easyhard.oracles.empirical import empirical_denoiser

    splits = problem.splits
    levels = torch.tensor(config.loss_indices())
    test0 = problem.test[:config.loss_test]
    test_x, test_eps, test_i = _noised(test0, levels, schedule, seed=11)
    # each member's own points, repeated to loss_train per level
    reps = torch.arange(config.loss_train)
    own = torch.stack([splits.data[e, reps % splits.counts[e]] for e in range(len(splits.counts))])
    train_x, train_eps, train_i = _noised(own, levels, schedule, seed=12)
    a, s = (c.to(torch.float64)[:, None] for c in schedule.coefficients(test_i))
    emp = torch.stack([empirical_denoiser(test_x.double(), splits.member(e).double(), a[:, 0], s[:, 0]).float()
                       for e in range(len(splits.counts))])
    exact = None
    if problem.law is not None:
        exact = torch.cat([problem.law.posterior_mean(test_x[test_i == lv].double(), *schedule.coefficients(int(lv)))
                           for lv in levels]).float()
    gen = torch.Generator().manual_seed(13)
    d = problem.test.shape[1]
    mem_noise = SamplerNoise.draw((config.mem_samples, d), gen)
    split_noise = SamplerNoise.draw((config.split_samples, d), gen)
    floor_noise = SamplerNoise.draw((config.split_samples, d), gen)
    a_i, s_i = schedule.coefficients(config.score_index)
    own_score = torch.stack([splits.data[e, torch.arange(config.score_inputs) % splits.counts[e]]
                             for e in range(len(splits.counts))])
    score_train = a_i * own_score + s_i * fixed_noise(own_score.numel() // d, d, config.score_index, 14
                                                      ).reshape(own_score.shape).float()
    test_s = problem.test[-config.score_inputs:]
    score_test = a_i * test_s + s_i * fixed_noise(len(test_s), d, config.score_index, 15).float()
    return Probe(levels, test_x, test_eps, test_i, train_x, train_eps, train_i, emp, exact, mem_noise, split_noise,
                 floor_noise, score_train, score_test)


def raw_denoiser(model: torch.nn.Module, centres: Tensor, schedule: DDPMSchedule,
                 chunk: int = 2048) -> Callable[[Tensor, int | Tensor], Tensor]:
    """eps_e(x_t, i) = net_e(x_t - a_i m_e, i) for x_t (E, B, d) in raw space; i an int or (B,) indices.
    Evaluated ``chunk`` inputs at a time, without gradients."""

    @torch.no_grad()
    def eps(x_t: Tensor, i: int | Tensor) -> Tensor:
        a, _ = schedule.coefficients(i)
        a = a.to(x_t.dtype)[:, None] if isinstance(a, Tensor) else a
        out = []
        for start in range(0, x_t.shape[1], chunk):
            stop = start + chunk
            a_c = a[start:stop] if isinstance(a, Tensor) else a
            i_c = i[start:stop] if isinstance(i, Tensor) else i
            out.append(model(x_t[:, start:stop] - a_c * centres, i_c, schedule))
        return torch.cat(out, 1)

    return eps


def _by_level(x: Tensor, levels: int) -> Tensor:
    """(..., L*n, d) -> (..., L, n, d): the probe's level-major layout, one block of points per level."""
    return x.reshape(*x.shape[:-2], levels, -1, x.shape[-1])


def _input_blocks(x: Tensor, levels: int, blocks: int) -> Tensor:
    """(..., L*n, d) in the probe's level-major layout -> (..., G, L*n/G, d): block g holds the test inputs
    g n/G .. (g + 1) n/G - 1 at every level (the bootstrap units of the test loss)."""
    by_level = _by_level(x, levels)  # (..., L, n, d)
    split = by_level.reshape(*by_level.shape[:-2], blocks, -1, by_level.shape[-1])  # (..., L, G, n/G, d)
    return split.transpose(-4, -3).reshape(*by_level.shape[:-3], blocks, -1, by_level.shape[-1])


def _copies(samples: Tensor, splits: Splits, thresholds: tuple[float, ...]) -> tuple[Tensor, Tensor]:
    """Copies per member and threshold (E, len(thresholds)) and the median nearest-neighbour distance (E,) of
    samples (E, M, d) to each member's own split (exact distances, :func:`~easyhard.metrics.nearest_neighbours`
    over the members of each n at once; copies by :func:`~easyhard.metrics.copies_from_distances`)."""
    dist = torch.zeros(*samples.shape[:2], 2, dtype=torch.float64)
    for n in splits.counts.unique().tolist():
        ids = torch.nonzero(splits.counts == n)[:, 0]
        dist[ids] = nearest_neighbours(samples[ids], splits.data[ids, :n], k=2, ensemble=True)[0]
    copies = torch.stack([copies_from_distances(dist, k).sum(-1) for k in thresholds], -1)
    return copies, dist[..., 0].median(-1).values.float()


def evaluate(model: torch.nn.Module, config: MemorizationConfig, problem: Problem, probe: Probe,
             schedule: DDPMSchedule, centres: Tensor) -> dict[str, list]:
    """Every measurement of one checkpoint (module docstring), for models that centred their data by
    ``centres`` (:attr:`Problem.centres`); arrays as nested lists, leading axis E or the (seed, n, pair)
    layout for pairwise statistics. Each number is a function of :mod:`easyhard.metrics` applied with a
    leading member axis: :func:`~easyhard.metrics.eps_loss`, :func:`~easyhard.metrics.denoiser_distance`,
    :func:`~easyhard.metrics.copies_from_distances`, :func:`~easyhard.metrics.kl_to_density` (or
    :func:`~easyhard.metrics.knn_divergence`), :func:`~easyhard.metrics.paired_similarity`,
    :func:`~easyhard.metrics.nearest_similarity` (the gap of :func:`~easyhard.metrics.split_similarity`) and
    :func:`~easyhard.metrics.denoiser_similarity`."""
    splits = problem.splits
    E, d = len(splits.counts), probe.test_x.shape[1]
    eps = raw_denoiser(model, centres.to(probe.test_x.device), schedule)
    L = len(probe.levels)
    # losses per level and distances to the reference denoisers
    test_x = probe.test_x.expand(E, -1, -1)
    eps_test = eps(test_x, probe.test_i)
    G = config.unit_blocks
    out = {"test_loss": eps_loss(_by_level(eps_test, L), _by_level(probe.test_eps, L)),
           "train_loss": eps_loss(_by_level(eps(probe.train_x, probe.train_i), L), _by_level(probe.train_eps, L)),
           "test_loss_blocks": eps_loss(_input_blocks(eps_test, L, G), _input_blocks(probe.test_eps, L, G))}
    a, s = (c.float()[:, None] for c in schedule.coefficients(probe.test_i))
    model_x0 = _by_level((test_x - s * eps_test) / a, L)
    out["emp_distance"] = denoiser_distance(model_x0, _by_level(probe.emp_x0, L))
    if probe.exact_x0 is not None:
        out["exact_distance"] = denoiser_distance(model_x0, _by_level(probe.exact_x0, L))
    # memorisation and sample quality from DDIM samples with shared initial noise
    mem = sample(eps, schedule, (E, config.mem_samples, d), method="ddim", steps=config.mem_steps, heun=False,
                 spacing=config.spacing, clip_x0=None, noise=probe.mem_noise).cpu()
    out["copies"], out["nn_distance"] = _copies(mem, splits, config.thresholds)
    if problem.law is not None:  # k-NN estimate of KL(q || p) with the exact log-density
        out["kl"] = kl_to_density(mem.double(), problem.law.log_prob, ensemble=True)
        out["log_likelihood"] = mean_log_likelihood(mem.double(), problem.law.log_prob, ensemble=True)
    else:  # held-out-referenced k-NN estimate of KL(q || p)
        out["kl"] = torch.tensor([knn_divergence(x, problem.test.double()) for x in mem.double()])
    # coupled ancestral samples: cross-split similarity, its noise floor, own- vs other-split similarity
    shape = (E, config.split_samples, d)
    coupled = sample(eps, schedule, shape, method="ancestral", steps=config.split_steps, spacing=config.spacing,
                     clip_x0=None, noise=probe.split_noise)
    independent = sample(eps, schedule, shape, method="ancestral", steps=config.split_steps, spacing=config.spacing,
                         clip_x0=None, noise=probe.floor_noise)
    out["floor"] = paired_similarity(coupled, independent, ensemble=True).mean(-1)
    coupled = coupled.cpu()
    pairs = list(itertools.combinations(range(config.splits), 2))
    ordered = list(itertools.permutations(range(config.splits), 2))
    groups = [[config.member(seed, n_pos, k) for k in range(config.splits)]
              for seed in range(config.seeds) for n_pos in range(len(config.ns))]
    # denoiser similarity at a fixed index: every member on all training inputs of its group (A's inputs are
    # seen by A only) and on shared test inputs
    group_inputs = torch.stack([torch.cat([probe.score_train[m] for m in ids]) for ids in groups])  # (G, K*S, d)
    member_group = torch.tensor([g for g, ids in enumerate(groups) for _ in ids])
    eps_train = eps(group_inputs[member_group], config.score_index).reshape(E, config.splits, -1, d)
    eps_score_test = eps(probe.score_test.expand(E, -1, -1), config.score_index)
    similarity, delta_nn, s_train, s_test = [], [], [], []
    for ids in groups:
        first, second = [ids[i] for i, _ in pairs], [ids[j] for _, j in pairs]
        pair_samples = paired_similarity(coupled[first], coupled[second], ensemble=True)  # (P, split_samples)
        similarity.append(pair_samples.reshape(len(pairs), G, -1).mean(-1).tolist())  # blocks of samples
        # nn[i, j]: similarity of model i's samples to their nearest point of split j (all K^2 searches at once);
        # the gap of split_similarity for (samples of i, own split i, other split j) is mean(nn[i, i] - nn[i, j])
        models, references = zip(*itertools.product(ids, repeat=2))
        nn = nearest_similarity(coupled[list(models)], splits.data[list(references), :int(splits.counts[ids[0]])],
                                ensemble=True).reshape(config.splits, config.splits, -1)
        delta_nn.append(float(np.mean([float((nn[i, i] - nn[i, j]).mean()) for i, j in ordered])))
        a_pos = [i for i, _ in ordered]  # ordered pairs (A, B): both models on A's training inputs
        a_ids, b_ids = [ids[i] for i in a_pos], [ids[j] for _, j in ordered]
        on_train = denoiser_similarity(eps_train[a_ids, a_pos], eps_train[b_ids, a_pos], ensemble=True)
        s_train.append(float(on_train.mean()))
        s_test.append(float(denoiser_similarity(eps_score_test[a_ids], eps_score_test[b_ids], ensemble=True).mean()))
    out["similarity"] = torch.tensor(similarity).reshape(config.seeds, len(config.ns), len(pairs), G)
    out["delta_nn"] = torch.tensor(delta_nn).reshape(config.seeds, len(config.ns))
    out["score_train"] = torch.tensor(s_train).reshape(config.seeds, len(config.ns))
    out["score_test"] = torch.tensor(s_test).reshape(config.seeds, len(config.ns))
    return {k: v.tolist() for k, v in out.items()}


# ============================================================================================ running
RECORDS_KIND = "memorization-records"


def _record_shapes(config: MemorizationConfig) -> dict[str, tuple[int, ...]]:
    """The measurements of one record (:func:`evaluate`) and their shapes: the schema of records.json."""
    E, S, N, K, L, G = config.members, config.seeds, len(config.ns), config.splits, config.loss_levels, config.unit_blocks
    shapes = {"test_loss": (E, L), "test_loss_blocks": (E, G), "train_loss": (E, L), "emp_distance": (E, L),
              "copies": (E, len(config.thresholds)), "nn_distance": (E,), "kl": (E,), "floor": (E,),
              "similarity": (S, N, K * (K - 1) // 2, G),
              "delta_nn": (S, N), "score_train": (S, N), "score_test": (S, N)}
    if config.data == "mixture":
        shapes.update(exact_distance=(E, L), log_likelihood=(E,))
    return shapes


#: the measurements that may be non-finite: the k-NN KL estimates are inf for collapsed samples
#: (:func:`~easyhard.metrics.kl_to_density`) and :func:`analyse` reads any non-finite value of them as inf
NONFINITE_OK = ("kl",)
_NONFINITE_TEXT = {"inf": float("inf"), "-inf": float("-inf"), "nan": float("nan")}


def _encode(value: object, where: str, nonfinite_ok: bool) -> object:
    """A measurement as JSON, with non-finite numbers as "inf", "-inf" or "nan" where ``nonfinite_ok``, else
    :class:`~easyhard.train.divergence.DivergenceError` naming ``where`` (never a silent NaN)."""
    if isinstance(value, list):
        return [_encode(v, where, nonfinite_ok) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        if not nonfinite_ok:
            raise DivergenceError(f"{where} is {value}: the models' outputs are not finite")
        return "nan" if np.isnan(value) else "inf" if value > 0 else "-inf"
    return value


def _decode(value: object, nonfinite_ok: bool) -> object:
    """Inverse of :func:`_encode`; ValueError for anything but numbers (and their texts where ``nonfinite_ok``)
    in nested lists."""
    if isinstance(value, list):
        return [_decode(v, nonfinite_ok) for v in value]
    if nonfinite_ok and isinstance(value, str) and value in _NONFINITE_TEXT:
        return _NONFINITE_TEXT[value]
    if type(value) not in (int, float):
        raise ValueError(f"{value!r} is not a number")
    return value


def _write_records(path: Path, records: list[dict], config_hash: str) -> None:
    """records.json: the records as a checked file of this config (:func:`~easyhard._io.write_checked_json`)."""
    encoded = [{k: _encode(v, f"measurement {k} at step {r['step']}", k in NONFINITE_OK) for k, v in r.items()}
               for r in records]
    write_checked_json(path, encoded, RECORDS_KIND, config_hash)


def _read_records(path: Path, config: MemorizationConfig, config_hash: str, done: int) -> list[dict]:
    """The records of the checkpoints up to the saved step ``done``, verified: a checked file of this config
    (:func:`~easyhard._io.read_checked_json`), one record per checkpoint <= ``done`` in order (later ones are
    dropped: measured before the state was saved), each with the measurements of :func:`_record_shapes`.
    CorruptedFile naming ``path`` otherwise (also when it is missing)."""
    if not path.exists():
        raise CorruptedFile(path, f"missing while {STATE_FILE} exists", RESTART_HINT)
    data = read_checked_json(path, RECORDS_KIND, config_hash, RESTART_HINT)
    shapes = _record_shapes(config)
    expected = [c for c in config.train.checkpoint_steps() if c <= done]
    if not isinstance(data, list) or not all(isinstance(r, dict) and type(r.get("step")) is int for r in data):
        raise CorruptedFile(path, "not a list of records with integer steps", RESTART_HINT)
    records = [r for r in data if r["step"] <= done]
    if [r["step"] for r in records] != expected:
        raise CorruptedFile(path, f"its steps are not the checkpoints up to step {done}", RESTART_HINT)
    decoded = []
    for r in records:
        if set(r) != {"step", *shapes}:
            raise CorruptedFile(path, f"the record of step {r['step']} has other measurements", RESTART_HINT)
        try:
            values = {k: _decode(r[k], k in NONFINITE_OK) for k in shapes}
            bad = next((k for k in shapes if np.asarray(values[k], dtype=np.float64).shape != shapes[k]), None)
        except ValueError as err:
            raise CorruptedFile(path, f"the record of step {r['step']}: {err}", RESTART_HINT) from None
        if bad is not None:
            raise CorruptedFile(path, f"{bad} of step {r['step']} is not of shape {shapes[bad]}", RESTART_HINT)
        decoded.append({"step": r["step"], **values})
    return decoded


def _read_config(path: Path) -> dict:
    """config.json of a saved run (plain JSON); CorruptedFile naming it if it is missing or not a JSON object."""
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise CorruptedFile(path, f"missing while {STATE_FILE} exists", RESTART_HINT) from None
    except (OSError, ValueError) as err:
        raise CorruptedFile(path, f"{type(err).__name__}: {' '.join(str(err).split())[:120]}", RESTART_HINT) from None
    if not isinstance(data, dict):
        raise CorruptedFile(path, f"a JSON {type(data).__name__}, not an object", RESTART_HINT)
    return data


def _saved_run(out: Path, config: MemorizationConfig, config_json: dict, model: torch.nn.Module,
               device: torch.device) -> tuple[list[dict], int]:
    """(records, step) of the run saved in ``out``: config.json equal to ``config_json``, the training state
    verified against ``model`` (:func:`~easyhard.train.finite.check_state`) and the records up to its step
    (:func:`_read_records`). CorruptedFile naming the first file that cannot be used."""
    from easyhard.train.finite import check_state

    config_path = out / "config.json"
    if _read_config(config_path) != config_json:
        raise CorruptedFile(config_path, "it holds a run with another config", f"use a new --out, or {RESTART_HINT}")
    done = check_state(out / STATE_FILE, model, config.train.loop(device))
    return _read_records(out / RECORDS_FILE, config, json_sha256(config_json), done), done


def run_memorization(config: MemorizationConfig, out_dir: str | Path,
                     progress: Callable[[int], None] | None = None, restart: bool = False) -> dict:
    """Train the ensemble with measurements at every checkpoint, then analyse (:func:`analyse`).

    Output folder: config.json (the config, plain JSON), records.json (one entry per checkpoint, a checked file
    rewritten atomically after each: :func:`~easyhard._io.write_checked_json` of kind "memorization-records"
    for this config) and the training state. A rerun with the same config verifies all three
    (:func:`_saved_run`) and resumes from the last checkpoint, or, for a finished run, only re-analyses; its
    results equal those of an uninterrupted run. A file that cannot be used is a CorruptedFile naming it,
    or, with ``restart``, the saved run is deleted and training starts over; nothing unverified is used.
    """
    torch.set_flush_denormal(True)  # denormals slow late training ~10x on CPU (docs/theory/generalization.md section 11.4)
    try:
        return _train_and_analyse(config, out_dir, progress, restart)
    finally:
        torch.set_flush_denormal(False)  # the process default again: other code in this process needs subnormals


def _train_and_analyse(config: MemorizationConfig, out_dir: str | Path,
                     progress: Callable[[int], None] | None = None, restart: bool = False) -> dict:
    """:func:`run_memorization` without its process-wide setting of the CPU's denormal mode."""
    from easyhard.models.ensemble import EnsembleConfig, EnsembleMLP
    from easyhard.train.ensemble import train_ensemble

    torch.set_num_threads(config.threads)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config_json = json.loads(json.dumps(config.to_dict()))
    config_hash = json_sha256(config_json)
    saved_files = [out / "config.json", out / RECORDS_FILE, out / STATE_FILE]
    schedule = DDPMSchedule(T=config.T)
    problem = make_problem(config)
    device = torch.device(config.device)
    model = EnsembleMLP(EnsembleConfig(config.members, problem.test.shape[1], config.width, config.depth,
                                       config.time_dim, time_scale=config.time_scale, time_input=config.time_input,
                                       init=config.init, output_scale=config.output_scale),
                        torch.Generator().manual_seed(config.train.seed + 1))
    records: list[dict] = []
    done = 0
    resume = (out / STATE_FILE).exists()
    if resume:
        try:
            records, done = _saved_run(out, config, config_json, model, device)
        except CorruptedFile:
            if not restart:
                raise
            for path in saved_files:
                path.unlink(missing_ok=True)
            resume = False
    atomic_write_json(out / "config.json", config_json)
    probe = make_probe(config, problem, schedule).to(device)
    model = model.to(device)
    centres = problem.centres
    train_splits = Splits((problem.splits.data - centres).to(device), problem.splits.counts.to(device))

    def on_checkpoint(step: int, net: torch.nn.Module) -> None:
        records[:] = [r for r in records if r["step"] < step]
        records.append({"step": step, **evaluate(net, config, problem, probe, schedule, centres)})
        _write_records(out / RECORDS_FILE, records, config_hash)

    if progress is not None and done:
        progress(done)
    if done < config.train.steps:
        train_ensemble(model, train_splits, schedule, config.train, out, resume=resume, on_checkpoint=on_checkpoint,
                       progress=progress)
    return analyse(config, records)


# ============================================================================================ analysis
def _bootstrap_slope_difference(ns: np.ndarray, late: np.ndarray, early: np.ndarray, n_boot: int = 1000,
                                seed: int = 0) -> tuple[float, tuple[float, float]]:
    """slope(late) - slope(early) of log tau against log n (:func:`~easyhard.metrics.log_slope`), with a 95%
    percentile interval over resampled seeds (:func:`~easyhard.metrics.bootstrap_replicates`); late, early: (seeds,
    len(ns)) steps."""

    def diff(rows: np.ndarray) -> float:
        return log_slope(ns, late[rows].T) - log_slope(ns, early[rows].T)

    boots = bootstrap_replicates(diff, len(late), n_boot, seed)
    return diff(np.arange(len(late))), tuple(float(x) for x in percentile_interval(boots, 0.95))


def analyse(config: MemorizationConfig, records: list[dict]) -> dict:
    """Timescales, fits and checks from the per-checkpoint records (module docstring)."""
    if len(records) < 2:
        raise ConfigError(f"the analysis needs at least two checkpoints (got {len(records)})")
    S, N, K = config.seeds, len(config.ns), config.splits
    steps = np.array([r["step"] for r in records])
    arr = {k: np.array([r[k] for r in records]) for k in records[0] if k != "step"}  # leading axis: checkpoint
    ns = np.array(config.ns)
    fit_pos = [j for j, n in enumerate(config.ns) if n >= config.fit_min_n]

    def per_n(x: np.ndarray) -> np.ndarray:
        """(E, ...) -> (seeds, n, splits, ...)."""
        return x.reshape(S, N, K, *x.shape[1:])

    # memorisation: f_mem per member, threshold and checkpoint; onsets tau_mem
    fmem = np.moveaxis(arr["copies"], 0, -1) / config.mem_samples  # (E, n_thr, C)
    tau_mem = {k: first_crossing(steps, fmem[:, t], config.mem_level) for t, k in enumerate(config.thresholds)}
    main = config.thresholds.index(config.threshold)
    first_copy = first_crossing(steps, fmem[:, main], 0.5 / config.mem_samples)
    fits = {}
    for k, taus in list(tau_mem.items()) + [("first copy", first_copy)]:
        by_n = {int(config.ns[j]): per_n(taus)[:, j].ravel() for j in fit_pos}
        try:
            fits[str(k)] = bootstrap_scaling(by_n, seed=config.data_seed).to_dict()
        except ConfigError as err:
            fits[str(k)] = {"error": str(err)}
    tau_main = per_n(tau_mem[config.threshold])  # (S, N, K)
    # test loss and cross-split similarity per bootstrap unit, their unit means, and the phase ordering per seed and n
    loss_units = per_n(np.moveaxis(arr["test_loss_blocks"], 0, -1))  # (S, N, K models, G input blocks, C)
    similarity_units = np.moveaxis(arr["similarity"], 0, -1)  # (S, N, P pairs, G sample blocks, C)
    loss, similarity = loss_units.mean((2, 3)), similarity_units.mean((2, 3))  # (S, N, C)
    floor = np.median(per_n(arr["floor"].T), axis=2)  # (S, N, C)
    drop = (loss[..., :1] - loss) / np.maximum(loss[..., :1] - loss.min(-1, keepdims=True), 1e-30)
    orderings = [[phase_ordering(steps, similarity_units[s, j], loss_units[s, j], early_maximum=True,
                                 z=config.ordering_z, eligible=drop[s, j] >= config.peak_fraction,
                                 seed=[config.data_seed, s, j]) for j in range(N)] for s in range(S)]
    split_pos = np.array([[o.early.position for o in row] for row in orderings])  # (S, N)
    loss_pos = np.array([[o.late.position for o in row] for row in orderings])
    tau_split, tau_loss = steps[split_pos], steps[loss_pos]
    peak = np.take_along_axis(similarity, split_pos[..., None], -1)[..., 0]
    peak_floor = np.take_along_axis(floor, split_pos[..., None], -1)[..., 0]
    lead = loss_pos - split_pos
    slopes = {"tau_loss": log_slope(ns[fit_pos], tau_loss[:, fit_pos].T),
              "tau_split": log_slope(ns[fit_pos], tau_split[:, fit_pos].T)}
    window, window_ci = _bootstrap_slope_difference(ns[fit_pos], tau_loss[:, fit_pos], tau_split[:, fit_pos])
    result = {
        "steps": steps.tolist(), "ns": list(config.ns), "fit_ns": [int(ns[j]) for j in fit_pos],
        "f_mem": per_n(fmem).tolist(),
        "tau_mem": {str(k): per_n(v).tolist() for k, v in tau_mem.items()},
        "tau_mem_median": {str(k): [km_median(per_n(v)[:, j].ravel()) for j in range(N)] for k, v in tau_mem.items()},
        "fits": fits,
        "test_loss": loss.tolist(), "similarity": similarity.tolist(), "floor": floor.tolist(),
        "tau_loss": tau_loss.tolist(), "tau_split": tau_split.tolist(), "lead_checkpoints": lead.tolist(),
        "ordering": [[o.to_dict() for o in row] for row in orderings],
        "peak": peak.tolist(), "peak_floor": peak_floor.tolist(), "slopes": slopes,
        "window_slope": window, "window_slope_interval": window_ci,
        "loss_gap": np.median(per_n(np.moveaxis(arr["test_loss"] - arr["train_loss"], 0, -1)), 2).tolist(),
        "levels": config.loss_indices(),
        "emp_distance": np.median(per_n(np.moveaxis(arr["emp_distance"], 0, -1)), 2).tolist(),
        "delta_nn": np.moveaxis(arr["delta_nn"], 0, -1).tolist(),
        "score_bias": np.moveaxis(arr["score_test"] - arr["score_train"], 0, -1).tolist(),
        "copies_at_loss_min": np.take_along_axis(per_n(np.moveaxis(arr["copies"][..., main], 0, -1)),
                                                 loss_pos[:, :, None, None], -1)[..., 0].tolist(),
    }
    if "exact_distance" in arr:
        result["exact_distance"] = np.median(per_n(np.moveaxis(arr["exact_distance"], 0, -1)), 2).tolist()
    if "kl" in arr:
        kl = arr["kl"].T  # (E, C)
        tau_gen = per_n(first_near_best(steps, np.where(np.isfinite(kl), kl, np.inf), config.gen_tolerance))
        result.update(kl=per_n(kl).tolist(), tau_gen=tau_gen.tolist(),
                      tau_gen_median=[float(np.median(tau_gen[:, j])) for j in range(N)])
        slopes["tau_gen"] = log_slope(ns[fit_pos], np.moveaxis(tau_gen[:, fit_pos], 1, 0).reshape(len(fit_pos), -1))
    result["checks"] = _checks(config, result, tau_main, fit_pos)
    return result


def _checks(config: MemorizationConfig, result: dict, tau_main: np.ndarray, fit_pos: list[int]) -> dict:
    """The quick-mode criteria of docs/theory/generalization.md section 11.5, each {"value", "criterion", "passed"}."""
    fit = result["fits"][str(config.threshold)]
    finite = [float((tau_main[:, j] >= 0).mean()) for j in fit_pos]
    medians = [result["tau_mem_median"][str(config.threshold)][j] for j in fit_pos]
    others = [result["fits"][str(k)].get("kappa") for k in config.thresholds if k != config.threshold]
    spread = max(abs(o - fit["kappa"]) for o in others) if "kappa" in fit and None not in others else float("inf")
    top = fit_pos[-2:]
    z = config.ordering_z
    ordering = [[row[j] for j in top] for row in result["ordering"]]  # (seeds, 2)
    flat = [o for row in ordering for o in row]
    height = (np.array(result["peak"]) - np.array(result["peak_floor"]))[:, top]
    checks = {
        "tau_mem_finite": (finite, ">= 0.75 of replicates at every fitted n", min(finite) >= 0.75),
        "tau_mem_increasing": (medians, "Kaplan-Meier medians finite and increasing in n",
                               bool(np.isfinite(medians).all() and np.all(np.diff(medians) > 0))),
        "tau_mem_slope": ([fit.get("kappa"), *fit.get("interval", [None, None])],
                          "slope in [0.8, 1.8] and interval lower bound > 0.5",
                          "kappa" in fit and 0.8 <= fit["kappa"] <= 1.8 and fit["interval"][0] > 0.5),
        "slope_robust_to_threshold": (spread, "abs(slope(k) - slope(1/3)) <= 0.3 for k = 1/4, 1/2", spread <= 0.3),
        "split_peak_before_loss_min": ([[[o["lead"], *o["lead_interval"]] for o in row] for row in ordering],
                                       "tau_split before tau_loss (lead [95% interval] in checkpoints) for the two "
                                       "largest n in every seed", all(o["lead"] >= 1 for o in flat)),
        "similarity_falls_after_peak": ([[[o["early_gap"], o["early_se"]] for o in row] for row in ordering],
                                        f"similarity at tau_loss below its peak by > {z:g} bootstrap SE (gap, SE) for "
                                        "the two largest n in every seed",
                                        all(o["early_gap"] > z * o["early_se"] for o in flat)),
        "loss_above_min_at_peak": ([[[o["late_gap"], o["late_se"]] for o in row] for row in ordering],
                                   f"test loss at tau_split above its minimum by > {z:g} bootstrap SE (gap, SE) for "
                                   "the two largest n in every seed", all(o["late_gap"] > z * o["late_se"] for o in flat)),
        "split_peak_above_floor": (height.tolist(), ">= 0.5 above the independent-noise floor",
                                   bool((height >= 0.5).all())),
        "window_widens": ([result["window_slope"], *result["window_slope_interval"]],
                          "slope(tau_loss) - slope(tau_split) >= 0.5", result["window_slope"] >= 0.5),
    }
    return {k: {"value": v, "criterion": c, "passed": bool(p)} for k, (v, c, p) in checks.items()}



# ========================================================================================== experiment
def _run(config: MemorizationConfig, ctx: RunContext | None = None) -> dict:
    """:func:`run_memorization` in ``ctx.out_dir / "memorization"`` (progress: training steps; ``ctx.restart``:
    discard a saved run that cannot be used); the results carry the config."""
    ctx = ctx or RunContext()
    if ctx.out_dir is None:
        raise ConfigError("the memorization experiment needs an output folder for its training state")
    results = run_memorization(config, Path(ctx.out_dir) / "memorization", ctx.progress, ctx.restart)
    return {**results, "config": config.to_dict()}


def report_memorization(results: dict, out: Path) -> tuple[list[str], str]:
    """The memorisation, timescale, sample-split and denoiser figures and the Markdown section."""
    from easyhard.report.memorization import (
        plot_denoisers, plot_memorization, plot_split, plot_timescales, render_memorization)

    figures = {"memorisation fraction against steps and steps / n":
               plot_memorization(results, out / "memorization_fmem.png").name,
               "timescales against n": plot_timescales(results, out / "memorization_timescales.png").name,
               "cross-split similarity, its floor and the test loss":
               plot_split(results, out / "memorization_split.png").name,
               "distance to the empirical and exact denoisers; train/test gap per level":
               plot_denoisers(results, out / "memorization_denoisers.png").name}
    return list(figures.values()), render_memorization(results, figures)


def _z_text(z: float | None) -> str:
    return "inf" if z is None else f"{z:.1f}"


def summarize_memorization(results: dict) -> list[str]:
    """Each check, the phase ordering of the two largest fitted n per seed, the tau_mem power law and whether all
    checks pass."""
    lines = [f"{name}: {'pass' if check['passed'] else 'FAIL'} ({check['criterion']})"
             for name, check in results["checks"].items()]
    for s, row in enumerate(results["ordering"]):
        for n in results["fit_ns"][-2:]:
            o = row[results["ns"].index(n)]
            lines.append(f"seed {s}, n = {n}: lead {o['lead']} [{o['lead_interval'][0]}, {o['lead_interval'][1]}] "
                         f"checkpoints (tau_split {o['early']['step']}, tau_loss {o['late']['step']}); similarity drop "
                         f"{o['early_gap']:.4f} (z {_z_text(o['early_z'])}), loss excess {o['late_gap']:.4f} "
                         f"(z {_z_text(o['late_z'])})")
    fit = results["fits"][str(results["config"]["threshold"])]
    if "kappa" in fit:
        lines.append("tau_mem ~ n^{:.2f} [{:.2f}, {:.2f}]".format(fit["kappa"], *fit["interval"]))
    return lines + [f"memorization checks pass: {all(c['passed'] for c in results['checks'].values())}"]


def memorization_resources(config: MemorizationConfig):
    """The ensemble's training (``members`` MLPs, ``train.steps`` steps of ``train.batch_size``) plus, at each
    checkpoint, the forward passes of the measurements (sampling, losses, score inputs; a forward pass a third
    of a training step) (:func:`easyhard.experiments.resources.dense_training`); memory: the test set, the
    samples of all members and their distances to the training points."""
    from easyhard.experiments.resources import Resources, dense_training, mlp_params

    d = {"mixture": config.d, "patches": 3 * config.patch_size**2}.get(config.data, 3 * 32 * 32)
    params = mlp_params(d, config.width, config.depth, config.time_dim)
    if config.time_input == "every":  # the time maps of the later hidden layers
        params += (config.depth - 1) * config.time_dim * config.width
    E = config.members
    per_checkpoint = (config.mem_samples * config.mem_steps + config.split_samples * config.split_steps
                      + config.loss_test + config.loss_train + config.score_inputs) / 3
    work = dense_training(params, config.train.batch_size * config.train.steps
                          + config.train.checkpoints * per_checkpoint, 1, E, config.device)
    data = 8.0 * d * (config.n_test + 2 * E * max(config.mem_samples, config.split_samples)) \
        + 4.0 * E * config.mem_samples * max(config.ns)
    return Resources(work.memory_bytes + data, work.seconds)


MEMORIZATION = Experiment(
    "memorization", MemorizationConfig, _run,
    "memorisation onset against n and the sample-split similarity peak before the test-loss minimum",
    profiles={name: functools.partial(profile, name) for name in ("smoke", "quick", "full")},
    report=report_memorization,
    options=(Option("--data", "data", "mixture, patches or cifar10"),
             Option("--data-dir", "data_dir", "CIFAR-10 Python batches"),
             Option("--steps", "train.steps", "training steps"),
             Option("--seeds", "seeds", "seeds per n"),
             Option("--device", "device", "cpu, cuda or auto")),
    summary=summarize_memorization, total=lambda config: config.train.steps, resources=memorization_resources)
