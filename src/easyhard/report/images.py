"""Figures and Markdown for ``reproduce images``, built from its saved results dict."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from easyhard.report._figure import fmt, save_figure  # noqa: E402

_STYLE = {"real": "-", "clone": "--"}
_LEVELS = (10, 50, 300)


def _steps(run: dict) -> np.ndarray:
    return np.maximum(np.asarray(run["steps"], dtype=float), 1.0)  # step 0 drawn at 1 on the log axis


def plot_loss_ratio(results: dict, path: Path) -> Path:
    """Test eps-loss over the plug-in Wiener loss L_G^test(i) against training steps, real vs clone arm."""
    indices = results["config"]["eval_indices"]
    l_test = np.asarray(results["reference"]["L_G_test"])
    levels = [i for i in _LEVELS if i in indices]
    fig, axes = plt.subplots(1, len(levels), figsize=(4.2 * len(levels), 3.4), squeeze=False)
    for ax, level in zip(axes[0], levels):
        k = indices.index(level)
        for run in results["runs"]:
            ax.plot(_steps(run), np.asarray(run["loss"])[:, k] / l_test[k], _STYLE[run["arm"]],
                    color=f"C{run['seed']}", label=f"{run['arm']}, seed {run['seed']}")
        ax.axhline(1.0, color="gray", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("training step")
        ax.set_title(f"i = {level}: loss / Gaussian (Wiener) MMSE", fontsize=8)
    axes[0][0].set_ylabel("L(step, i) / L_G^test(i)")
    axes[0][0].legend(fontsize=7)
    return save_figure(fig, path)


def plot_sample_errors(results: dict, path: Path) -> Path:
    """Covariance error E_Sigma and higher-order error E_R of generated samples, with both floors."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, key in zip(axes, ("E_Sigma", "E_R")):
        for run in results["runs"]:
            ax.plot(_steps(run), run[key], _STYLE[run["arm"]], color=f"C{run['seed']}",
                    label=f"{run['arm']}, seed {run['seed']}")
        ax.axhline(results["reference"]["sampling_floor"][key], color="gray", ls=":", label="sampling floor")
        ax.axhline(results["reference"]["sampler_floor"][key], color="k", ls="-.", lw=0.8,
                   label="sampler floor (exact Wiener)")
        ax.set_xscale("log")
        ax.set_yscale("log" if key == "E_Sigma" else "linear")
        ax.set_xlabel("training step")
        ax.set_title({"E_Sigma": "covariance error E_Sigma", "E_R": "higher-order error E_R (ICA sparsity)"}[key],
                     fontsize=8)
    axes[0].legend(fontsize=6)
    return save_figure(fig, path)


def plot_delta_w(results: dict, path: Path) -> Path:
    """Distance delta_W of the real arm's denoiser to the Wiener denoiser against steps, per noise level."""
    indices = results["config"]["eval_indices"]
    fig, ax = plt.subplots(figsize=(5.4, 3.6))
    real = [r for r in results["runs"] if r["arm"] == "real"][0]
    for k, level in enumerate(indices):
        if level <= 300:
            ax.plot(_steps(real)[1:], np.asarray(real["delta_W"])[1:, k], label=f"i = {level}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("delta_W (relative to the Gaussian MMSE)")
    ax.set_title(f"real arm, seed {real['seed']}: distance to the Wiener denoiser", fontsize=8)
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def render_images(results: dict, figures: dict[str, str]) -> str:
    """Markdown section: floors, per-seed checks, PCA emergence."""
    ref, checks = results["reference"], results["checks"]
    lines = ["## Distributional simplicity bias on natural images (reproduce images)", "",
             "Real arm versus its Gaussian clone (same initialisation, mini-batches and noise).", "",
             "| floor | E_Sigma | E_R | E_K |", "|---|---|---|---|"]
    for name in ("sampling_floor", "sampler_floor"):
        f = ref[name]
        lines.append(f"| {name.replace('_', ' ')} | {f['E_Sigma']:.3f} | {f['E_R']:.3f} | {f['E_K']:.3f} |")
    lines += ["", "| seed | early gap (i <= 100) | final gap (i <= 50) | real / L_G^test at i = 10, 25, 50 | "
              "clone min ratio | tau_Sigma | tau_R | E_R real / clone |", "|---|---|---|---|---|---|---|---|"]
    for seed, row in checks["seeds"].items():
        lines.append(f"| {seed} | {fmt(row['early_max_gap_low_noise'])} | {row['final_gap_low_noise']:.3f} | "
                     f"{', '.join(f'{r:.2f}' for r in row['real_final_ratio_low_noise'])} | "
                     f"{row['clone_min_ratio']:.3f} | {fmt(row['tau_Sigma'], '.0f')} | {fmt(row['tau_R'], '.0f')} | "
                     f"{row['E_R_final_real']:.2f} / {row['E_R_final_clone']:.2f} |")
    lines += ["", "Checks per seed:", ""]
    for seed, row in checks["seeds"].items():
        lines.append(f"- seed {seed}: " + ", ".join(f"{k} {'pass' if v else 'FAIL'}" for k, v in row["pass"].items()))
    lines += ["", "PCA-mode emergence (real arm): " + "; ".join(
        f"seed {s}: beta = {fmt(e['beta'])} {'' if e['interval'] is None else '[{:.2f}, {:.2f}]'.format(*e['interval'])}"
        f" ({e['modes_crossed']}/{e['modes']} modes crossed)" for s, e in results["emergence"].items()), "",
        f"All image checks pass: {checks['all_pass']}", ""]
    lines += [f"![{caption}]({name})\n" for caption, name in figures.items()]
    return "\n".join(lines)
