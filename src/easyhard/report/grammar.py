"""Figures and Markdown for ``reproduce grammar``, built from the results dict of
:func:`easyhard.experiments.grammar.analyse` (with its ``config``)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from easyhard.report._figure import fmt, save_figure  # noqa: E402


def _cells(results: dict) -> dict[tuple[int, int], dict]:
    """Per (seed, position of n) the analysis cell."""
    ns = list(results["ns"])
    return {(c["seed"], ns.index(c["n"])): c for c in results["cells"]}


def _marker(ax, marker: dict, color: str, label: str, y: float) -> None:
    """A vertical line at the marker's step and a bar over its bootstrap interval at height ``y`` (axes fraction)."""
    ax.axvline(marker["step"], color=color, ls="--", lw=0.9, label=label)
    lo, hi = marker["interval"]
    ax.plot([lo, hi], [y, y], color=color, lw=3, alpha=0.6, transform=ax.get_xaxis_transform(), solid_capstyle="butt")


def plot_ordering(results: dict, path: Path) -> Path:
    """Per n (rows) and seed (columns): D_k (k = 0..depth) on held-out inputs and the cross- and same-split KL against
    training steps, with tau_split and tau_D0 and their 95% bootstrap intervals."""
    steps = np.asarray(results["steps"], dtype=float)
    D = np.asarray(results["D_test"])  # (S, N, K+1, C)
    cross, same = np.asarray(results["cross_kl"]), np.asarray(results["same_kl"])  # (S, N, C)
    S, N = D.shape[:2]
    cells = _cells(results)
    fig, axes = plt.subplots(N, S, figsize=(3.6 * S, 3.0 * N), squeeze=False, sharex=True)
    for (s, j), cell in cells.items():
        ax = axes[j, s]
        for k in range(D.shape[2]):
            ax.plot(steps, D[s, j, k], color=plt.cm.viridis(k / max(D.shape[2] - 1, 1)), lw=1.2 if k else 2,
                    label=f"D_{k}" if k else "D_0 (test loss)")
        ax.plot(steps, cross[s, j], color="C3", lw=2, label="cross-split KL")
        if np.isfinite(same[s, j]).all() and same.shape[-1] == len(steps) and results["config"]["twins"]:
            ax.plot(steps, same[s, j], color="C3", ls=":", lw=1.5, label="same-split KL")
        order = cell["ordering"]
        _marker(ax, order["early"], "C3", "tau_split", 0.96)
        _marker(ax, order["late"], "k", "tau_D0", 0.9)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"n = {cell['n']}, seed {s}: z {order['early_z']:.1f} / {order['late_z']:.1f}", fontsize=8)
        if j == N - 1:
            ax.set_xlabel("training step")
        if s == 0:
            ax.set_ylabel("nats (sum over positions)")
    axes[0, 0].legend(fontsize=6)
    return save_figure(fig, path)


