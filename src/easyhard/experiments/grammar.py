"""Biased generalisation on a hierarchical grammar with an exact oracle (docs/theory/generalization.md
sections 8-10 and 12; the grammar and its belief-propagation denoiser: docs/theory/grammar.md).

For every seed and training-set size n, K disjoint splits of n sequences are drawn from one random grammar,
and one transformer x0-predictor is trained per split; ``twins`` further models train on splits 0..twins-1
with other initial weights and batches, so that a same-split pair measures how much two models of the *same*
data disagree (the floor of the cross-split statistic). All models of all seeds and sizes form one ensemble
(:class:`~easyhard.models.EnsembleTransformer`), member (seed, n, model), trained in one loop on the token
cross-entropy, and evaluated through an exponential moving average of their weights.

At every checkpoint, with inputs and noise fixed across checkpoints and models:

- D_k = KL(BP_k || p_theta) at the critical index t_c on held-out and on own-training inputs, for every
  factorisation level k (BP_0 is the exact posterior, so D_0 is the excess test loss at t_c);
- the symmetrised KL between the two models of every pair (cross-split and same-split) on the held-out inputs;
- the cross-entropy at t_c (against BP's), and the loss decomposition l = l* + l~ at a fixed index;
- samples from the coupled ancestral sampler (shared x_T and per-step noise): grammaticality, exact copies of the
  model's own training sequences, the nearest-neighbour Hamming distances to the own split and their divergence
  from the held-out data's (NN-divergence);
- U-turns: own training and held-out sequences noised to small indices and denoised back by the model and by BP
  with the same sampler noise; the overlap ratio r = overlap_model / overlap_BP.

Analysis per seed and n (:mod:`easyhard.metrics.ordering`): tau_split = minimum of the cross-split KL among the
checkpoints where D_0 has fallen ``gate`` of the way to its minimum, tau_D0 = minimum of D_0, each with a bootstrap
interval (two-way: models or pairs, and inputs); the ordering is decided by the curves between the markers (the
cross-split KL at tau_D0 above its minimum and D_0 at tau_split above its minimum, each by more than ``z`` bootstrap
SE), and the cross-minus-same-split gap must grow from tau_split to tau_D0 (same-split control). tau_NN is the
minimum of the NN-divergence.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from easyhard._io import CorruptedFile, atomic_write_json, json_sha256, load_tensors, save_tensors
from easyhard._validate import (ConfigError, check_choice, check_device, check_int_at_least, check_int_in,
                                check_nonnegative, check_seed, check_workers)
from easyhard.diffusion import DDPMSchedule
from easyhard.diffusion.samplers import SamplerNoise
from easyhard.diffusion.sequences import sample_sequences
from easyhard.experiments.registry import Experiment, Option, RunContext
from easyhard.train.ensemble import EnsembleTrainConfig, Splits
from easyhard.train.finite import RESTART_HINT, STATE_FILE

RECORDS_FILE = "records.pt"


@dataclass(frozen=True)
class GrammarConfig:
    """Settings of ``reproduce grammar``; defaults: the CPU demonstration of docs/theory/generalization.md section 12.

    Grammar (docs/theory/grammar.md section 1.1): depth, q, q_eff, sigma, grammar_seed. Data: for each of ``seeds``
    repetitions and each n in ``ns``, ``splits`` disjoint training splits of n sequences, plus ``twins`` models
    trained on splits 0..twins-1 (same-split control); ``n_test`` held-out sequences unseen in every split, each
    noised ``reps`` times. Model: the transformer of :class:`~easyhard.models.SequenceTransformerConfig`. Training:
    ``train`` (token cross-entropy, EMA of the weights). Schedule: linear, T steps from beta_start to beta_end, step
    indices 1..T (docs/theory/generalization.md section 1). Evaluation: ``critical_index`` t_c for D_k and the
    split KL; ``decomposition_index`` for l = l* + l~; ``samples`` sequences per model and checkpoint from the
    coupled ancestral sampler with ``sample_steps`` steps; U-turns from ``uturn_indices`` with ``uturn_steps`` steps
    on ``uturn_inputs`` own and held-out sequences; the curve KL(BP_0 || BP_k)(t) on ``kl_levels`` indices and
    ``kl_sequences`` sequences. Analysis: ``gate`` (fraction of D_0's fall before tau_split may be placed), ``z``
    (standard errors a gap must exceed), ``n_boot`` bootstrap replicates.
    """

    depth: int = 3
    q: int = 6
    q_eff: int = 4
    sigma: float = 1.0
    grammar_seed: int = 0
    data_seed: int = 1
    ns: tuple[int, ...] = (128,)
    splits: int = 4
    twins: int = 2
    seeds: int = 3
    n_test: int = 500
    reps: int = 2
    train_inputs: int = 128
    d_model: int = 64
    heads: int = 4
    layers: int = 2
    ff: int = 128
    time_dim: int = 32
    norm: str = "pre"
    dropout: float = 0.0
    train: EnsembleTrainConfig = field(default_factory=lambda: EnsembleTrainConfig(
        steps=5000, batch_size=64, lr=1e-3, checkpoints=22, first=20, batches="random", ema_decay=0.99,
        ema_warmup=True))
    T: int = 500
    beta_start: float = 2e-4
    beta_end: float = 0.04
    critical_index: int = 75
    decomposition_index: int = 150
    samples: int = 128
    sample_steps: int = 20
    uturn_inputs: int = 64
    uturn_indices: tuple[int, ...] = (25, 60)
    uturn_steps: int = 4
    kl_levels: int = 24
    kl_sequences: int = 400
    gate: float = 0.75
    z: float = 3.0
    n_boot: int = 1000
    device: str = "cpu"
    threads: int = 2

    def __post_init__(self) -> None:
        if isinstance(self.train, dict):
            object.__setattr__(self, "train", EnsembleTrainConfig(**self.train))
        check_int_in("depth", self.depth, 1, 10)
        check_int_in("q", self.q, 2, 64)
        check_int_in("q_eff", self.q_eff, 1, self.q)
        check_nonnegative("sigma", self.sigma)
        check_seed("grammar_seed", self.grammar_seed)
        check_seed("data_seed", self.data_seed)
        if not self.ns or list(self.ns) != sorted(set(self.ns)) or any(int(n) < 2 for n in self.ns):
            raise ConfigError(f"ns must be increasing sizes >= 2 (got {self.ns})")
        check_int_in("splits", self.splits, 2, 64)
        check_int_in("twins", self.twins, 0, self.splits)
        for name in ("seeds", "n_test", "reps", "train_inputs", "samples", "uturn_inputs", "kl_sequences"):
            check_int_at_least(name, getattr(self, name), 1)
        self.transformer(1)  # the network's own checks (d_model, heads, layers, ff, time_dim, norm, dropout)
        check_int_at_least("sample_steps", self.sample_steps, 2)
        check_int_at_least("uturn_steps", self.uturn_steps, 1)
        check_int_at_least("kl_levels", self.kl_levels, 2)
        check_int_in("T", self.T, 2, 100_000)
        if not 0 < self.beta_start <= self.beta_end < 1:
            raise ConfigError(f"beta_start and beta_end must satisfy 0 < beta_start <= beta_end < 1 "
                              f"(got {self.beta_start}, {self.beta_end})")
        check_int_in("critical_index", self.critical_index, 1, self.T)
        check_int_in("decomposition_index", self.decomposition_index, 1, self.T)
        if not self.uturn_indices or any(not isinstance(i, int) or not 1 <= i <= self.T for i in self.uturn_indices):
            raise ConfigError(f"uturn_indices must be step indices in [1, {self.T}] (got {self.uturn_indices})")
        if not 0 < self.gate < 1:
            raise ConfigError(f"gate must lie in (0, 1) (got {self.gate})")
        if not 0 < self.z <= 100:
            raise ConfigError(f"z must lie in (0, 100] (got {self.z})")
        check_int_in("n_boot", self.n_boot, 10, 1_000_000)
        check_device("device", self.device)
        check_workers("threads", self.threads)
        if self.train.ema_decay is None:
            raise ConfigError("train.ema_decay must be set: the models are evaluated through an EMA of their "
                              "weights (docs/theory/generalization.md section 12)")

    @property
    def models(self) -> int:
        """Models per (seed, n): the splits and the twins."""
        return self.splits + self.twins

    @property
    def members(self) -> int:
        return self.seeds * len(self.ns) * self.models

    @property
    def length(self) -> int:
        return 2 ** self.depth

    def transformer(self, members: int):
        """The :class:`~easyhard.models.SequenceTransformerConfig` of an ensemble of ``members`` networks."""
        from easyhard.models.transformer import SequenceTransformerConfig

        return SequenceTransformerConfig(members=members, length=self.length, q=self.q, d_model=self.d_model,
                                         heads=self.heads, layers=self.layers, ff=self.ff, time_dim=self.time_dim,
                                         norm=self.norm, dropout=self.dropout)

    def member(self, seed: int, n_pos: int, model: int) -> int:
        """Ensemble index of (seed, position of n in ns, model)."""
        return (seed * len(self.ns) + n_pos) * self.models + model

    def cross_pairs(self) -> list[tuple[int, int]]:
        """Model pairs trained on different splits (models 0..splits-1)."""
        return list(itertools.combinations(range(self.splits), 2))

    def same_pairs(self) -> list[tuple[int, int]]:
        """Model pairs trained on the same split (model m and its twin splits + m)."""
        return [(m, self.splits + m) for m in range(self.twins)]

    def schedule(self) -> DDPMSchedule:
        return DDPMSchedule(T=self.T, beta_start=self.beta_start, beta_end=self.beta_end, index_base=1)

    def to_dict(self) -> dict:
        return asdict(self)


QUICK = GrammarConfig()
SMOKE = GrammarConfig(ns=(16, 32), seeds=2, splits=2, twins=1, n_test=48, reps=1, train_inputs=16, d_model=16,
                      heads=2, layers=1, ff=32, samples=32, sample_steps=4, uturn_inputs=16, uturn_steps=2,
                      kl_levels=4, kl_sequences=32, n_boot=50, threads=1,
                      train=EnsembleTrainConfig(steps=60, batch_size=16, lr=1e-3, checkpoints=5, first=10,
                                                batches="random", ema_decay=0.9, ema_warmup=True))


def profile(name: str) -> GrammarConfig:
    """The named settings: "quick" (CPU demonstration, section 12), "smoke" (tests) or "full" (one GPU: the
    section 8.5 transformer at n in {5k, 12k, 70k})."""
    check_choice("profile", name, ("quick", "smoke", "full"))
    if name == "full":
        return GrammarConfig(depth=4, ns=(5000, 12000, 70000), seeds=1, n_test=3000, reps=5, train_inputs=3000,
                             d_model=512, heads=4, layers=8, ff=1024, norm="post", dropout=0.1,
                             samples=2000, sample_steps=100, uturn_inputs=1000,
                             uturn_indices=(5, 15, 25, 42, 60), uturn_steps=20, kl_sequences=2000, kl_levels=50,
                             device="auto",
                             train=EnsembleTrainConfig(steps=200_000, batch_size=512, lr=3e-4, checkpoints=25,
                                                       first=1000, batches="random", ema_decay=0.999, ema_warmup=True,
                                                       lr_schedule="sequences", lr_warm=5000))
    return QUICK if name == "quick" else SMOKE


# ================================================================================================= data
@dataclass(frozen=True)
class Problem:
    """The grammar, every member's training split (E, n_max, L) int64 with counts, and the held-out test set."""

    grammar: object
    splits: Splits
    test: Tensor


def make_problem(config: GrammarConfig) -> Problem:
    """The grammar of ``grammar_seed`` and, from ``data_seed``, the splits of every (seed, n) (disjoint draws) and
    the held-out set (unseen in every split: :meth:`~easyhard.data.HierarchicalGrammar.draw_splits`); a twin
    gets its split's sequences."""
    from easyhard.data.grammar import HierarchicalGrammar

    grammar = HierarchicalGrammar.create(config.depth, config.q, config.q_eff, config.sigma, config.grammar_seed)
    sizes = [n for _ in range(config.seeds) for n in config.ns for _ in range(config.splits)]
    drawn, test = grammar.draw_splits(sizes, config.n_test, torch.Generator().manual_seed(config.data_seed))
    members = []
    for group in range(config.seeds * len(config.ns)):
        own = drawn[group * config.splits:(group + 1) * config.splits]
        members += own + own[:config.twins]
    return Problem(grammar, Splits.stack(members), test)


# =========================================================================================== evaluation
@dataclass(frozen=True)
class Probe:
    """Fixed evaluation inputs (common random numbers for every checkpoint and model).

    test_x0 (Nt*reps, L): held-out sequences, each repeated ``reps`` times; test_xt (Nt*reps, L, q) their noising at
    t_c; test_bp (K+1, Nt*reps, L, q): BP_k posteriors there (k = 0..depth); train_xt (E, R, L, q) with train_bp
    (E, R, L, q): each member's own sequences at t_c; dec_*: the same at ``decomposition_index`` (test_x0 once,
    own sequences); sampler: the coupled sampler's noise; nn_reference (E, Nt): the held-out sequences'
    nearest-neighbour Hamming distances to each member's own split (the data baseline); uturn_*: per U-turn index, the noised
    inputs, the sampler noise, BP's overlaps.
    """

    test_x0: Tensor
    test_xt: Tensor
    test_bp: Tensor
    train_x0: Tensor
    train_xt: Tensor
    train_bp: Tensor
    dec_test_xt: Tensor
    dec_test_bp: Tensor
    dec_train_xt: Tensor
    dec_train_bp: Tensor
    sampler: SamplerNoise
    nn_reference: Tensor
    uturn_train_x0: Tensor
    uturn_test_x0: Tensor
    uturn_train_xt: list[Tensor]
    uturn_test_xt: list[Tensor]
    uturn_noise: list[int]
    uturn_bp_train: Tensor
    uturn_bp_test: Tensor


def _noised(schedule: DDPMSchedule, x0: Tensor, q: int, index: int, generator: torch.Generator) -> Tensor:
    """x_t = sqrt(abar) e(x0) + sqrt(1 - abar) eps at step ``index`` for sequences x0 (..., L), drawn in float64 by
    :meth:`~easyhard.diffusion.DDPMSchedule.add_noise`: (..., L, q) float32."""
    return schedule.add_noise(torch.nn.functional.one_hot(x0, q).double(), index, generator)[0].float()


def _bp(grammar, x_t: Tensor, abar: float, k: int = 0, chunk: int = 4096) -> Tensor:
    """BP_k posteriors of x_t (..., L, q), float32, evaluated in float64 ``chunk`` sequences at a time."""
    from easyhard.oracles.grammar_bp import BeliefPropagationDenoiser

    bp = BeliefPropagationDenoiser(grammar, factorised=k)
    flat = x_t.reshape(-1, *x_t.shape[-2:]).double()
    return torch.cat([bp(flat[i:i + chunk], abar) for i in range(0, len(flat), chunk)]).float().reshape(x_t.shape)


def _own(splits: Splits, count: int) -> Tensor:
    """(E, count, L): each member's own sequences, cycled through its split."""
    idx = torch.arange(count)
    return torch.stack([splits.data[e, idx % splits.counts[e]] for e in range(len(splits.counts))])


def make_probe(config: GrammarConfig, problem: Problem, schedule: DDPMSchedule) -> Probe:
    """Build the fixed inputs and everything BP gives once (module docstring)."""
    from easyhard.metrics.sequences import hamming_nearest, uturn_overlap
    from easyhard.oracles.grammar_bp import BeliefPropagationDenoiser

    g, q, L = problem.grammar, config.q, config.length
    gen = torch.Generator().manual_seed(config.data_seed + 11)
    abar_c = float(schedule.alpha_bar(config.critical_index))
    test_x0 = problem.test.repeat_interleave(config.reps, 0)
    test_xt = _noised(schedule, test_x0, q, config.critical_index, gen)
    test_bp = torch.stack([_bp(g, test_xt, abar_c, k) for k in range(config.depth + 1)])
    train_x0 = _own(problem.splits, config.train_inputs)
    train_xt = _noised(schedule, train_x0, q, config.critical_index, gen)
    abar_d = float(schedule.alpha_bar(config.decomposition_index))
    dec_test_xt = _noised(schedule, problem.test, q, config.decomposition_index, gen)
    dec_train_xt = _noised(schedule, train_x0, q, config.decomposition_index, gen)
    sampler = SamplerNoise.draw((config.samples, L, q), gen)
    E = len(problem.splits.counts)
    ref = torch.stack([hamming_nearest(problem.test, problem.splits.data[e, :int(problem.splits.counts[e])])
                       for e in range(E)])
    u_train = _own(problem.splits, config.uturn_inputs)
    u_test = problem.test[:config.uturn_inputs]
    bp = BeliefPropagationDenoiser(g)
    u_train_xt, u_test_xt, u_noise, bp_train, bp_test = [], [], [], [], []
    for index in config.uturn_indices:
        xt_tr, xt_te = _noised(schedule, u_train, q, index, gen), _noised(schedule, u_test, q, index, gen)
        seed = int(torch.randint(0, 2**62, (1,), generator=gen))
        u_train_xt.append(xt_tr)
        u_test_xt.append(xt_te)
        u_noise.append(seed)
        flat = xt_tr.reshape(-1, L, q).double()
        back_tr = sample_sequences(bp, schedule, tuple(flat.shape), config.uturn_steps,
                                   noise=SamplerNoise(flat, seed), start=index)
        back_te = sample_sequences(bp, schedule, tuple(xt_te.shape), config.uturn_steps,
                                   noise=SamplerNoise(xt_te.double(), seed), start=index)
        bp_train.append(uturn_overlap(back_tr.reshape(u_train.shape), u_train))
        bp_test.append(uturn_overlap(back_te, u_test))
    return Probe(test_x0, test_xt, test_bp, train_x0, train_xt, _bp(g, train_xt, abar_c),
                 dec_test_xt, _bp(g, dec_test_xt, abar_d), dec_train_xt, _bp(g, dec_train_xt, abar_d), sampler,
                 ref, u_train, u_test, u_train_xt, u_test_xt, u_noise,
                 torch.stack(bp_train, -1), torch.stack(bp_test, -1))


def _log_probs(model: torch.nn.Module, x_t: Tensor, index: int, chunk: int = 1000) -> Tensor:
    """log p_theta (E, N, L, q) at step ``index`` of x_t (1, N, L, q), inputs shared by every member, or (E, N, L, q),
    member e on its own inputs x_t[e]; ``chunk`` inputs at a time."""
    E = model.config.members
    out = []
    for start in range(0, x_t.shape[1], chunk):
        part = x_t[:, start:start + chunk].expand(E, -1, -1, -1)
        out.append(torch.log_softmax(model.logits(part, index), -1))
    return torch.cat(out, 1)


@torch.no_grad()
def evaluate(model: torch.nn.Module, config: GrammarConfig, problem: Problem, probe: Probe,
             schedule: DDPMSchedule) -> dict[str, Tensor]:
    """Every measurement of one checkpoint (module docstring), each a function of :mod:`easyhard.metrics.sequences`
    applied with a leading member axis; shapes in :func:`record_shapes`."""
    from easyhard.metrics.sequences import (distance_histogram, exact_copies, hamming_nearest, loss_decomposition,
                                            nn_divergence, pairwise_kl, sequence_kl, uturn_overlap,
                                            uturn_ratio)

    model.eval()
    E, S, N, M, L = config.members, config.seeds, len(config.ns), config.models, config.length
    Nt, R = config.n_test, config.reps
    out: dict[str, Tensor] = {}
    logp = _log_probs(model, probe.test_xt[None], config.critical_index)  # (E, Nt*R, L, q)
    p = logp.exp()
    d_test = torch.stack([sequence_kl(probe.test_bp[k], p) for k in range(config.depth + 1)], 1)  # (E, K+1, Nt*R)
    out["D_test"] = d_test.mean(-1)
    out["D0_units"] = d_test[:, 0].reshape(E, Nt, R).mean(-1)
    x0_onehot = torch.nn.functional.one_hot(probe.test_x0, config.q).float()
    out["ce_test"] = -(x0_onehot * logp).sum((-1, -2)).mean(-1)
    logp_train = _log_probs(model, probe.train_xt, config.critical_index)
    out["D0_train"] = sequence_kl(probe.train_bp, logp_train.exp()).mean(-1)
    # cross- and same-split symmetrised KL per pair and held-out sequence
    pairs = config.cross_pairs() + config.same_pairs()
    pair_kl = []
    for group in range(S * N):
        base = group * M
        pair_kl.append(pairwise_kl(p[base:base + M], pairs).reshape(len(pairs), Nt, R).mean(-1))
    out["pair_kl"] = torch.stack(pair_kl).reshape(S, N, len(pairs), Nt)
    # loss decomposition at a fixed index, held-out and own sequences
    dec_test = loss_decomposition(_log_probs(model, probe.dec_test_xt[None], config.decomposition_index),
                                  problem.test.to(probe.dec_test_bp.device), probe.dec_test_bp)
    dec_train = loss_decomposition(_log_probs(model, probe.dec_train_xt, config.decomposition_index),
                                   probe.train_x0, probe.dec_train_bp)
    out["decomposition"] = torch.stack([torch.stack([d[k].mean(-1) for k in ("l", "l_star", "l_tilde")], -1)
                                        for d in (dec_test, dec_train)], 1)  # (E, 2, 3)
    out["l_tilde_test_se"] = dec_test["l_tilde"].std(-1) / math.sqrt(dec_test["l_tilde"].shape[-1])
    # samples of the coupled sampler
    tokens = sample_sequences(model, schedule, (E, config.samples, L, config.q), config.sample_steps,
                              noise=probe.sampler)
    own = [problem.splits.data[e, :int(problem.splits.counts[e])].to(tokens.device) for e in range(E)]
    nearest = torch.stack([hamming_nearest(tokens[e], own[e]) for e in range(E)])  # (E, samples)
    out["grammatical"] = problem.grammar.is_grammatical(tokens.reshape(-1, L)).reshape(E, -1).double().mean(-1)
    out["copies"] = torch.stack([exact_copies(tokens[e], own[e]).double().mean() for e in range(E)])
    out["nn_mean"] = nearest.double().mean(-1)
    out["nn_hist"] = torch.stack([distance_histogram(d, L) for d in nearest])
    out["nn_div"] = torch.tensor([nn_divergence(nearest[e], probe.nn_reference[e], L) for e in range(E)])
    # U-turns: own and held-out sequences noised to small indices and denoised back, overlap relative to BP's
    ratios = []
    for j, index in enumerate(config.uturn_indices):
        seed = probe.uturn_noise[j]
        back_tr = sample_sequences(model, schedule, tuple(probe.uturn_train_xt[j].shape), config.uturn_steps,
                                   noise=SamplerNoise(probe.uturn_train_xt[j], seed), start=index)
        back_te = sample_sequences(model, schedule, (E, *probe.uturn_test_xt[j].shape), config.uturn_steps,
                                   noise=SamplerNoise(probe.uturn_test_xt[j], seed), start=index)
        r_train, _ = uturn_ratio(uturn_overlap(back_tr, probe.uturn_train_x0), probe.uturn_bp_train[..., j])
        r_test, _ = uturn_ratio(uturn_overlap(back_te, probe.uturn_test_x0), probe.uturn_bp_test[..., j])
        ratios.append(torch.stack([r_train, r_test], -1))
    out["uturn"] = torch.stack(ratios, 1)  # (E, len(uturn_indices), 2): train, test
    model.train()
    return {k: v.double().cpu() for k, v in out.items()}



# ============================================================================================ running
RECORDS_KIND = "grammar-records"


def record_shapes(config: GrammarConfig) -> dict[str, tuple[int, ...]]:
    """The measurements of one checkpoint (:func:`evaluate`) and their shapes: the schema of records.pt."""
    E, S, N, L = config.members, config.seeds, len(config.ns), config.length
    pairs = len(config.cross_pairs()) + len(config.same_pairs())
    return {"D_test": (E, config.depth + 1), "D0_units": (E, config.n_test), "ce_test": (E,), "D0_train": (E,),
            "pair_kl": (S, N, pairs, config.n_test), "decomposition": (E, 2, 3), "l_tilde_test_se": (E,),
            "grammatical": (E,), "copies": (E,), "nn_mean": (E,), "nn_hist": (E, L + 1), "nn_div": (E,),
            "uturn": (E, len(config.uturn_indices), 2)}


def _write_records(path: Path, records: list[dict], config_hash: str) -> None:
    """records.pt: every checkpoint's measurements stacked on a leading checkpoint axis, a checksummed tensor file
    of this config (:func:`~easyhard._io.save_tensors`)."""
    tensors = {"step": torch.tensor([r["step"] for r in records])}
    tensors.update({k: torch.stack([r[k] for r in records]) for k in records[0] if k != "step"})
    save_tensors(path, tensors, {"kind": RECORDS_KIND, "config_hash": config_hash})


def _read_records(path: Path, config: GrammarConfig, config_hash: str, done: int) -> list[dict]:
    """The records of the checkpoints up to the saved step ``done``, verified (checksum, kind, config, the
    checkpoint steps, the schema of :func:`record_shapes`, finite values); CorruptedFile naming ``path`` otherwise."""
    if not path.exists():
        raise CorruptedFile(path, f"missing while {STATE_FILE} exists", RESTART_HINT)
    tensors, meta = load_tensors(path, RESTART_HINT)
    if meta.get("kind") != RECORDS_KIND or meta.get("config_hash") != config_hash:
        raise CorruptedFile(path, "it holds the records of another run", RESTART_HINT)
    shapes = record_shapes(config)
    if set(tensors) != {"step", *shapes} or not all(isinstance(v, Tensor) for v in tensors.values()):
        raise CorruptedFile(path, "it holds other measurements", RESTART_HINT)
    steps = tensors["step"].tolist()
    expected = [c for c in config.train.checkpoint_steps() if c <= done]
    if steps[:len(expected)] != expected:
        raise CorruptedFile(path, f"its steps are not the checkpoints up to step {done}", RESTART_HINT)
    for name, shape in shapes.items():
        value = tensors[name]
        if tuple(value.shape) != (len(steps), *shape) or value.dtype != torch.float64:
            raise CorruptedFile(path, f"{name} is not float64 of shape {(len(steps), *shape)}", RESTART_HINT)
        if not bool(torch.isfinite(value).all()):
            raise CorruptedFile(path, f"{name} holds a non-finite value", RESTART_HINT)
    return [{"step": s, **{k: tensors[k][c] for k in shapes}} for c, s in enumerate(expected)]


def run_grammar(config: GrammarConfig, out_dir: str | Path, progress: Callable[[int], None] | None = None,
                restart: bool = False) -> dict:
    """Train the ensemble with the measurements of :func:`evaluate` at every checkpoint, then :func:`analyse`.

    Output folder: config.json, records.pt (rewritten atomically after each checkpoint) and the training state. A
    rerun with the same config verifies them and resumes from the last checkpoint (its results equal those of an
    uninterrupted run); a file that cannot be used is a CorruptedFile naming it, or, with ``restart``, the saved run
    is deleted and training starts over.
    """
    from easyhard.models.transformer import EnsembleTransformer
    from easyhard.train.ensemble import train_ensemble
    from easyhard.train.finite import check_state
    from easyhard.train.finite import sequence_loss

    torch.set_num_threads(config.threads)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config_json = json.loads(json.dumps(config.to_dict()))
    config_hash = json_sha256(config_json)
    schedule = config.schedule()
    problem = make_problem(config)
    device = torch.device(config.device)
    model = EnsembleTransformer(config.transformer(config.members), torch.Generator().manual_seed(config.train.seed + 1))
    records: list[dict] = []
    resume = (out / STATE_FILE).exists()
    done = 0
    if resume:
        try:
            if json.loads((out / "config.json").read_text()) != config_json:
                raise CorruptedFile(out / "config.json", "it holds a run with another config",
                                    f"use a new --out, or {RESTART_HINT}")
            done = check_state(out / STATE_FILE, model, config.train.loop(device))
            records = _read_records(out / RECORDS_FILE, config, config_hash, done)
        except (CorruptedFile, OSError, ValueError) as err:
            if not restart:
                if isinstance(err, CorruptedFile):
                    raise
                raise CorruptedFile(out / "config.json", f"{type(err).__name__}: {err}", RESTART_HINT) from None
            for name in ("config.json", RECORDS_FILE, STATE_FILE):
                (out / name).unlink(missing_ok=True)
            resume, records, done = False, [], 0
    atomic_write_json(out / "config.json", config_json)
    probe = make_probe(config, problem, schedule)
    bp_reference = _bp_reference(config, problem, probe, schedule)
    splits = Splits(problem.splits.data.to(device), problem.splits.counts.to(device))
    probe_dev = _to(probe, device)

    def on_checkpoint(step: int, net: torch.nn.Module) -> None:
        records[:] = [r for r in records if r["step"] < step]
        records.append({"step": step, **evaluate(net, config, problem, probe_dev, schedule)})
        bad = next((k for k, v in records[-1].items() if k != "step" and not bool(torch.isfinite(v).all())), None)
        if bad is not None:
            from easyhard.train.divergence import DivergenceError
            raise DivergenceError(f"measurement {bad} is not finite at step {step}: the training diverged")
        _write_records(out / RECORDS_FILE, records, config_hash)

    if progress is not None and done:
        progress(done)
    if done < config.train.steps:
        train_ensemble(model, splits, schedule, config.train, out, resume=resume, on_checkpoint=on_checkpoint,
                       progress=progress, loss=sequence_loss)
    return analyse(config, records, bp_reference)


def _to(probe: Probe, device: torch.device) -> Probe:
    """The probe with every tensor (and sampler noise) on ``device``."""
    moved = {}
    for name in probe.__dataclass_fields__:
        value = getattr(probe, name)
        if isinstance(value, Tensor):
            value = value.to(device)
        elif isinstance(value, SamplerNoise):
            value = value.to(device)
        elif isinstance(value, list) and value and isinstance(value[0], Tensor):
            value = [v.to(device) for v in value]
        moved[name] = value
    return Probe(**moved)


def _bp_reference(config: GrammarConfig, problem: Problem, probe: Probe, schedule: DDPMSchedule) -> dict:
    """What the exact denoiser gives once: its cross-entropy at t_c on the held-out inputs, the grammaticality of its
    samples (the coupled sampler with the models' noise), the held-out data's mean nearest-neighbour distance to each
    member's split (the data baseline) and the curves KL(BP_0 || BP_k)(t) (docs/theory/generalization.md section 9; docs/theory/grammar.md section 1.6)."""
    from easyhard.oracles.grammar_bp import BeliefPropagationDenoiser, factorisation_kl

    g, L = problem.grammar, config.length
    x0 = torch.nn.functional.one_hot(probe.test_x0, config.q).float()
    bp_ce = float(-(x0 * probe.test_bp[0].clamp_min(1e-30).log()).sum((-1, -2)).mean())
    tokens = sample_sequences(BeliefPropagationDenoiser(g), schedule, (config.samples, L, config.q),
                              config.sample_steps, noise=SamplerNoise(probe.sampler.initial.double(),
                                                                      probe.sampler.step_seed))
    levels = np.unique(np.rint(np.geomspace(1, config.T, config.kl_levels)).astype(int)).tolist()
    curves = factorisation_kl(g, schedule, list(range(1, config.depth + 1)), levels, config.kl_sequences,
                              torch.Generator().manual_seed(config.data_seed + 23))
    return {"ce_test": bp_ce, "grammatical": float(g.is_grammatical(tokens).double().mean()),
            "data_nn_mean": probe.nn_reference.double().mean(-1).tolist(),
            "kl_levels": levels, "kl_curves": torch.as_tensor(curves).tolist()}


# ============================================================================================ analysis
def analyse(config: GrammarConfig, records: list[dict], bp: dict) -> dict:
    """Markers, intervals and the ordering verdicts per seed and n (module docstring) from the per-checkpoint
    records, with the BP references ``bp`` of :func:`_bp_reference`."""
    from easyhard.metrics.ordering import locate, paired_difference, phase_ordering

    if len(records) < 3:
        raise ConfigError(f"the analysis needs at least three checkpoints (got {len(records)})")
    S, N, M, K = config.seeds, len(config.ns), config.models, config.splits
    steps = np.array([r["step"] for r in records])
    arr = {k: torch.stack([r[k] for r in records]).numpy() for k in records[0] if k != "step"}  # leading axis C
    n_cross = len(config.cross_pairs())

    def per_group(x: np.ndarray) -> np.ndarray:
        """(C, E, ...) -> (S, N, M, ..., C)."""
        return np.moveaxis(x, 0, -1).reshape(S, N, M, *x.shape[2:], len(steps))

    D = per_group(arr["D_test"])  # (S, N, M, K+1, C)
    D0_units = per_group(arr["D0_units"])  # (S, N, M, Nt, C)
    pair_kl = np.moveaxis(arr["pair_kl"], 0, -1)  # (S, N, P, Nt, C)
    nn_div = per_group(arr["nn_div"])  # (S, N, M, C)
    uturn = per_group(arr["uturn"])  # (S, N, M, U, 2, C)
    per_seed = []
    for s, j in itertools.product(range(S), range(N)):
        seed = config.data_seed * 1000 + s * N + j
        d0 = D0_units[s, j, :K]  # primary models x inputs
        cross, same = pair_kl[s, j, :n_cross], pair_kl[s, j, n_cross:]
        d0_mean = d0.mean((0, 1))
        eligible = (d0_mean[0] - d0_mean) >= config.gate * (d0_mean[0] - d0_mean.min())
        order = phase_ordering(steps, cross, d0, early_maximum=False, late_maximum=False, z=config.z,
                               eligible=eligible, n_boot=config.n_boot, seed=seed)
        cell = {"seed": s, "n": int(config.ns[j]),
                "ordering": {**order.to_dict(), "early_z": order.early_z, "late_z": order.late_z},
                "tau_split": order.early.step, "tau_D0": order.late.step,
                "window": math.log10(order.late.step / order.early.step),
                "window_interval": [math.log10(max(order.late.interval[0], 1) / order.early.interval[1]),
                                    math.log10(order.late.interval[1] / max(order.early.interval[0], 1))]}
        if len(same):
            gap = cross.mean(0) - same.mean(0)  # (Nt, C) cross minus same-split KL per input
            growth, se = paired_difference(gap, order.late.position, order.early.position, config.n_boot, seed)
            z = growth / se if se > 0 else (math.inf if growth > 0 else 0.0)
            cell["gap_growth"] = {"value": growth, "se": se, "z": float(z),
                                  "at_split": float(gap[:, order.early.position].mean()),
                                  "at_D0": float(gap[:, order.late.position].mean())}
        nn_marker = locate(steps, nn_div[s, j, :K], maximum=False, n_boot=config.n_boot, seed=seed)
        cell["tau_NN"] = nn_marker.to_dict()
        cell["D_k_minima"] = [int(steps[int(np.argmin(D[s, j, :K, k].mean(0)))]) for k in range(config.depth + 1)]
        u = uturn[s, j, :K]  # (K, U, 2, C)
        cell["uturn_gap"] = {name: (u[:, :, 0, pos] - u[:, :, 1, pos]).mean(0).tolist()
                             for name, pos in (("at_tau_NN", nn_marker.position), ("at_tau_D0", order.late.position))}
        per_seed.append(cell)
    ce = arr["ce_test"]
    tilde = arr["decomposition"][:, :, 0, 2]  # (C, E) test l~
    tilde_z = np.abs(tilde) / np.maximum(arr["l_tilde_test_se"], 1e-300)
    result = {
        "steps": steps.tolist(), "ns": list(config.ns), "cells": per_seed,
        "D_test": np.median(D[:, :, :K], 2).tolist(),  # (S, N, K+1, C)
        "D0_train": np.median(per_group(arr["D0_train"])[:, :, :K], 2).tolist(),
        "cross_kl": pair_kl[:, :, :n_cross].mean((2, 3)).tolist(), "same_kl": pair_kl[:, :, n_cross:].mean((2, 3)).tolist(),
        "nn_div": np.median(nn_div[:, :, :K], 2).tolist(), "nn_mean": np.median(per_group(arr["nn_mean"])[:, :, :K], 2).tolist(),
        "nn_hist": per_group(arr["nn_hist"])[:, :, 0].tolist(),
        "grammatical": np.median(per_group(arr["grammatical"]), 2).tolist(),
        "copies": np.median(per_group(arr["copies"]), 2).tolist(),
        "uturn": np.moveaxis(uturn[:, :, :K].mean(2), -1, 2).tolist(),  # (S, N, C, U, 2)
        "decomposition": np.median(per_group(arr["decomposition"]), 2).tolist(),  # (S, N, 2, 3, C)
        "bp": bp, "model_ce_min": float(ce.min()),
        "l_tilde_test_max_z": float(tilde_z.max()),
        "data_nn_mean": np.array(bp["data_nn_mean"]).reshape(S, N, M)[:, :, 0].tolist(),
    }
    result["checks"] = _checks(config, result)
    return result


def _checks(config: GrammarConfig, result: dict) -> dict:
    """The criteria of docs/theory/generalization.md section 12 (and G10), each {"value", "criterion", "passed"}."""
    cells = result["cells"]
    bp = result["bp"]
    checks = {
        "bp_samples_grammatical": (bp["grammatical"], "BP posterior samples 100% grammatical", bp["grammatical"] == 1.0),
        "bp_loss_below_models": ([bp["ce_test"], result["model_ce_min"]],
                                 "BP cross-entropy at t_c below every model's at every checkpoint",
                                 bp["ce_test"] < result["model_ce_min"]),
        "split_before_D0": ([[c["tau_split"], c["tau_D0"]] for c in cells],
                            "tau_split < tau_D0 in every seed and n", all(c["tau_split"] < c["tau_D0"] for c in cells)),
        "split_kl_rises": ([round(c["ordering"]["early_z"], 2) for c in cells],
                           f"cross-split KL at tau_D0 above its minimum by > {config.z:g} SE",
                           all(c["ordering"]["early_z"] > config.z for c in cells)),
        "D0_above_min_at_split": ([round(c["ordering"]["late_z"], 2) for c in cells],
                                  f"D_0 at tau_split above its minimum by > {config.z:g} SE",
                                  all(c["ordering"]["late_z"] > config.z for c in cells)),
    }
    if config.twins:
        z = [c["gap_growth"]["z"] for c in cells]
        checks["gap_grows"] = ([round(v, 2) for v in z], f"cross-minus-same-split KL grows from tau_split to tau_D0 "
                               f"by > {config.z:g} SE", all(v > config.z for v in z))
    return {k: {"value": v, "criterion": c, "passed": bool(p)} for k, (v, c, p) in checks.items()}


# ========================================================================================== experiment
def _run(config: GrammarConfig, ctx: RunContext | None = None) -> dict:
    """:func:`run_grammar` in ``ctx.out_dir / "grammar"``; the results carry the config."""
    ctx = ctx or RunContext()
    if ctx.out_dir is None:
        raise ConfigError("the grammar experiment needs an output folder for its training state")
    results = run_grammar(config, Path(ctx.out_dir) / "grammar", ctx.progress, ctx.restart)
    return {**results, "config": config.to_dict()}


def report_grammar(results: dict, out: Path) -> tuple[list[str], str]:
    """The grammar figures and the Markdown section (:mod:`easyhard.report.grammar`)."""
    from easyhard.report.grammar import plot_bp_kl, plot_nn, plot_ordering, plot_uturn, render_grammar

    figures = {"D_k and the split KL against training steps, with the markers and their intervals":
               plot_ordering(results, out / "grammar_ordering.png").name,
               "nearest-neighbour Hamming distances of samples against the data baseline":
               plot_nn(results, out / "grammar_nn.png").name,
               "U-turn overlap ratios (model / BP), own and held-out sequences": plot_uturn(results, out / "grammar_uturn.png").name,
               "KL(BP_0 || BP_k) against the noise index": plot_bp_kl(results, out / "grammar_bp_kl.png").name}
    return list(figures.values()), render_grammar(results, figures)


def summarize_grammar(results: dict) -> list[str]:
    """Per seed and n the markers and verdicts; each check; whether all pass."""
    lines = []
    for c in results["cells"]:
        o = c["ordering"]
        lines.append(f"seed {c['seed']} n={c['n']}: tau_split {c['tau_split']} {tuple(o['early']['interval'])}, "
                     f"tau_D0 {c['tau_D0']} {tuple(o['late']['interval'])}, z {o['early_z']:.1f}/{o['late_z']:.1f}, "
                     f"window log10 {c['window']:.2f} [{c['window_interval'][0]:.2f}, {c['window_interval'][1]:.2f}]")
    lines += [f"{name}: {'pass' if check['passed'] else 'FAIL'} ({check['criterion']})"
              for name, check in results["checks"].items()]
    return lines + [f"grammar checks pass: {all(c['passed'] for c in results['checks'].values())}"]


def grammar_resources(config: GrammarConfig):
    """Training the ensemble (``members`` transformers, tokens = batch x L per step) plus, per checkpoint, the forward
    passes of the measurements (a forward pass a third of a training step); memory: weights, Adam and the fixed
    inputs with their BP posteriors."""
    from easyhard.experiments.resources import Resources, dense_training

    d, L = config.d_model, config.length
    params = (config.q + config.time_dim + L + config.q) * d + config.layers * (4 * d * d + 2 * d * config.ff)
    per_checkpoint = (config.n_test * config.reps * 2 + 2 * config.train_inputs + config.samples * config.sample_steps
                      + 2 * config.uturn_inputs * config.uturn_steps * len(config.uturn_indices)) / 3
    work = dense_training(params, L * (config.train.batch_size * config.train.steps
                                       + config.train.checkpoints * per_checkpoint), 1, config.members, config.device)
    inputs = 4.0 * config.q * L * (config.n_test * config.reps * (config.depth + 3) + 4 * config.members * config.train_inputs)
    activations = 4.0 * config.members * 1000 * L * max(config.ff, 4 * d) * config.layers
    return Resources(work.memory_bytes + inputs + activations, work.seconds)


GRAMMAR = Experiment(
    "grammar", GrammarConfig, _run,
    "biased generalisation on a hierarchical grammar: split KL minimum before the D_0 minimum, with intervals",
    profiles={name: functools.partial(profile, name) for name in ("smoke", "quick", "full")},
    report=report_grammar,
    options=(Option("--steps", "train.steps", "training steps"),
             Option("--seeds", "seeds", "seeds per n"),
             Option("--device", "device", "cpu, cuda or auto")),
    summary=summarize_grammar, total=lambda config: config.train.steps, resources=grammar_resources)
