"""The staircase experiment: online SGD of the tied single neuron on independent vs sign-coupled latents.

docs/theory/mcm.md section 7. With independent latents the covariance spike u is learned at ~ d log d
steps while the fourth-cumulant spike v stays at O(d^-1/2); with sign-coupled latents (nu = sign
lambda) the bilinear term c_11 alpha_u alpha_v pulls v along once u is learned, and w settles near
the population-loss minimiser on the unit circle of span(u, v). Every number in the results comes
from the runs; the theory supplies only the predicted fixed point and the oracle loss levels.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from easyhard._validate import (ConfigError, check_choice, check_device, check_distinct, check_int_at_least,
                                check_int_in, check_open_unit, check_positive)
from easyhard.data import MixedCumulantModel
from easyhard.experiments._text import fmt_num, parse_dims, text_table
from easyhard.experiments.registry import Experiment, Option, RunContext
from easyhard.metrics import aligned_fraction, sustained_recovery
from easyhard.models import Committee
from easyhard.oracles import per_direction_mse
from easyhard.theory import MCMSettings, NeuronSettings, SingleNeuron, circle_minimiser, constant_term, overlap_loss
from easyhard.train import OnlineSGDConfig, run_online_sgd

COUPLINGS = ("independent", "sign")


#: the largest base_seed: the member seeds derived from it (:func:`run_cell`) stay below 2^63
MAX_BASE_SEED = 2**40


@dataclass(frozen=True)
class StaircaseConfig:
    """Staircase settings; defaults are those of docs/theory/mcm.md section 7 (tanh, t = 0.5, beta_u = beta_v = 5, eta = 0.5/d, 40 d steps)."""

    dims: tuple[int, ...] = (64, 128)
    seeds: int = 16
    couplings: tuple[str, ...] = COUPLINGS
    mcm: MCMSettings = MCMSettings()
    neuron: NeuronSettings = NeuronSettings()
    delta: float = 0.5
    steps_per_d: int = 40
    threshold: float = 0.5
    v_threshold: float = 0.2
    v_window_per_d: float = 10.0
    base_seed: int = 0
    engine: str = "auto"
    device: str = "cpu"
    dtype: str = "float32"

    def __post_init__(self):
        if not self.dims:
            raise ConfigError("dims must hold at least one dimension d >= 8")
        for d in self.dims:
            check_int_at_least("dims", d, 8)
        check_distinct("dims", self.dims)
        check_distinct("couplings", self.couplings)
        check_int_at_least("seeds", self.seeds, 1)
        for c in self.couplings:
            check_choice("coupling", c, COUPLINGS)
        for name in ("delta", "v_window_per_d"):
            check_positive(name, getattr(self, name))
        check_int_at_least("steps_per_d", self.steps_per_d, 1)
        check_int_in("base_seed", self.base_seed, 0, MAX_BASE_SEED, "2^40",
                     "member seeds base_seed * 1000003 + ... stay below 2^63")
        for name in ("threshold", "v_threshold"):
            check_open_unit(name, getattr(self, name))
        self.sgd(self.dims[0], "cpu")  # the online-SGD settings the run derives are checked now, before any work
        check_device("device", self.device)

    def model(self, d: int, coupling: str) -> MixedCumulantModel:
        """The model in dimension d with latents coupled by ``coupling`` (each cell's, not ``mcm.coupling``)."""
        return replace(self.mcm, coupling=coupling).model(d)

    def single_neuron(self) -> SingleNeuron:
        return self.neuron.neuron(self.mcm)

    def sgd(self, d: int, device: str | None = None) -> OnlineSGDConfig:
        """The online-SGD settings of the cells in dimension ``d`` (on ``device``, default the config's)."""
        return OnlineSGDConfig(steps=self.steps_per_d * d, delta=self.delta, p=1.0, t=self.neuron.t,
                               thresholds=tuple(sorted({self.v_threshold, self.threshold})), engine=self.engine,
                               device=device or self.device, dtype=self.dtype)

    def total_member_steps(self) -> int:
        return len(self.couplings) * self.seeds * sum(self.steps_per_d * d for d in self.dims)


PROFILES = {
    "smoke": StaircaseConfig(dims=(16, 32), seeds=4, steps_per_d=10),
    "quick": StaircaseConfig(dims=(64, 128, 256), seeds=32),
    "full": StaircaseConfig(dims=(128, 256, 512, 1024), seeds=256, dtype="float32", device="auto"),
}


def oracle_levels(model: MixedCumulantModel, t: float, per_direction: dict | None = None) -> dict[str, float]:
    """Total x0-MSE (summed over the d dimensions) of the Bayes and of the Gaussian (Wiener) denoiser.

    Outside span(u, v) the data are isotropic N(0, 1) and both denoisers reach Delta per dimension;
    along u and v they reach the per-direction MSEs of :func:`easyhard.oracles.per_direction_mse`
    (pass them as ``per_direction`` to reuse them across d: they do not depend on d).
    """
    per = per_direction if per_direction is not None else per_direction_mse(model, t)
    bulk = (model.d - 2) * -math.expm1(-2 * t)
    return {"bayes": bulk + per["u"]["bayes"] + per["v"]["bayes"],
            "gaussian": bulk + per["u"]["linear"] + per["v"]["linear"]}


@dataclass(frozen=True)
class CouplingTheory:
    """The d-independent theory of one coupling: oracle MSEs along u, v, the circle minimiser and a
    polar table of E F_t(y) = L_t(w) - C_t (the part of the population loss that depends on w, and not on d).

    The staircase evaluates the population loss at every seed and record by linear interpolation in
    (radius, angle) on this table (21 x 73 quadratures) instead of one quadrature per point.
    """

    per_direction: dict
    minimiser: tuple[float, float] | None
    radii: np.ndarray
    angles: np.ndarray
    table: np.ndarray

    @classmethod
    def of(cls, config: StaircaseConfig, coupling: str) -> CouplingTheory:
        """The theory of ``coupling`` under ``config`` (cached: it depends only on the model and the neuron)."""
        return _coupling_theory(config.mcm, config.neuron, coupling)

    @classmethod
    def compute(cls, config: StaircaseConfig, coupling: str) -> CouplingTheory:
        model, neuron = config.model(8, coupling), config.single_neuron()
        radii = np.linspace(0.0, 1.0, 21)
        angles = np.linspace(0.0, 2 * math.pi, 73)
        rr, aa = np.meshgrid(radii, angles, indexing="ij")
        table = overlap_loss(model, neuron, torch.from_numpy(rr * np.cos(aa)), torch.from_numpy(rr * np.sin(aa)))
        return cls(per_direction_mse(model, config.neuron.t),
                   circle_minimiser(model, neuron) if coupling != "independent" else None,
                   radii, angles, table.numpy())

    def population_loss(self, model: MixedCumulantModel, neuron: SingleNeuron, alpha_u: np.ndarray,
                        alpha_v: np.ndarray) -> np.ndarray:
        """L_t(w) for overlaps of any shape, by interpolation on the table plus the exact C_t of ``model``."""
        from scipy.interpolate import RegularGridInterpolator

        interp = RegularGridInterpolator((self.radii, self.angles), self.table)
        radius = np.clip(np.hypot(alpha_u, alpha_v), 0.0, 1.0)
        angle = np.mod(np.arctan2(alpha_v, alpha_u), 2 * math.pi)
        return constant_term(model, neuron) + interp(np.stack([radius, angle], -1))


@functools.lru_cache(maxsize=16)
def _coupling_theory(mcm: MCMSettings, neuron: NeuronSettings, coupling: str) -> CouplingTheory:
    return CouplingTheory.compute(StaircaseConfig(mcm=mcm, neuron=neuron), coupling)


def _span_direction(alpha: np.ndarray) -> np.ndarray:
    """Per-seed unit direction of w projected on span(u, v), sign fixed so that alpha_u >= 0: (E, 2)."""
    uv = alpha[:, :2] * np.where(alpha[:, :1] < 0, -1.0, 1.0)
    return uv / np.linalg.norm(uv, axis=1, keepdims=True)


def _quartiles(x: np.ndarray) -> dict[str, list[float]]:
    """Mean, 25% and 75% quantiles over the seed axis (last) of (L, E) data."""
    return {"mean": x.mean(-1).tolist(), "q25": np.quantile(x, 0.25, -1).tolist(),
            "q75": np.quantile(x, 0.75, -1).tolist()}


def run_cell(config: StaircaseConfig, d: int, coupling: str, theory: CouplingTheory | None = None,
             progress: Callable[[int], None] | None = None) -> dict:
    """One (coupling, d) cell: ``config.seeds`` runs, reduced to the curves and numbers of the report."""
    theory = theory if theory is not None else CouplingTheory.of(config, coupling)
    model = config.model(d, coupling)
    neuron = config.single_neuron()
    net = Committee(d=d, K=1, activation=neuron.activation, a_out=neuron.a_out, skip=neuron.skip)
    seeds = [config.base_seed * 1_000_003 + 7919 * d + 104_729 * COUPLINGS.index(coupling) + i
             for i in range(config.seeds)]
    res = run_online_sgd(net, model, config.sgd(d), seeds, progress)
    alpha = res.overlaps[:, :, 0, :]  # (L, E, 3)
    au, av = np.abs(alpha[..., 0]), np.abs(alpha[..., 1])
    n_u = sustained_recovery(res.hits(config.threshold)[:, 0, 0], res.log_steps, au, config.threshold)
    hit_v = res.hits(config.v_threshold)[:, 0, 1]
    steps = res.log_steps
    theory_loss = theory.population_loss(model, neuron, alpha[..., 0], alpha[..., 1])
    levels = oracle_levels(model, config.neuron.t, theory.per_direction)
    final_dir = _span_direction(alpha[-1])
    out = {
        "d": d, "coupling": coupling, "seeds": seeds, "steps": int(steps[-1]), "eta": float(res.etas[0]),
        "engine": res.engine,
        "curves": {"steps_over_d": (steps / d).tolist(), "abs_alpha_u": _quartiles(au), "abs_alpha_v": _quartiles(av),
                   "loss_steps_over_d": (steps[1:] / d).tolist(), "loss": _quartiles(res.loss),
                   "population_loss": _quartiles(theory_loss)},
        "oracle_loss": levels,
        "population_loss_random_start": constant_term(model, neuron) + float(overlap_loss(model, neuron, 0.0, 0.0)),
        "final_abs_alpha_u": float(au[-1].mean()), "final_abs_alpha_v": float(av[-1].mean()),
        "max_mean_abs_alpha_v": float(av.mean(1).max()), "v_bound": 4 / math.sqrt(d),
        "recovery_steps_u": n_u.tolist(), "recovered_u": float((n_u >= 0).mean()),
        "median_recovery_u_over_d": _finite_or_none(_censored_median(n_u) / d),
        "aligned_fraction_u": float(aligned_fraction(steps, au, config.threshold).mean()),
        "first_hit_v": hit_v.tolist(),
        "final_direction_mean": final_dir.mean(0).tolist(),
        "final_direction_spread": final_dir.std(0).tolist(),
    }
    if coupling == "sign":
        lag = np.where((n_u >= 0) & (hit_v >= 0), hit_v - n_u, np.inf)
        out["v_lag_after_u"] = [float(x) if np.isfinite(x) else None for x in lag]
        out["v_within_window"] = float((lag <= config.v_window_per_d * d).mean())
        out["theory_minimiser"] = list(theory.minimiser)
        out["direction_error"] = np.abs(final_dir.mean(0) - np.abs(out["theory_minimiser"])).tolist()
    return out


def _finite_or_none(x: float) -> float | None:
    """None for a median that was not reached (half or more runs missed): JSON has no infinity."""
    return x if math.isfinite(x) else None


def _censored_median(n_hit: np.ndarray) -> float:
    """Median of recovery steps with misses counted as +inf (inf when half or more missed)."""
    return float(np.median(np.where(n_hit >= 0, n_hit, np.inf).astype(float))) if len(n_hit) else math.inf


def acceptance(cells: list[dict], config: StaircaseConfig) -> dict:
    """The issue's pass/fail checks, computed from the run results (docs/theory/mcm.md section 7, H4)."""
    checks = {}
    for c in cells:
        key = f"{c['coupling']} d={c['d']}"
        if c["coupling"] == "independent":
            checks[key] = {"alpha_u >= 0.7": c["final_abs_alpha_u"] >= 0.7,
                           "mean |alpha_v| < 4/sqrt(d) at every record": c["max_mean_abs_alpha_v"] < c["v_bound"]}
        else:
            checks[key] = {f"|alpha_v| >= {config.v_threshold} within {config.v_window_per_d:g} d steps of n_hit(u)":
                           c["v_within_window"] == 1.0,
                           "direction matches the theory minimiser to 0.05": max(c["direction_error"]) <= 0.05}
    return {"checks": checks, "all_pass": all(v for cell in checks.values() for v in cell.values())}


def run_staircase_cell(config: StaircaseConfig, ctx: RunContext | None = None) -> dict:
    """One (coupling, d) cell as an experiment of its own: ``config`` holds one dimension and one coupling."""
    if len(config.dims) != 1 or len(config.couplings) != 1:
        raise ConfigError(f"a staircase cell has one d and one coupling (got dims={config.dims}, "
                          f"couplings={config.couplings})")
    return run_cell(config, config.dims[0], config.couplings[0])


def cell_configs(config: StaircaseConfig) -> list[tuple[str, StaircaseConfig]]:
    """Every (coupling, d) cell as (label, one-cell config), in report order; cells are independent (their
    seeds depend on base_seed, d and the coupling only), so they may run anywhere (RunContext.run_cells)."""
    return [(f"{coupling} d={d}", replace(config, dims=(d,), couplings=(coupling,)))
            for coupling in config.couplings for d in config.dims]


def run_staircase(config: StaircaseConfig, ctx: RunContext | None = None) -> dict:
    """All (coupling, d) cells through ``ctx``'s cell runner (finished ones reused from OUT/staircase_cells);
    returns a JSON-ready dict with the acceptance checks (progress: one unit per cell)."""
    jobs = cell_configs(config)
    metrics = (ctx or RunContext()).run_cells("staircase_cell", jobs, subdir="staircase_cells")
    cells = [metrics[label] for label, _ in jobs]
    return {"config": {**asdict(config)}, "cells": cells, "acceptance": acceptance(cells, config)}


def profile(name: str, **overrides) -> StaircaseConfig:
    """A named profile ("quick" for CPU, "full" for a GPU) with optional field overrides."""
    check_choice("profile", name, PROFILES)
    return replace(PROFILES[name], **overrides)


def report_staircase(results: dict, out: Path) -> tuple[list[str], str]:
    """The staircase's overlap and loss figures and its Markdown section."""
    from easyhard.report.staircase import plot_loss, plot_overlaps, render_staircase

    over = plot_overlaps(results["cells"], out / "staircase_overlaps.png")
    loss = plot_loss(results["cells"], out / "staircase_loss.png")
    figures = {"overlaps against steps/d": over.name, "excess loss against steps/d": loss.name}
    return list(figures.values()), render_staircase(results, figures)


def summarize_staircase(results: dict) -> list[str]:
    """One row per cell (final overlaps, recovery of u, v in its window, direction) and the checks."""
    rows = [[c["coupling"], c["d"], f"{c['final_abs_alpha_u']:.3f}", f"{c['final_abs_alpha_v']:.3f}",
             fmt_num(c["median_recovery_u_over_d"], ".2f"), fmt_num(c.get("v_within_window"), ".0%"),
             "({:.3f}, {:.3f})".format(*c["final_direction_mean"])] for c in results["cells"]]
    return [text_table(["coupling", "d", "|alpha_u|", "|alpha_v|", "n_hit(u)/d", "v in window", "direction"], rows),
            "", f"staircase checks pass: {results['acceptance']['all_pass']}"]


def staircase_resources(config: StaircaseConfig):
    """Online SGD of ``seeds`` members for ``steps_per_d d`` steps per cell, records at every step
    (:func:`easyhard.experiments.resources.online_sgd`), summed over the cells."""
    from easyhard.experiments.resources import Resources, online_sgd

    total = Resources(0.0, 0.0)
    for d in config.dims:
        total += online_sgd(config.seeds * len(config.couplings), config.steps_per_d * d, d, device=config.device)
    return total


STAIRCASE = Experiment(
    "staircase", StaircaseConfig, run_staircase,
    "online SGD of the single neuron: u learned first, v only with sign-coupled latents",
    profiles={name: functools.partial(profile, name) for name in PROFILES}, report=report_staircase,
    options=(Option("--dims", "dims", "comma-separated dimensions d (>= 8)", parse_dims),
             Option("--seeds", "seeds", "seeds (ensemble members) per cell"),
             Option("--steps-per-d", "steps_per_d", "SGD steps per member, in units of d"),
             Option("--engine", "engine", "online-SGD engine: auto, numba or torch"),
             Option("--device", "device", "cpu, cuda or auto")),
    summary=summarize_staircase, total=lambda config: len(config.dims) * len(config.couplings),
    resources=staircase_resources)

STAIRCASE_CELL = Experiment("staircase_cell", StaircaseConfig, run_staircase_cell,
                            "one (coupling, d) cell of the staircase (dims and couplings of length one)",
                            resources=staircase_resources)
