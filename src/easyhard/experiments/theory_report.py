"""The theory report: diffusion information exponents and oracle MSEs in the paper's canonical settings.

Each :class:`TheorySetting` is a (data model, single-neuron denoiser, t) triple. ``run_theory_report``
returns a JSON-ready dict; :mod:`easyhard.report.theory` renders it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from easyhard.data import MixedCumulantModel
from easyhard.experiments._text import fmt_num, text_table
from easyhard.experiments.registry import Experiment, RunContext
from easyhard.oracles import per_direction_mse
from easyhard.theory import (
    MCMSettings,
    NeuronSettings,
    SingleNeuron,
    diffusion_exponents,
    hermite_coefficients,
    overlap_loss,
)
from easyhard.theory.problem import problem_from
from easyhard.theory.exponent import SLOPE_GRID


@dataclass(frozen=True)
class TheorySetting:
    """One row of the exponent table: a model and a neuron; ``expected_*`` hold the exponents the theory
    predicts (None = no dependence). :meth:`of` takes the settings' fields by their flat names."""

    name: str
    mcm: MCMSettings = MCMSettings()
    neuron_settings: NeuronSettings = NeuronSettings()
    expected_u: int | None = 2
    expected_v: int | None = 4

    @classmethod
    def of(cls, name: str, expected_u: int | None = 2, expected_v: int | None = 4, **fields) -> TheorySetting:
        mcm, neuron = problem_from(**fields)
        return cls(name, mcm, neuron, expected_u, expected_v)

    def model(self) -> MixedCumulantModel:
        return self.mcm.model()

    def neuron(self) -> SingleNeuron:
        return self.neuron_settings.neuron(self.mcm)


#: canonical settings (docs/theory/mcm.md sections 6.2-6.6 and docs/theory/calibration.md S1)
CANONICAL_SETTINGS: tuple[TheorySetting, ...] = (
    TheorySetting.of("canonical: tanh, Rademacher, independent"),
    TheorySetting.of("canonical at t = 0.3", t=0.3),
    TheorySetting.of("erf, Rademacher", activation="erf"),
    TheorySetting.of("sign coupling (staircase)", coupling="sign", expected_v=1),
    TheorySetting.of("second-order-invisible coupling, tanh", coupling="invisible"),
    TheorySetting.of("second-order-invisible coupling, relu", activation="relu", coupling="invisible", expected_v=1),
    TheorySetting.of("relu blind spot", activation="relu", expected_v=None),
    TheorySetting.of("linear blind spot", activation="linear", expected_v=None),
    TheorySetting.of("relu, skewed two-point nu", activation="relu", nu="two_point", nu_param=0.1, expected_v=3),
    TheorySetting.of("tanh, skewed two-point nu (odd: blind to skew)", nu="two_point", nu_param=0.1, expected_v=4),
    TheorySetting.of("matched activation, v only", activation="matched", beta_u=0.0, beta_v=10.0, t=0.2,
                  expected_u=None),
    TheorySetting.of("S1: tanh a=-1, Bernoulli-Gauss(0.1)", nu="bernoulli_gauss", nu_param=0.1, beta_u=0.0,
                  beta_v=20.0, t=0.1, a_out=-1.0, expected_u=None),
)

#: settings whose per-direction oracle MSE is tabulated over t
MSE_SETTINGS: tuple[TheorySetting, ...] = (CANONICAL_SETTINGS[0], CANONICAL_SETTINGS[3])
MSE_TIMES: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3, 0.5, 1.0)
CURVE_POINTS = 25


def _curve(setting: TheorySetting, exps: dict) -> dict:
    """|L(alpha) - L(0)| along u and along v (at the conditioning alpha_u for coupled models)."""
    model, neuron = setting.model(), setting.neuron()
    alphas = np.geomspace(SLOPE_GRID[0] / 4, 0.5, CURVE_POINTS)
    grid = torch.from_numpy(alphas)
    u = overlap_loss(model, neuron, grid, 0.0) - overlap_loss(model, neuron, 0.0, 0.0)
    au = (exps["v"].conditional_on or {}).get("alpha_u", 0.0)
    v = overlap_loss(model, neuron, au, grid.clamp_max((1 - au**2) ** 0.5)) - overlap_loss(model, neuron, au, 0.0)
    return {"alpha": alphas.tolist(), "u": u.abs().tolist(), "v": v.abs().tolist(), "alpha_u_for_v": au}


