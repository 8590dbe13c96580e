"""Figures and Markdown for ``reproduce memorization``, built from the results dict of
:func:`easyhard.experiments.memorization.analyse` (with its ``config``)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from easyhard.report._figure import fmt, save_figure  # noqa: E402


def plot_memorization(results: dict, path: Path) -> Path:
    """Median memorisation fraction over replicates against training steps, and against steps / n."""
    steps = np.asarray(results["steps"], dtype=float)
    threshold = results["config"]["thresholds"].index(results["config"]["threshold"])
    fmem = np.asarray(results["f_mem"])[:, :, :, threshold]  # (seeds, n, splits, C)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for j, n in enumerate(results["ns"]):
        curves = fmem[:, j].reshape(-1, len(steps))
        lo, mid, hi = np.percentile(curves, [25, 50, 75], axis=0)
        for ax, x in zip(axes, (steps, steps / n)):
            ax.plot(x, mid, color=f"C{j}", label=f"n = {n}")
            ax.fill_between(x, lo, hi, color=f"C{j}", alpha=0.2)
    for ax, label in zip(axes, ("training step", "training step / n")):
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.axhline(results["config"]["mem_level"], color="gray", ls=":", lw=0.8)
    axes[0].set_ylabel(f"f_mem (k = {results['config']['threshold']:.3g}), median and quartiles")
    axes[0].legend(fontsize=7)
    return save_figure(fig, path)


def plot_timescales(results: dict, path: Path) -> Path:
    """tau_mem (Kaplan-Meier median with interval, and its fit), tau_gen, tau_split and tau_loss against n."""
    ns = np.asarray(results["ns"], dtype=float)
    fit = results["fits"][str(results["config"]["threshold"])]
    fig, ax = plt.subplots(figsize=(5.2, 3.8))
    if "kappa" in fit:
        dims = np.asarray(fit["dims"], dtype=float)
        err = np.abs(np.asarray(fit["median_intervals"]).T - np.asarray(fit["medians"]))
        ax.errorbar(dims, fit["medians"], yerr=err, fmt="o", color="C3", label="tau_mem (median, 95% CI)")
        ax.plot(dims, fit["prefactor"] * dims ** fit["kappa"], color="C3", lw=0.8,
                label=f"fit: slope {fit['kappa']:.2f} [{fit['interval'][0]:.2f}, {fit['interval'][1]:.2f}]")
    for key, color, marker in (("tau_loss", "C0", "s"), ("tau_split", "C2", "^")):
        values = np.asarray(results[key], dtype=float)  # (seeds, n)
        for s, row in enumerate(values):
            ax.scatter(ns * (1 + 0.03 * s), row, color=color, marker=marker, s=14,
                       label=key.replace("tau_", "tau_") if s == 0 else None)
    if "tau_gen_median" in results:
        ax.plot(ns, results["tau_gen_median"], "k--", lw=0.8, label="tau_gen (median)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training-set size n")
    ax.set_ylabel("training step")
    ax.legend(fontsize=6)
    return save_figure(fig, path)


def plot_split(results: dict, path: Path) -> Path:
    """Per n: cross-split similarity of coupled samples (solid), its independent-noise floor (dotted) and the
    test loss (dashed, right axis), means over units, one colour per seed; markers at tau_split (triangle, on the
    similarity) and tau_loss (square, on the loss) with their 95% bootstrap intervals as horizontal bars."""
    steps = np.asarray(results["steps"], dtype=float)
    ns = results["ns"]
    fig, axes = plt.subplots(1, len(ns), figsize=(3.3 * len(ns), 3.2), squeeze=False)
    sim, floor, loss = (np.asarray(results[k]) for k in ("similarity", "floor", "test_loss"))
    for j, (ax, n) in enumerate(zip(axes[0], ns)):
        right = ax.twinx()
        for s in range(sim.shape[0]):
            ax.plot(steps, sim[s, j], color=f"C{s}", lw=1)
            ax.plot(steps, floor[s, j], color=f"C{s}", lw=0.7, ls=":")
            right.plot(steps, loss[s, j], color=f"C{s}", lw=0.7, ls="--")
            ordering = results["ordering"][s][j]
            for axis, curve, marker, symbol in ((ax, sim, ordering["early"], "^"), (right, loss, ordering["late"], "s")):
                step, (lo, hi) = marker["step"], marker["interval"]
                axis.errorbar([step], [curve[s, j, marker["position"]]], xerr=[[step - lo], [hi - step]], fmt=symbol,
                              color=f"C{s}", ms=4, capsize=2, lw=0.8)
        ax.set_xscale("log")
        ax.set_title(f"n = {n}", fontsize=8)
        ax.set_xlabel("training step")
        right.tick_params(labelsize=6)
    axes[0][0].set_ylabel("cross-split similarity (solid), floor (dotted)")
    return save_figure(fig, path)


def plot_denoisers(results: dict, path: Path) -> Path:
    """Distance to the empirical-optimal denoiser (solid) and to the exact one (dashed, mixture only) at three
    noise levels, and the train/test loss gap per level at the last checkpoint, per n."""
    steps = np.asarray(results["steps"], dtype=float)
    levels = results["levels"]
    picks = [0, len(levels) // 4, len(levels) // 2]
    emp = np.asarray(results["emp_distance"])  # (seeds, n, L, C)
    exact = np.asarray(results["exact_distance"]) if "exact_distance" in results else None
    gap = np.asarray(results["loss_gap"])  # (seeds, n, L, C)
    fig, axes = plt.subplots(1, len(picks) + 1, figsize=(3.3 * (len(picks) + 1), 3.2))
    for ax, p in zip(axes, picks):
        for j, n in enumerate(results["ns"]):
            ax.plot(steps, np.median(emp[:, j, p], 0), color=f"C{j}", label=f"n = {n}")
            if exact is not None:
                ax.plot(steps, np.median(exact[:, j, p], 0), color=f"C{j}", ls="--")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"index {levels[p]}: distance to D_emp (solid), D* (dashed)", fontsize=7)
        ax.set_xlabel("training step")
    axes[0].legend(fontsize=6)
    for j, n in enumerate(results["ns"]):
        axes[-1].plot(levels, np.median(gap[:, j, :, -1], 0), color=f"C{j}", label=f"n = {n}")
    axes[-1].axhline(0, color="gray", lw=0.8)
    axes[-1].set_xlabel("noise index")
    axes[-1].set_title("test - train eps-loss at the last checkpoint", fontsize=7)
    return save_figure(fig, path)


def render_memorization(results: dict, figures: dict[str, str]) -> str:
    """Markdown section: timescales, fits, per-seed extrema and the checks."""
    c = results["config"]
    lines = ["## Memorisation and biased generalisation (reproduce memorization)", "",
             f"Data: {c['data']} (d = {c['d'] if c['data'] == 'mixture' else 'image'}); n in {results['ns']}, "
             f"{c['splits']} disjoint splits x {c['seeds']} seeds per n, one model per split, "
             f"{c['train']['steps']} steps, {len(results['steps'])} checkpoints.", "",
             "| threshold k | slope of tau_mem vs n | 95% interval | medians (fitted n) |", "|---|---|---|---|"]
    for k, fit in results["fits"].items():
        if "kappa" in fit:
            name = k if k == "first copy" else f"{float(k):.3g}"
            lines.append(f"| {name} | {fit['kappa']:.3f} | [{fit['interval'][0]:.3f}, {fit['interval'][1]:.3f}] | "
                         f"{', '.join(fmt(m, '.0f') for m in fit['medians'])} |")
        else:
            lines.append(f"| {k} | - | - | {fit['error']} |")
    lines += ["", "| n | tau_gen (median) | tau_split per seed | tau_loss per seed | lead (checkpoints) | "
              "peak - floor |", "|---|---|---|---|---|---|"]
    tau_gen = results.get("tau_gen_median", [None] * len(results["ns"]))
    for j, n in enumerate(results["ns"]):
        col = lambda key, spec=".0f": ", ".join(fmt(row[j], spec) for row in results[key])  # noqa: E731
        height = ", ".join(f"{p[j] - f[j]:.2f}" for p, f in zip(results["peak"], results["peak_floor"]))
        lines.append(f"| {n} | {fmt(tau_gen[j], '.0f')} | {col('tau_split')} | {col('tau_loss')} | "
                     f"{col('lead_checkpoints', 'd')} | {height} |")
    lines += ["", f"Phase ordering per seed (docs/theory/generalization.md section 10): markers with 95% bootstrap "
              f"intervals; similarity drop = S(tau_split) - S(tau_loss) and loss excess = L(tau_split) - L(tau_loss) "
              f"with their paired-bootstrap SE and z = gap / SE (criterion z > {c['ordering_z']:g}).", "",
              "| n | seed | tau_split [95%] | tau_loss [95%] | lead [95%] (checkpoints) | similarity drop (SE, z) | "
              "loss excess (SE, z) | ordered |", "|---|---|---|---|---|---|---|---|"]
    for j, n in enumerate(results["ns"]):
        for s, row in enumerate(results["ordering"]):
            lines.append(_ordering_row(n, s, row[j]))
    slopes = results["slopes"]
    lines += ["", "Slopes of log tau against log n (fitted n): " + ", ".join(f"{k} {v:.2f}" for k, v in slopes.items())
              + f"; window slope(tau_loss) - slope(tau_split) = {results['window_slope']:.2f} "
              f"[{results['window_slope_interval'][0]:.2f}, {results['window_slope_interval'][1]:.2f}] (bootstrap over seeds).",
              "", "| check | value | criterion | result |", "|---|---|---|---|"]
    for name, check in results["checks"].items():
        lines.append(f"| {name} | {_short(check['value'])} | {check['criterion']} | "
                     f"{'pass' if check['passed'] else 'FAIL'} |")
    lines += ["", f"All memorisation checks pass: {all(ch['passed'] for ch in results['checks'].values())}", ""]
    lines += [f"![{caption}]({name})\n" for caption, name in figures.items()]
    return "\n".join(lines)


def _ordering_row(n: int, seed: int, o: dict) -> str:
    """One table row of a phase ordering (:meth:`easyhard.metrics.ordering.PhaseOrdering.to_dict`)."""

    def marker(m: dict) -> str:
        return f"{m['step']} [{m['interval'][0]}, {m['interval'][1]}]"

    def gap(value: float, se: float, z: float | None) -> str:
        return f"{value:.4f} ({se:.4f}, {'inf' if z is None else format(z, '.1f')})"

    return (f"| {n} | {seed} | {marker(o['early'])} | {marker(o['late'])} | {o['lead']} [{o['lead_interval'][0]}, "
            f"{o['lead_interval'][1]}] | {gap(o['early_gap'], o['early_se'], o['early_z'])} | "
            f"{gap(o['late_gap'], o['late_se'], o['late_z'])} | {'yes' if o['ordered'] else 'no'} |")


def _short(value) -> str:
    """A compact rendering of a check's value (numbers to 3 significant digits)."""
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_short(v) for v in value) + "]"
    return fmt(value) if isinstance(value, float) else str(value)
