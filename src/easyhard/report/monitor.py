"""Figure and Markdown of a monitored run, built from the records of :class:`easyhard.monitor.Monitor`
(docs/monitor.md)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402

from easyhard.report._figure import save_figure  # noqa: E402

STATUS_COLOURS = {"generalising": "#d9f0d3", "biased": "#fee391", "overfitting": "#fdae6b", "memorising": "#f4a6a6"}


def _measured(records: list[dict]) -> list[dict]:
    """Records of successful updates (failed ones carry "error")."""
    return [r for r in records if "error" not in r]


def _bands(ax, steps: np.ndarray, statuses: list[str]) -> None:
    """Shade the step axis by status: each update's status from the previous update's step to its own."""
    edges = np.concatenate([[steps[0]], steps])
    for lo, hi, status in zip(edges[:-1], edges[1:], statuses):
        ax.axvspan(lo, hi if hi > lo else lo + 1e-9, color=STATUS_COLOURS[status], lw=0, zorder=0)


def plot_monitor(records: list[dict], path: Path) -> Path | None:
    """Curves against step with the status bands: held-out and training loss (mean over levels) with their SE
    bands, f_mem at every threshold with its bootstrap interval, the nearest-neighbour gap and, with a twin, the
    paired similarity; the recommended checkpoints as vertical lines. None when there is nothing to plot."""
    rec = _measured(records)
    if not rec:
        return None
    steps = np.array([r["step"] for r in rec], dtype=float)
    statuses = [r["status"] for r in rec]
    twin = "pair_similarity" in rec[-1]
    fig, axes = plt.subplots(1, 3 + twin, figsize=(4.2 * (3 + twin), 3.4), squeeze=False)
    axes = axes[0]
    for ax in axes:
        _bands(ax, steps, statuses)
    test = np.array([r["test_loss_mean"] for r in rec])
    test_se = np.array([r["test_loss_mean_se"] for r in rec])
    axes[0].plot(steps, test, "o-", color="k", ms=3, label="held-out")
    axes[0].fill_between(steps, test - test_se, test + test_se, color="k", alpha=0.15)
    axes[0].plot(steps, [r["train_loss_mean"] for r in rec], "s-", color="C0", ms=3, label="training subset")
    axes[0].set(ylabel="eps-loss (mean over levels)", title="losses")
    for label in sorted(rec[-1]["f_mem"], key=Fraction):  # thresholds in increasing order, whatever the JSON order
        values = np.array([r["f_mem"][label]["value"] for r in rec])
        lo, hi = (np.array([r["f_mem"][label]["interval"][k] for r in rec]) for k in (0, 1))
        axes[1].plot(steps, values, "o-", ms=3, label=f"k = {label}")
        axes[1].fill_between(steps, lo, hi, alpha=0.2)
    axes[1].set(ylabel="f_mem", title="memorisation", ylim=(-0.02, 1.02))
    gap = np.array([r["nn_gap"] for r in rec])
    gap_se = np.array([r["nn_gap_se"] for r in rec])
    axes[2].plot(steps, gap, "o-", color="C3", ms=3)
    axes[2].fill_between(steps, gap - gap_se, gap + gap_se, color="C3", alpha=0.2)
    axes[2].axhline(0, color="grey", lw=0.8)
    axes[2].set(ylabel="NN similarity: own - held-out", title="nearest-neighbour gap")
    if twin:
        pair = np.array([r["pair_similarity"] for r in rec])
        pair_se = np.array([r["pair_similarity_se"] for r in rec])
        axes[3].plot(steps, pair, "o-", color="C2", ms=3)
        axes[3].fill_between(steps, pair - pair_se, pair + pair_se, color="C2", alpha=0.2)
        axes[3].set(ylabel="paired similarity", title="twin (disjoint split)")
    best = rec[-1]["recommended"]
    for ax in axes:
        ax.axvline(best["held_out_loss_min"], color="k", ls="--", lw=0.9)
        if best.get("split_similarity_peak") is not None:
            ax.axvline(best["split_similarity_peak"], color="C2", ls=":", lw=1.2)
        ax.set_xlabel("training step")
        if steps.min() > 0 and steps.max() / steps.min() >= 8:  # log-spaced updates: a log step axis
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(matplotlib.ticker.StrMethodFormatter("{x:.0f}"))
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    axes[0].legend(fontsize=7)
    axes[1].legend(fontsize=7)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in STATUS_COLOURS.values()]
    fig.legend(handles, list(STATUS_COLOURS), loc="upper center", bbox_to_anchor=(0.5, 1.0), ncol=4, fontsize=8,
               frameon=False, title="status found at each update (shaded back to the previous update); dashed: "
                                    "held-out-loss minimum, dotted: twin similarity peak", title_fontsize=8)
    return save_figure(fig, path, rect=(0, 0, 1, 0.84))


def _f(x: float | str, digits: int = 4) -> str:
    return x if isinstance(x, str) else f"{x:.{digits}g}"


def monitor_markdown(records: list[dict], config: dict) -> str:
    """report.md of a monitored run: the current status with its evidence, the recommended checkpoints, and one
    table row per update."""
    rec = _measured(records)
    lines = ["# Monitor report", ""]
    if not rec:
        return "\n".join(lines + ["No successful update yet."] + _errors(records)) + "\n"
    last = rec[-1]
    lines += [f"Status at step {last['step']}: **{last['status']}**.", ""]
    lines += [f"- {e}" for e in last["evidence"]] or ["- no indicator has moved by more than "
                                                         f"{config['z']:g} SE from its extremum"]
    best = last["recommended"]
    lines += ["", f"Recommended checkpoint: step {best['held_out_loss_min']} (held-out loss minimum)"
              + (f"; step {best['split_similarity_peak']} (twin split-similarity peak)"
                 if best.get("split_similarity_peak") is not None else "") + ".", ""]
    twin = "pair_similarity" in last
    head = ["step", "status", "held-out loss (SE)", "train loss", "f_mem k=1/3 [95%]", "NN d1 train / test (median)",
            "NN gap (SE)", "KL_hat"] + (["paired similarity (SE)"] if twin else [])
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rec:
        f = r["f_mem"].get("1/3") or next(iter(r["f_mem"].values()))
        row = [str(r["step"]), r["status"], f"{r['test_loss_mean']:.4f} ({r['test_loss_mean_se']:.4f})",
               f"{r['train_loss_mean']:.4f}", f"{f['value']:.3f} [{f['interval'][0]:.3f}, {f['interval'][1]:.3f}]",
               f"{r['nn_train']['q50']:.3g} / {r['nn_test']['q50']:.3g}", f"{r['nn_gap']:.3f} ({r['nn_gap_se']:.3f})",
               _f(r["quality_kl"], 3)]
        if twin:
            row.append(f"{r['pair_similarity']:.3f} ({r['pair_similarity_se']:.3f})" if "pair_similarity" in r else "")
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "Losses are eps-MSE per pixel at the levels " + ", ".join(map(str, last["levels"]))
              + "; the figure is monitor.png."]
    return "\n".join(lines + _errors(records)) + "\n"


def _errors(records: list[dict]) -> list[str]:
    failed = [r for r in records if "error" in r]
    return ["", "Failed updates:", *[f"- step {r['step']}: {r['error']}" for r in failed]] if failed else []
