"""Sample-complexity laws measured: recovery times of one spike against d (issue 5; docs/theory/calibration.md).

A *cell* (:class:`RecoveryConfig`, the sweepable experiment ``recovery``) runs ``seeds`` independent
online-SGD runs of the tied single neuron at one dimension d and returns the persistent recovery
times of one spike (u or v), censored at the budget. ``reproduce scaling`` (:class:`ScalingConfig`)
runs several *parts*, each a list of cells over d, and fits tau_med(d) = C d^kappa with a bootstrap
interval:

- ``u``: the covariance spike with eta ~ 1/d (k = 2: tau ~ d log d);
- ``v_sign``: v with sign-coupled latents, eta = 0.3/d (conditional exponent 1: tau ~ d log d);
- ``v_indep``: v with independent latents in the calibrated setting S1 (k = 4: tau ~ d^3), step
  eta = eps/d^2 from the population-loss calibration, via the exact reduced simulator (``--quick``)
  or the full d-dimensional engine (``--full``), with the escape-SDE prediction n_med(d);
- ``canonical``: the paper's setting (tanh, Rademacher, beta_u = beta_v = 5) with the step that
  learns u: u is recovered in O(d log d) while v stays at noise level for 100 d^2 steps;
- ``phase``: the fraction of runs recovered by n = d^x against the step constant eps (S1, reduced).
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from easyhard._validate import (
    ConfigError,
    check_choice,
    check_device,
    check_int_at_least,
    check_n_boot,
    check_nonnegative,
    check_seed,
    check_positive,
    check_unit_interval,
)
from easyhard.data import MixedCumulantModel
from easyhard.experiments._text import text_table
from easyhard.experiments.registry import CellsFailed, Experiment, Option, RunContext
from easyhard.metrics import bootstrap_scaling, km_median, km_quantile
from easyhard.models import Committee
from easyhard.theory import MCMSettings, NeuronSettings
from easyhard.train import ENGINES, OnlineSGDConfig, run_online_sgd

DIRECTIONS = ("u", "v")
#: setting S1 of docs/theory/calibration.md: Bernoulli(0.1)-Gaussian nu, beta_u = 0, beta_v = 20; tanh, t = 0.1, a = -1
S1_MCM = MCMSettings(nu="bernoulli_gauss", nu_param=0.1, beta_u=0.0, beta_v=20.0)
S1_NEURON = NeuronSettings(activation="tanh", t=0.1, a_out=-1.0)
_SPIKE = {"u": 0, "v": 1}


#: the most online-SGD steps a cell may take (10^15: about a year of the reduced simulator on one core)
MAX_STEPS = 1e15


@dataclass(frozen=True)
class RecoveryConfig:
    """One cell: ``seeds`` runs of spherical online SGD at dimension d; recovery times of ``direction``.

    Step eta = delta / d^p; budget steps = ceil(budget * d^budget_power). Defaults: setting S1 of
    docs/theory/calibration.md (beta_u = 0, beta_v = 20, Bernoulli(0.1)-Gaussian nu, t = 0.1, tanh, a_out = -1,
    eps = 12.53 at zeta = 0.3, 5x the predicted median 0.0205 d^3), exact reduced simulator.
    """

    d: int = 64
    direction: str = "v"
    mcm: MCMSettings = S1_MCM
    neuron: NeuronSettings = S1_NEURON
    delta: float = 12.53
    p: float = 2.0
    budget: float = 0.1
    budget_power: float = 3.0
    seeds: int = 64
    base_seed: int = 0
    threshold: float = 0.5
    persistence: float = 0.5
    engine: str = "reduced"
    device: str = "cpu"
    dtype: str = "float32"
    n_logs: int = 60

    def __post_init__(self):
        check_int_at_least("d", self.d, 8)
        check_choice("direction", self.direction, DIRECTIONS)
        check_choice("engine", self.engine, ENGINES)
        for name in ("p", "budget_power", "persistence"):
            check_nonnegative(name, getattr(self, name))
        for name in ("delta", "budget"):
            check_positive(name, getattr(self, name))
        check_unit_interval("threshold", self.threshold)
        check_int_at_least("seeds", self.seeds, 2)
        check_seed("base_seed + seeds - 1", self.base_seed + self.seeds - 1)
        check_seed("base_seed", self.base_seed)
        check_device("device", self.device)
        check_choice("dtype", self.dtype, ("float32", "float64"))
        check_int_at_least("n_logs", self.n_logs, 2)
        if self.budget_power > 10:
            raise ConfigError(f"budget_power must lie in [0, 10] (got {self.budget_power:g})")
        steps = self.budget * float(self.d) ** self.budget_power
        if not 1 <= steps <= MAX_STEPS:
            raise ConfigError(f"budget * d^budget_power must give between 1 and {MAX_STEPS:.0e} steps (got {steps:.3g})")

    @property
    def steps(self) -> int:
        return int(math.ceil(self.budget * self.d**self.budget_power))

    def data(self) -> MixedCumulantModel:
        return self.mcm.model(self.d)

    def net(self) -> Committee:
        neuron = self.neuron
        return Committee(self.d, 1, neuron.activation_for(self.mcm), a_out=neuron.a_out, skip=neuron.skip)

    def sgd(self) -> OnlineSGDConfig:
        return OnlineSGDConfig(steps=self.steps, delta=self.delta, p=self.p, t=self.neuron.t, thresholds=(self.threshold,),
                               persistence=self.persistence, engine=self.engine, device=self.device, dtype=self.dtype,
                               n_logs=self.n_logs)


def _finite(x: float) -> float | None:
    """None for a quantile that was not reached (JSON has no infinity)."""
    return float(x) if math.isfinite(x) else None


def run_recovery(config: RecoveryConfig, ctx: RunContext | None = None) -> dict:
    """Run one cell; returns recovery times (-1: censored), their Kaplan-Meier median and quartiles,
    and the quartiles over runs of |alpha_u|, |alpha_v| at the logged steps. With ``ctx.checkpoint`` an
    interrupted cell resumes where it stopped (:func:`easyhard.train.run_online_sgd`); a checkpoint that cannot
    be used (corrupted, hand-edited: :class:`~easyhard._io.CorruptedFile`) is deleted and the cell recomputed."""
    from easyhard._io import CorruptedFile

    seeds = range(config.base_seed, config.base_seed + config.seeds)
    checkpoint = None if ctx is None else ctx.checkpoint
    try:
        res = run_online_sgd(config.net(), config.data(), config.sgd(), seeds, None, checkpoint)
    except CorruptedFile as err:
        if checkpoint is None or err.path != Path(checkpoint):
            raise
        Path(checkpoint).unlink()
        res = run_online_sgd(config.net(), config.data(), config.sgd(), seeds, None, checkpoint)
    times = res.recoveries(config.threshold)[:, 0, _SPIKE[config.direction]]
    abs_al = np.abs(res.overlaps[:, :, 0, :2])  # (L, E, 2): u, v
    curves = {f"abs_alpha_{name}_q{q}": np.percentile(abs_al[..., i], q, axis=1).tolist()
              for i, name in enumerate(("u", "v")) for q in (25, 50, 75)}
    other = res.recoveries(config.threshold)[:, 0, 1 - _SPIKE[config.direction]]
    return {
        "d": config.d, "direction": config.direction, "threshold": config.threshold, "steps": config.steps, "eta": float(res.etas[0]),
        "engine": res.engine, "median": _finite(km_median(times)), "q25": _finite(km_quantile(times, 0.25)),
        "q75": _finite(km_quantile(times, 0.75)), "recovered_fraction": float((times >= 0).mean()),
        "other_recovered_fraction": float((other >= 0).mean()),
        "final_abs_alpha_u": float(np.median(abs_al[-1, :, 0])), "final_abs_alpha_v": float(np.median(abs_al[-1, :, 1])),
        "times": times.tolist(), "log_steps": res.log_steps.tolist(), **curves,
    }


def recovery_resources(config: RecoveryConfig):
    """Online SGD of ``seeds`` members for ``steps`` steps, ``n_logs`` records
    (:func:`easyhard.experiments.resources.online_sgd`); the reduced simulator's step, whose cost does not depend
    on d, costs as a full step at d = 4 (about 1e-7 s per member-step, README benchmark)."""
    from easyhard.experiments.resources import online_sgd

    d = 4 if config.engine == "reduced" else config.d
    return online_sgd(config.seeds, config.steps, d, records_per_step=False, device=config.device)


RECOVERY = Experiment("recovery", RecoveryConfig, run_recovery,
                      "recovery times of one spike for single-neuron online SGD at one d", resources=recovery_resources)


# ---------------------------------------------------------------------------------------------
# reproduce scaling
# ---------------------------------------------------------------------------------------------

#: setting S1 of docs/theory/calibration.md as cell fields (the RecoveryConfig defaults)
S1 = {"mcm": S1_MCM, "neuron": S1_NEURON}
#: the paper's canonical setting: tanh, Rademacher nu, beta_u = beta_v = 5 (t = 0.3 as in docs/theory/calibration.md)
CANONICAL = {"mcm": MCMSettings(), "neuron": NeuronSettings(t=0.3)}


@dataclass(frozen=True)
class Part:
    """A scaling law to measure: one cell per d, the predicted exponent and whether a log d factor is expected."""

    name: str
    cell: RecoveryConfig
    dims: tuple[int, ...]
    predicted_kappa: float
    log_factor: bool
    sde: bool = False  # compare with the escape-SDE prediction n_med(d) of the calibration

    def cells(self) -> list[RecoveryConfig]:
        return [replace(self.cell, d=d) for d in self.dims]


@dataclass(frozen=True)
class ScalingConfig:
    """What ``reproduce scaling`` runs: the laws (parts), the canonical-setting control and the phase diagram.

    parts: the laws; canonical: the control cell (run at each of canonical_dims); phase: the cell of the
    phase diagram (its d and budget), run once per step constant in phase_zetas (eps = 4|c_4|/(zeta G^2));
    zeta: the escape parameter of the calibrated step of the ``v_indep`` parts; n_boot: bootstrap replicates.
    """

    parts: tuple[Part, ...]
    canonical: RecoveryConfig
    canonical_dims: tuple[int, ...]
    phase: RecoveryConfig
    phase_zetas: tuple[float, ...]
    zeta: float = 0.3
    n_boot: int = 1000
    device: str = "cpu"

    def __post_init__(self):
        check_positive("zeta", self.zeta)
        check_n_boot("n_boot", self.n_boot)
        check_device("device", self.device)

    def all_cells(self) -> list[tuple[str, RecoveryConfig]]:
        """Every cell as (label, config), in run order; cells of the full engine run on ``device`` (the exact
        reduced simulator stays on the CPU, where its numba kernel runs)."""
        out = [(f"{p.name} d={c.d}", c) for p in self.parts for c in p.cells()]
        out += [(f"canonical d={d}", replace(self.canonical, d=d)) for d in self.canonical_dims]
        out += [(f"phase zeta={z:g}", replace(self.phase, delta=self.calibration_eps(z))) for z in self.phase_zetas]
        return [(label, cell if cell.engine == "reduced" else replace(cell, device=self.device))
                for label, cell in out]

    def calibration_eps(self, zeta: float) -> float:
        return s1_calibration(zeta).eps

    def to_dict(self) -> dict:
        return asdict(self)


@functools.lru_cache(maxsize=32)
def s1_calibration(zeta: float = 0.3):
    """Population-loss calibration of setting S1 (c_4, G^2, eps, T*, n_med), :func:`easyhard.theory.calibrate`."""
    from easyhard.theory import calibrate

    return calibrate(S1_MCM.model(8), S1_NEURON.neuron(S1_MCM), "v", zeta=zeta)


def _parts(dims_fast, dims_indep, seeds_fast, seeds_indep, indep_engine, budget_factor, device, dtype):
    """The three laws of the acceptance criteria (the S1 step and budget come from the calibration)."""
    cal = s1_calibration()
    u = RecoveryConfig(**CANONICAL | {"neuron": NeuronSettings(t=0.5)}, direction="u", delta=0.5, p=1.0, budget=40.0, budget_power=1.0,
                       seeds=seeds_fast, engine="auto", device=device, dtype=dtype)
    v_sign = RecoveryConfig(**S1 | {"mcm": replace(S1_MCM, nu="rademacher", nu_param=None, beta_u=5.0,
                                                   coupling="sign")},
                            direction="v", delta=0.3, p=1.0, budget=100.0, budget_power=1.0, seeds=seeds_fast,
                            engine="auto", device=device, dtype=dtype)
    v_indep = RecoveryConfig(**S1, direction="v", delta=cal.eps, p=2.0, budget=budget_factor * cal.n_med_coefficient,
                             budget_power=3.0, seeds=seeds_indep, engine=indep_engine, device=device, dtype=dtype)
    return (Part("u", u, dims_fast, 1.0, True), Part("v_sign", v_sign, dims_fast, 1.0, True),
            Part("v_indep", v_indep, dims_indep, 3.0, False, sde=True))


#: ``quick``: CPU, a few minutes on 2 cores; ``full``: one GPU (full engine to d = 512, reduced to 1024);
#: ``smoke``: seconds, every code path at toy sizes (tests, checking an installation)
PROFILES = ("quick", "full", "smoke")


def profile(name: str) -> ScalingConfig:
    """The named :class:`ScalingConfig` (see ``PROFILES``); ``full`` runs its full-engine cells on CUDA when
    available (device "auto")."""
    check_choice("profile", name, PROFILES)
    zetas = (3.0, 1.0, 0.3, 0.1, 0.05, 0.03)
    if name == "smoke":  # seconds: every code path, sizes far too small for the acceptance ranges
        u, v_sign, v_indep = _parts((24, 48), (24, 32), 12, 24, "reduced", 6.0, "cpu", "float32")
        parts = (replace(u, cell=replace(u.cell, budget=30.0)), replace(v_sign, cell=replace(v_sign.cell, budget=60.0)),
                 v_indep)
        canonical = RecoveryConfig(**CANONICAL, direction="u", delta=0.5, p=1.0, budget=2.0, budget_power=2.0,
                                   seeds=8, engine="auto")
        phase = RecoveryConfig(**S1, d=24, budget=1.0, budget_power=2.8, seeds=8)
        return ScalingConfig(parts, canonical, (24,), phase, (1.0, 0.1), n_boot=50)
    if name == "quick":
        parts = _parts((64, 128, 256, 512), (32, 64, 128, 256), 64, 192, "reduced", 6.0, "cpu", "float32")
        canonical = RecoveryConfig(**CANONICAL, direction="u", delta=0.5, p=1.0, budget=100.0, budget_power=2.0,
                                   seeds=32, engine="auto")
        phase = RecoveryConfig(**S1, d=64, budget=1.0, budget_power=3.3, seeds=32)
        return ScalingConfig(parts, canonical, (64, 128), phase, zetas)
    fast = _parts((64, 128, 256, 512, 1024), (64, 128, 256, 512), 256, 256, "auto", 4.0, "cpu", "float32")
    reduced = _parts((), (32, 64, 128, 256, 512, 1024), 256, 256, "reduced", 5.0, "cpu", "float32")[2]
    parts = fast + (replace(reduced, name="v_indep_reduced"),)
    canonical = RecoveryConfig(**CANONICAL, direction="u", delta=0.5, p=1.0, budget=100.0, budget_power=2.0,
                               seeds=64, engine="auto")
    phase = RecoveryConfig(**S1, d=128, budget=1.0, budget_power=3.3, seeds=64)
    return ScalingConfig(parts, canonical, (128, 256), phase, zetas, device="auto")


def _fit_part(part: Part, cells: list[dict], n_boot: int, calibration) -> dict:
    times = {c["d"]: np.asarray(c["times"]) for c in cells}
    fit = bootstrap_scaling(times, log_factor=False, n_boot=n_boot)
    fit_log = bootstrap_scaling(times, log_factor=True, n_boot=n_boot)
    out = {"predicted_kappa": part.predicted_kappa, "law": "d log d" if part.log_factor else f"d^{part.predicted_kappa:g}",
           "fit": fit.to_dict(), "fit_log": fit_log.to_dict(), "cells": cells}
    if part.sde:
        pred = [float(calibration.predicted_median(d)) for d in fit.dims]
        out["sde_median"] = pred
        out["median_over_sde"] = [m / p for m, p in zip(fit.medians, pred)]
    return out


def _canonical_summary(cells: list[dict]) -> dict:
    """u recovered (persistently) and v at noise level: max over records of the median |alpha_v| vs 3/sqrt(d)."""
    rows = []
    for c in cells:
        d = c["d"]
        rows.append({"d": d, "steps": c["steps"], "u_recovered_fraction": c["recovered_fraction"],
                     "median_tau_u_over_d_log_d": None if c["median"] is None else c["median"] / (d * math.log(d)),
                     "v_recovered_fraction": c["other_recovered_fraction"],
                     "max_median_abs_alpha_v": max(c["abs_alpha_v_q50"]), "noise_level": 3 / math.sqrt(d),
                     "final_abs_alpha_u": c["final_abs_alpha_u"], "final_abs_alpha_v": c["final_abs_alpha_v"]})
    ok = all(r["u_recovered_fraction"] >= 0.9 and r["v_recovered_fraction"] == 0
             and r["max_median_abs_alpha_v"] <= r["noise_level"] for r in rows)
    return {"rows": rows, "u_learned_v_not": ok}


def _phase_summary(config: ScalingConfig, cells: list[dict]) -> dict:
    """Fraction of runs recovered by n = d^x for each step constant, and the SDE's median as log n / log d."""
    from easyhard.theory import escape_median

    d = config.phase.d
    xs = np.linspace(1.0, config.phase.budget_power, 47)
    rows = []
    for zeta, c in zip(config.phase_zetas, cells):
        cal = s1_calibration(zeta)
        t = np.asarray(c["times"], dtype=float)
        frac = [float(((t >= 0) & (t <= d**x)).mean()) for x in xs]
        n_med = escape_median(zeta, 4) / (cal.eps**2 * cal.G2) * d**3
        rows.append({"zeta": zeta, "eps": cal.eps, "recovered_by": frac, "sde_log_n_over_log_d": math.log(n_med) / math.log(d),
                     "median": c["median"]})
    return {"d": d, "x": xs.tolist(), "rows": rows}


