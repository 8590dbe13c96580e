"""Markdown tables and the loss-curve figure of the theory report, built only from saved results."""

from __future__ import annotations

from pathlib import Path


def _fmt(x, spec: str = ".4g") -> str:
    return "-" if x is None else format(x, spec)


def exponent_table(rows: list[dict]) -> str:
    """Markdown table: one line per setting with analytic exponent, slope, leading term and cost."""
    lines = ["| setting | dir | k* | expected | slope | leading term | coefficient | samples | step |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        for key, d in row["directions"].items():
            cond = f" (alpha_u = {d['conditional_on']['alpha_u']})" if d["conditional_on"] else ""
            lines.append(
                f"| {row['setting']['name']} | {key}{cond} | {_fmt(d['exponent'], 'd')} | {_fmt(d['expected'], 'd')}"
                f" | {_fmt(d['slope'], '.3f')} | {d['term'] or '-'} | {_fmt(d['coefficient'])} | {d['samples']}"
                f" | {d['step']} |")
    return "\n".join(lines)


def mse_table(block: dict) -> str:
    lines = [f"**{block['setting']}**", "",
             "| t | u: Bayes | u: Wiener | v: Bayes | v: Wiener | v: gain |", "|---|---|---|---|---|---|"]
    for r in block["rows"]:
        gain = r["v"]["linear"] - r["v"]["bayes"]
        lines.append(f"| {r['t']:g} | {r['u']['bayes']:.5f} | {r['u']['linear']:.5f} | {r['v']['bayes']:.5f}"
                     f" | {r['v']['linear']:.5f} | {gain:.5f} |")
    return "\n".join(lines)


def plot_loss_curves(rows: list[dict], path: Path) -> Path:
    """Log-log |L(alpha) - L(0)| against alpha for u and v of every setting (slope = exponent)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from easyhard.report._figure import save_figure

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
    for ax, key in zip(axes, ("u", "v")):
        for row in rows:
            c = row["curves"]
            ys = [max(y, 1e-300) for y in c[key]]
            if max(c[key]) < 1e-10:
                continue
            ax.loglog(c["alpha"], ys, label=f"{row['setting']['name']} (k*={row['directions'][key]['exponent']})")
        for k in (1, 2, 3, 4):
            ax.loglog(c["alpha"], [1e-2 * a**k / 0.1**k for a in c["alpha"]], "k:", lw=0.6)
        ax.set_xlabel(r"overlap $\alpha$")
        ax.set_title(f"direction {key}" + (" (v: at alpha_u of the coupled models)" if key == "v" else ""))
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel(r"$|L(\alpha) - L(0)|$")
    axes[1].legend(fontsize=6, loc="lower right")
    return save_figure(fig, path)


def render_markdown(results: dict, figure: str | None) -> str:
    parts = ["# easyhard theory report", "",
             "Diffusion information exponent k* of the tied single-neuron denoiser "
             "D(x_t) = c x_t + a w sigma(w.x_t) on the mixed cumulant model (analytic, from the Hermite "
             "coefficients) with the log-log slope of |L(alpha) - L(0)| on alpha in [0.02, 0.2] as cross-check. "
             "For coupled latents the v row is the exponent once u is learned.", "",
             exponent_table(results["exponents"]), "",
             f"All exponents match the predictions of docs/theory/mcm.md section 6.2: **{results['all_match']}**.", ""]
    if figure:
        parts += [f"![loss curves]({figure})", ""]
    parts += ["## Per-direction MSE of the exact denoisers (quadrature)", ""]
    for block in results["oracle_mse"]:
        parts += [mse_table(block), ""]
    env = results.get("environment", {})
    parts += ["## Environment", "", "```", str(env), "```", ""]
    return "\n".join(parts)