def evaluate_setting(setting: TheorySetting, k_max: int = 8) -> dict:
    """Exponents (analytic and slope), Hermite coefficients f_k and loss curves of one setting."""
    model, neuron = setting.model(), setting.neuron()
    exps = diffusion_exponents(model, neuron, k_max)
    f = hermite_coefficients(neuron, k_max)
    expected = {"u": setting.expected_u, "v": setting.expected_v}
    return {
        "setting": asdict(setting),
        "model": model.to_dict(),
        "neuron": neuron.to_dict(),
        "hermite_f": f.tolist(),
        "directions": {k: {**e.to_dict(), "expected": expected[k], "matches": e.exponent == expected[k]}
                       for k, e in exps.items()},
        "curves": _curve(setting, exps),
    }


def run_theory_report(settings: tuple[TheorySetting, ...] = CANONICAL_SETTINGS,
                      progress: Callable[[str], None] | None = None) -> dict:
    """Evaluate every setting and the oracle-MSE tables; returns a JSON-ready dict."""
    rows = []
    for setting in settings:
        if progress:
            progress(setting.name)
        rows.append(evaluate_setting(setting))
    mse = []
    for setting in MSE_SETTINGS:
        if progress:
            progress(f"oracle MSE: {setting.name}")
        model = setting.model()
        mse.append({"setting": setting.name, "coupling": setting.mcm.coupling,
                    "rows": [{"t": t, **per_direction_mse(model, t)} for t in MSE_TIMES]})
    return {"exponents": rows, "oracle_mse": mse,
            "all_match": all(d["matches"] for r in rows for d in r["directions"].values())}


@dataclass(frozen=True)
class TheoryConfig:
    """The theory report has no settings: it evaluates the fixed tables :data:`CANONICAL_SETTINGS` and
    :data:`MSE_SETTINGS` (quadrature only, no randomness)."""


def run_theory(config: TheoryConfig, ctx: RunContext | None = None) -> dict:
    """:func:`run_theory_report` as an experiment (progress: one unit per setting)."""
    progress = None if ctx is None else (lambda name: ctx.progress(1, name))
    return run_theory_report(progress=progress)


def report_theory(results: dict, out: Path) -> tuple[list[str], str]:
    """Loss-curve figure, ``exponents.json`` (the exponent table by setting) and the Markdown section."""
    from easyhard._io import atomic_write_json
    from easyhard.report import plot_loss_curves, render_markdown

    figure = plot_loss_curves(results["exponents"], out / "loss_curves.png")
    table = {row["setting"]["name"]: {k: {f: d[f] for f in ("exponent", "slope", "samples", "step", "coefficient")}
                                      for k, d in row["directions"].items()} for row in results["exponents"]}
    exponents = atomic_write_json(out / "exponents.json", table)
    section = render_markdown(results, figure.name).replace("# easyhard theory report",
                                                            "## Theory: exponents and oracle MSEs")
    return [figure.name, exponents.name], section


def summarize_theory(results: dict) -> list[str]:
    """The exponent table (setting, direction, k*, slope, samples) and whether every exponent matches."""
    rows = [[r["setting"]["name"], k, fmt_num(d["exponent"], "d"), fmt_num(d["slope"], ".3f"), d["samples"]]
            for r in results["exponents"] for k, d in r["directions"].items()]
    return [text_table(["setting", "dir", "k*", "slope", "samples"], rows), "",
            f"all exponents as predicted: {results['all_match']}"]


THEORY = Experiment("theory", TheoryConfig, run_theory,
                    "diffusion information exponents and exact-denoiser MSEs of the canonical settings",
                    profiles={name: TheoryConfig for name in ("smoke", "quick", "full")}, report=report_theory,
                    summary=summarize_theory, total=lambda config: len(CANONICAL_SETTINGS) + len(MSE_SETTINGS))