def _check_times(metrics: dict[str, dict]) -> None:
    """CellsFailed naming the first cell whose recovery times are not a list of finite numbers: a NaN time
    would otherwise count as a run that never recovered (and a fit would blame the step budget)."""
    for label, cell in metrics.items():
        times = cell.get("times")
        bad = "missing" if not isinstance(times, list) else next(
            (f"times[{i}] = {t!r}" for i, t in enumerate(times)
             if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t)), None)
        if bad is not None:
            raise CellsFailed(f"cell {label} of scaling gave unusable recovery times ({bad}); "
                              "its result is not fitted: run the command again to recompute it")


def run_scaling(config: ScalingConfig, ctx: RunContext | None = None) -> dict:
    """Run every cell through ``ctx``'s cell runner (finished ones are reused from ``OUT/cells``), fit the
    laws and check the acceptance. CellsFailed (one line naming the cell) if a cell's recovery times are not
    finite numbers, rather than a fit that reads them as censored runs."""
    cal = s1_calibration(config.zeta)
    metrics = (ctx or RunContext()).run_cells("recovery", config.all_cells())
    _check_times(metrics)
    parts = {p.name: _fit_part(p, [metrics[f"{p.name} d={d}"] for d in p.dims], config.n_boot, cal)
             for p in config.parts}
    canonical = _canonical_summary([metrics[f"canonical d={d}"] for d in config.canonical_dims])
    phase = _phase_summary(config, [metrics[f"phase zeta={z:g}"] for z in config.phase_zetas])
    return {"config": config.to_dict(), "calibration": cal.to_dict(), "parts": parts, "canonical": canonical,
            "phase": phase, "acceptance": acceptance(parts, canonical)}


