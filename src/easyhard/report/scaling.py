"""Figures and Markdown for ``reproduce scaling``, built from its saved results dict."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from easyhard.report._figure import fmt, save_figure  # noqa: E402

from easyhard.theory.calibration import RECOMMENDED_ZETA  # noqa: E402

_TITLES = {"u": "u (covariance spike), eta ~ 1/d", "v_sign": "v, sign-coupled latents, eta = 0.3/d",
           "v_indep": "v, independent latents (S1), eta = eps/d^2", "v_indep_reduced": "v, independent (S1), reduced"}


def _law(d: np.ndarray, kappa: float, log_factor: bool) -> np.ndarray:
    return d**kappa * (np.log(d) if log_factor else 1.0)


def plot_scaling(parts: dict, path: Path) -> Path:
    """Censored median tau against d (log-log) per part: bootstrap intervals, the fitted power law, the
    predicted law (its exponent, through the geometric mean of the medians) and the escape-SDE median."""
    fig, axes = plt.subplots(1, len(parts), figsize=(4.2 * len(parts), 3.6), squeeze=False)
    for ax, (name, part) in zip(axes[0], parts.items()):
        fit = part["fit"]
        d = np.asarray(fit["dims"], dtype=float)
        med = np.asarray(fit["medians"])
        lo, hi = np.asarray(fit["median_intervals"]).T
        ax.errorbar(d, med, yerr=[med - lo, hi - med], fmt="o", color="k", ms=4, capsize=3, label="median (95% CI)")
        dd = np.geomspace(d.min(), d.max(), 50)
        ax.plot(dd, fit["prefactor"] * dd ** fit["kappa"], color="tab:blue",
                label=f"fit d^{fit['kappa']:.2f} [{fit['interval'][0]:.2f}, {fit['interval'][1]:.2f}]")
        log_factor = part["law"] == "d log d"
        shape = _law(dd, part["predicted_kappa"], log_factor)
        scale = math.exp(np.mean(np.log(med / _law(d, part["predicted_kappa"], log_factor))))
        ax.plot(dd, scale * shape, "--", color="tab:green", label=f"predicted {part['law']}")
        if "sde_median" in part:
            ax.plot(d, part["sde_median"], "s:", color="tab:red", ms=4, label="escape SDE n_med(d)")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("d")
        ax.set_title(_TITLES.get(name, name), fontsize=8)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("recovery steps tau (censored median)")
    return save_figure(fig, path)


def plot_collapse(parts: dict, path: Path) -> Path:
    """Median |alpha| of the learned spike against steps / d^(k-1) (v, independent: d^3) and steps / (d log d)."""
    panels = [(n, p) for n, p in parts.items() if n in ("u", "v_sign", "v_indep", "v_indep_reduced")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, (name, part) in zip(axes[0], panels):
        key = "abs_alpha_u" if name == "u" else "abs_alpha_v"
        cmap = plt.get_cmap("viridis")
        cells = part["cells"]
        for i, c in enumerate(cells):
            d = c["d"]
            scale = d ** part["predicted_kappa"] * (math.log(d) if part["law"] == "d log d" else 1.0)
            x = np.asarray(c["log_steps"][1:]) / scale
            col = cmap(i / max(1, len(cells) - 1))
            ax.plot(x, c[f"{key}_q50"][1:], color=col, label=f"d = {d}")
            ax.fill_between(x, c[f"{key}_q25"][1:], c[f"{key}_q75"][1:], color=col, alpha=0.12, lw=0)
        ax.axhline(cells[0].get("threshold", 0.5), color="gray", lw=0.7, ls=":")
        ax.set_xscale("log")
        ax.set_xlabel("steps / " + ("(d log d)" if part["law"] == "d log d" else f"d^{part['predicted_kappa']:g}"))
        ax.set_title(_TITLES.get(name, name), fontsize=8)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("|alpha| (median, interquartile band)")
    return save_figure(fig, path)


def plot_phase(phase: dict, path: Path) -> Path:
    """Fraction of runs recovered by n = d^x against x = log n / log d and the step constant eps (S1).

    The escape-SDE median is drawn in the recommended regime only: for small zeta (large steps) the
    small-alpha SDE still escapes, but the SGD-noise shrinkage keeps the aligned state from being stable.
    """
    x = np.asarray(phase["x"])
    rows = sorted(phase["rows"], key=lambda r: r["eps"])
    eps = np.array([r["eps"] for r in rows])
    frac = np.array([r["recovered_by"] for r in rows])
    fig, ax = plt.subplots(figsize=(5.6, 3.8))
    edges = np.exp(np.concatenate([[1.5 * np.log(eps[0]) - 0.5 * np.log(eps[1])],
                                   0.5 * (np.log(eps[1:]) + np.log(eps[:-1])),
                                   [1.5 * np.log(eps[-1]) - 0.5 * np.log(eps[-2])]]))
    xe = np.concatenate([[x[0] - 0.5 * (x[1] - x[0])], 0.5 * (x[1:] + x[:-1]), [x[-1] + 0.5 * (x[-1] - x[-2])]])
    mesh = ax.pcolormesh(xe, edges, frac, cmap="magma", vmin=0, vmax=1, shading="flat")
    fig.colorbar(mesh, ax=ax, label="fraction recovered by n")
    valid = [r for r in rows if RECOMMENDED_ZETA[0] <= r["zeta"]]
    ax.plot([r["sde_log_n_over_log_d"] for r in valid], [r["eps"] for r in valid], "o--", color="tab:cyan", ms=4,
            label=f"escape-SDE median (zeta >= {RECOMMENDED_ZETA[0]:g})")
    ax.axhline(0.5 * phase["d"], color="white", lw=0.8, ls=":", label="eta = 0.5/d")
    ax.set_yscale("log")
    ax.set_xlim(xe[0], xe[-1])
    ax.set_xlabel(f"log n / log d   (d = {phase['d']})")
    ax.set_ylabel("step constant eps (eta = eps / d^2)")
    ax.legend(fontsize=7, loc="upper right")
    return save_figure(fig, path)


def render_scaling(results: dict, figures: dict[str, str]) -> str:
    """Markdown section: fitted exponents with intervals, SDE comparison, the canonical control, checks."""
    cal = results["calibration"]
    lines = ["## Sample-complexity laws (reproduce scaling)", "",
             f"Calibration of S1 (population loss): c_4 = {cal['c_k']:.4f}, G^2 = {cal['G2']:.4f}, "
             f"R = {cal['R']:.3g}, zeta = {cal['zeta']:g}, eps = {cal['eps']:.4g} (eta = eps/d^2), "
             f"predicted n_med = {cal['n_med_coefficient']:.4g} d^3.", "",
             "| part | law | dims | kappa (95% CI) | kappa with log d (95% CI) | medians | recovered |",
             "|---|---|---|---|---|---|---|"]
    for name, part in results["parts"].items():
        f, g = part["fit"], part["fit_log"]
        lines.append(f"| {name} | {part['law']} | {', '.join(map(str, f['dims']))} | {f['kappa']:.3f} "
                     f"[{f['interval'][0]:.3f}, {f['interval'][1]:.3f}] | {g['kappa']:.3f} "
                     f"[{g['interval'][0]:.3f}, {g['interval'][1]:.3f}] | {', '.join(fmt(m) for m in f['medians'])} | "
                     f"{', '.join(f'{r:.0%}' for r in f['recovered_fraction'])} |")
        if "median_over_sde" in part:
            lines.append(f"| {name}: median / SDE n_med | | | {', '.join(f'{r:.2f}' for r in part['median_over_sde'])} "
                         "| | | |")
    lines += ["", "Canonical setting (tanh, Rademacher, beta_u = beta_v = 5, t = 0.3, eta = 0.5/d, 100 d^2 steps):", "",
              "| d | u recovered | median tau_u/(d ln d) | v recovered | max median abs(alpha_v) | 3/sqrt(d) |",
              "|---|---|---|---|---|---|"]
    for r in results["canonical"]["rows"]:
        lines.append(f"| {r['d']} | {r['u_recovered_fraction']:.0%} | {fmt(r['median_tau_u_over_d_log_d'])} | "
                     f"{r['v_recovered_fraction']:.0%} | {r['max_median_abs_alpha_v']:.3f} | {r['noise_level']:.3f} |")
    lines += ["", "Checks:", ""]
    for key, c in results["acceptance"].items():
        if key == "all_pass":
            continue
        detail = (f"{c['value']:.3f} [{c['interval'][0]:.3f}, {c['interval'][1]:.3f}] in {c['range']}" if "value" in c
                  else (f"ratios {', '.join(f'{r:.2f}' for r in c['ratios'])}" if "ratios" in c else ""))
        lines.append(f"- {key}: {'pass' if c['pass'] else 'FAIL'} {detail}")
    lines += ["", f"All scaling checks pass: {results['acceptance']['all_pass']}", ""]
    lines += [f"![{caption}]({name})\n" for caption, name in figures.items()]
    return "\n".join(lines)
