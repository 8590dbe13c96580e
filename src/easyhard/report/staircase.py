"""Figures and Markdown for the staircase experiment, built from its saved results dict."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from easyhard.report._figure import save_figure  # noqa: E402

_COLORS = {"independent": "tab:blue", "sign": "tab:red"}


def _band(ax, x, q, color, label, style="-"):
    ax.plot(x, q["mean"], style, color=color, label=label, lw=1.5)
    ax.fill_between(x, q["q25"], q["q75"], color=color, alpha=0.15, lw=0)


def plot_overlaps(cells: list[dict], path: Path) -> Path:
    """|alpha_u| and |alpha_v| against steps/d, one panel per d (mean and interquartile band over seeds)."""
    dims = sorted({c["d"] for c in cells})
    fig, axes = plt.subplots(1, len(dims), figsize=(4.2 * len(dims), 3.4), squeeze=False, sharey=True)
    for ax, d in zip(axes[0], dims):
        for c in (c for c in cells if c["d"] == d):
            x = c["curves"]["steps_over_d"]
            col = _COLORS[c["coupling"]]
            _band(ax, x, c["curves"]["abs_alpha_u"], col, f"|alpha_u|, {c['coupling']}")
            _band(ax, x, c["curves"]["abs_alpha_v"], col, f"|alpha_v|, {c['coupling']}", "--")
            if "theory_minimiser" in c:
                au, av = (abs(v) for v in c["theory_minimiser"])
                ax.axhline(au, color="k", lw=0.7, ls=":")
                ax.axhline(av, color="k", lw=0.7, ls="-.")
        ax.axhline(4 / d**0.5, color="gray", lw=0.7, ls="--")
        ax.set_xscale("symlog", linthresh=1.0)
        ax.set_xlim(left=0)
        ax.set_xlabel("steps / d")
        ax.set_title(f"d = {d}; black: population minimiser on the unit circle (sign); grey: 4/sqrt(d)", fontsize=7)
    axes[0][0].set_ylabel("overlap")
    axes[0][0].legend(fontsize=7, loc="upper left")
    return save_figure(fig, path)


def plot_loss(cells: list[dict], path: Path) -> Path:
    """Excess loss over the Bayes MMSE: SGD sample loss, population loss at the current overlaps, Gaussian MMSE."""
    d = max(c["d"] for c in cells)
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for c in (c for c in cells if c["d"] == d):
        bayes = c["oracle_loss"]["bayes"]
        col = _COLORS[c["coupling"]]
        cur = c["curves"]
        ax.plot(cur["loss_steps_over_d"], [v - bayes for v in cur["loss"]["mean"]], color=col, alpha=0.35, lw=0.8,
                label=f"SGD sample loss, {c['coupling']}")
        ax.plot(cur["steps_over_d"], [v - bayes for v in cur["population_loss"]["mean"]], color=col, lw=1.8,
                label=f"population loss at w, {c['coupling']}")
        ax.axhline(c["oracle_loss"]["gaussian"] - bayes, color=col, ls="--", lw=0.9,
                   label=f"Gaussian MMSE, {c['coupling']}")
    ax.axhline(0.0, color="k", lw=0.9, label="Bayes MMSE")
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_xlim(left=0)
    ax.set_xlabel("steps / d")
    ax.set_ylabel("loss - Bayes MMSE")
    ax.set_title(f"d = {d}", fontsize=9)
    ax.legend(fontsize=6.5)
    return save_figure(fig, path)


def _f(x, spec=".3f"):
    return "-" if x is None else format(x, spec)


def staircase_table(cells: list[dict]) -> str:
    rows = ["| coupling | d | seeds | final abs(alpha_u) | final abs(alpha_v) | max mean abs(alpha_v) | 4/sqrt(d) "
            "| recovered u | median n_hit(u)/d | v within window | direction (u, v) | theory minimiser |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in cells:
        direction = "({:.3f}, {:.3f})".format(*c["final_direction_mean"])
        theory = "({:.3f}, {:.3f})".format(*c["theory_minimiser"]) if "theory_minimiser" in c else "-"
        rows.append(f"| {c['coupling']} | {c['d']} | {len(c['seeds'])} | {_f(c['final_abs_alpha_u'])} | "
                    f"{_f(c['final_abs_alpha_v'])} | {_f(c['max_mean_abs_alpha_v'])} | {_f(c['v_bound'])} | "
                    f"{c['recovered_u']:.0%} | {_f(c['median_recovery_u_over_d'], '.2f')} | "
                    f"{_f(c.get('v_within_window'), '.0%') if 'v_within_window' in c else '-'} | {direction} | {theory} |")
    return "\n".join(rows)


def render_staircase(results: dict, figures: dict[str, str]) -> str:
    cfg = results["config"]
    parts = ["## Staircase: online SGD of the single neuron, independent vs sign-coupled latents", "",
             f"{cfg['neuron']['activation']} neuron, t = {cfg['neuron']['t']}, beta_u = {cfg['mcm']['beta_u']}, "
             f"beta_v = {cfg['mcm']['beta_v']}, "
             f"eta = {cfg['delta']}/d, {cfg['steps_per_d']} d steps, {cfg['seeds']} seeds per cell. "
             "n_hit(u) is the first step with abs(alpha_u) >= "
             f"{cfg['threshold']} (sustained at >= 80% of later records); 'v within window' is the fraction of "
             f"seeds with abs(alpha_v) >= {cfg['v_threshold']} at most {cfg['v_window_per_d']:g} d steps after "
             "n_hit(u). The direction is w projected on span(u, v), normalised per seed (sign: alpha_u >= 0) "
             "and averaged.", "", staircase_table(results["cells"]), ""]
    for name, fig in figures.items():
        parts += [f"![{name}]({fig})", ""]
    parts += ["### Acceptance checks (computed from the runs)", ""]
    for cell, checks in results["acceptance"]["checks"].items():
        for what, ok in checks.items():
            parts.append(f"- {cell}: {what}: **{'pass' if ok else 'FAIL'}**")
    parts += ["", f"All staircase checks pass: **{results['acceptance']['all_pass']}**.", ""]
    return "\n".join(parts)