def _within(value: float, lo: float, hi: float) -> bool:
    return lo <= value <= hi


def acceptance(parts: dict, canonical: dict) -> dict:
    """Issue 5's checks, from the runs' own numbers (each with its bootstrap interval)."""
    checks = {}
    for name, lo, hi in (("u", 0.9, 1.4), ("v_sign", 0.9, 1.4), ("v_indep", 2.7, 3.2), ("v_indep_reduced", 2.7, 3.2)):
        if name in parts:
            fit = parts[name]["fit"]
            checks[f"kappa_{name}"] = {"value": fit["kappa"], "interval": fit["interval"], "range": [lo, hi],
                                       "pass": _within(fit["kappa"], lo, hi)}
    checks["canonical_u_learned_v_not"] = {"pass": canonical["u_learned_v_not"]}
    if "v_indep" in parts and "v_indep_reduced" in parts:
        full, red = parts["v_indep"]["fit"], parts["v_indep_reduced"]["fit"]
        common = [d for d in full["dims"] if d in red["dims"]]
        ratios = [full["medians"][full["dims"].index(d)] / red["medians"][red["dims"].index(d)] for d in common]
        checks["full_vs_reduced_medians"] = {"dims": common, "ratios": ratios,
                                             "pass": all(abs(r - 1) <= 0.15 for r in ratios)}
    checks["all_pass"] = all(c["pass"] for c in checks.values())
    return checks