def plot_nn(results: dict, path: Path) -> Path:
    """Histograms of the samples' nearest-neighbour Hamming distance to the own split (first seed, first model) at the
    first checkpoint, tau_NN and the last checkpoint, against the held-out data's (dashed), per n; and the mean
    distance against steps with the data baseline."""
    steps = np.asarray(results["steps"], dtype=float)
    hist = np.asarray(results["nn_hist"])  # (S, N, L+1, C)
    nn_mean = np.asarray(results["nn_mean"])  # (S, N, C)
    base = np.asarray(results["data_nn_mean"])  # (S, N)
    cells = _cells(results)
    N = hist.shape[1]
    fig, axes = plt.subplots(2, N, figsize=(4.2 * N, 6), squeeze=False)
    distances = np.arange(hist.shape[2])
    for j in range(N):
        cell = cells[(0, j)]
        ax = axes[0, j]
        for label, pos, color in (("first", 0, "C0"), ("tau_NN", cell["tau_NN"]["position"], "C2"),
                                  ("last", len(steps) - 1, "C3")):
            ax.step(distances, hist[0, j, :, pos], where="mid", color=color, label=f"{label} (step {int(steps[pos])})")
        ax.axvline(base[0, j], color="k", ls="--", lw=0.9, label="held-out data, mean")
        ax.set_xlabel("Hamming distance to the own split (nearest)")
        ax.set_title(f"n = {results['ns'][j]}", fontsize=8)
        ax.legend(fontsize=6)
        ax = axes[1, j]
        for s in range(nn_mean.shape[0]):
            ax.plot(steps, nn_mean[s, j], color=f"C{s}", label=f"seed {s}")
            ax.axhline(base[s, j], color=f"C{s}", ls="--", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("training step")
        ax.set_ylabel("mean NN distance (dashed: data)")
        ax.legend(fontsize=6)
    return save_figure(fig, path)


def plot_uturn(results: dict, path: Path) -> Path:
    """U-turn overlap ratios r = overlap_model / overlap_BP on own training (solid) and held-out (dashed) sequences
    against steps, one curve per U-turn index (first seed), per n."""
    steps = np.asarray(results["steps"], dtype=float)
    uturn = np.asarray(results["uturn"])  # (S, N, C, U, 2)
    indices = results["config"]["uturn_indices"]
    N = uturn.shape[1]
    fig, axes = plt.subplots(1, N, figsize=(4.2 * N, 3.2), squeeze=False)
    for j in range(N):
        ax = axes[0, j]
        for u, index in enumerate(indices):
            ax.plot(steps, uturn[0, j, :, u, 0], color=f"C{u}", label=f"t = {index}, own")
            ax.plot(steps, uturn[0, j, :, u, 1], color=f"C{u}", ls="--", label=f"t = {index}, held-out")
        ax.axhline(1.0, color="gray", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("training step")
        ax.set_ylabel("overlap ratio model / BP")
        ax.set_title(f"n = {results['ns'][j]}", fontsize=8)
        ax.legend(fontsize=6)
    return save_figure(fig, path)


def plot_bp_kl(results: dict, path: Path) -> Path:
    """KL(BP_0 || BP_k) against t / T for k = 1..depth, with the critical index."""
    bp = results["bp"]
    T = results["config"]["T"]
    levels = np.asarray(bp["kl_levels"], dtype=float) / T
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for k, curve in enumerate(bp["kl_curves"], start=1):
        ax.plot(levels, curve, color=plt.cm.viridis(k / len(bp["kl_curves"])), label=f"k = {k}")
    ax.axvline(results["config"]["critical_index"] / T, color="k", ls="--", lw=0.8, label="t_c")
    ax.set_xscale("log")
    ax.set_xlabel("t / T")
    ax.set_ylabel("KL(BP_0 || BP_k), nats")
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def render_grammar(results: dict, figures: dict[str, str]) -> str:
    """The Markdown section: markers with intervals and verdicts per seed and n, the checks, BP references, figures."""
    config = results["config"]
    lines = ["## Biased generalisation on a hierarchical grammar", "",
             f"Grammar depth {config['depth']} (L = {2 ** config['depth']}), q = {config['q']}, q_eff = {config['q_eff']}; "
             f"{config['splits']} splits and {config['twins']} same-split twins per n and seed; "
             f"{config['train']['steps']} steps, EMA {config['train']['ema_decay']}; t_c = {config['critical_index']} of "
             f"T = {config['T']}. Markers: tau_split = minimum of the cross-split KL (after D_0 has fallen "
             f"{config['gate']:.0%} of the way), tau_D0 = minimum of D_0 = KL(BP_0 || model) at t_c; intervals: 95% "
             "two-way bootstrap (models or pairs, and inputs). Gaps: how much worse each curve is at the other marker, "
             "in bootstrap SE.", "",
             "| seed | n | tau_split [95%] | tau_D0 [95%] | lead (ckpts) [95%] | split KL gap (z) | D_0 gap (z) | "
             "cross-minus-same growth (z) | window log10(tau_D0/tau_split) | tau_NN | ordered |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in results["cells"]:
        o = c["ordering"]
        growth = c.get("gap_growth")
        growth_text = "-" if growth is None else f"{fmt(growth['value'])} ({growth['z']:.1f})"
        lines.append(
            f"| {c['seed']} | {c['n']} | {o['early']['step']} [{o['early']['interval'][0]}, {o['early']['interval'][1]}] | "
            f"{o['late']['step']} [{o['late']['interval'][0]}, {o['late']['interval'][1]}] | {o['lead']} "
            f"[{o['lead_interval'][0]}, {o['lead_interval'][1]}] | {fmt(o['early_gap'])} ({o['early_z']:.1f}) | "
            f"{fmt(o['late_gap'])} ({o['late_z']:.1f}) | "
            f"{growth_text} | "
            f"{c['window']:.2f} [{c['window_interval'][0]:.2f}, {c['window_interval'][1]:.2f}] | "
            f"{c['tau_NN']['step']} | {'yes' if o['ordered'] else 'no'} |")
    bp = results["bp"]
    lines += ["", f"BP: cross-entropy at t_c {bp['ce_test']:.4f} nats (lowest model checkpoint {results['model_ce_min']:.4f}); "
              f"BP posterior samples {bp['grammatical']:.1%} grammatical; test l~ within "
              f"{results['l_tilde_test_max_z']:.1f} SE of 0 at every checkpoint and model.", "",
              "| check | criterion | value | passed |", "|---|---|---|---|"]
    for name, check in results["checks"].items():
        lines.append(f"| {name} | {check['criterion']} | {check['value']} | {'yes' if check['passed'] else 'no'} |")
    lines.append("")
    lines += [f"![{caption}]({name})" for caption, name in figures.items()]
    return "\n".join(lines) + "\n"