def report_scaling(results: dict, out: Path) -> tuple[list[str], str]:
    """The scaling-law, collapse and phase-diagram figures and the Markdown section."""
    from easyhard.report.scaling import plot_collapse, plot_phase, plot_scaling, render_scaling

    laws = plot_scaling(results["parts"], out / "scaling_laws.png")
    collapse = plot_collapse(results["parts"], out / "scaling_collapse.png")
    phase = plot_phase(results["phase"], out / "scaling_phase.png")
    figures = {"censored median recovery time against d": laws.name,
               "overlaps against steps / d^(k-1)": collapse.name,
               "fraction recovered against log n / log d and the step constant": phase.name}
    return list(figures.values()), render_scaling(results, figures)


def summarize_scaling(results: dict) -> list[str]:
    """The fitted exponents per law and the checks, as printed after a run."""
    rows = [[name, part["law"], ", ".join(map(str, part["fit"]["dims"])),
             "{:.3f} [{:.3f}, {:.3f}]".format(part["fit"]["kappa"], *part["fit"]["interval"])]
            for name, part in results["parts"].items()]
    return [text_table(["part", "predicted", "dims", "kappa (95% CI)"], rows), "",
            f"canonical setting: u learned, v not: {results['canonical']['u_learned_v_not']}",
            f"scaling checks pass: {results['acceptance']['all_pass']}"]


def scaling_resources(config: ScalingConfig):
    """The cells one after the other (:func:`recovery_resources` summed; the memory of the largest cell)."""
    from easyhard.experiments.resources import Resources

    cells = [recovery_resources(cell) for _, cell in config.all_cells()]
    return Resources(max(c.memory_bytes for c in cells), sum(c.seconds for c in cells))


SCALING = Experiment(
    "scaling", ScalingConfig, run_scaling,
    "sample-complexity laws: censored median recovery time against d, fitted exponents, phase diagram",
    profiles={name: functools.partial(profile, name) for name in PROFILES}, report=report_scaling,
    options=(Option("--device", "device", "cpu, cuda or auto (full-engine cells; the reduced simulator runs on "
                    "the CPU)"),),
    summary=summarize_scaling, total=lambda config: len(config.all_cells()), resources=scaling_resources)
