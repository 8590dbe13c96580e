"""``easyhard reproduce``: the theory report, the staircase and the scaling laws into one folder.

Writes report.md (the parts that ran, figures embedded), results.json ({"theory", "staircase",
"scaling", "environment"}), exponents.json, run.json (config, package versions, device) and the PNG figures,
each atomically.
"""

from __future__ import annotations

from pathlib import Path

from easyhard.report import plot_loss_curves, render_markdown
from easyhard.report.staircase import plot_loss, plot_overlaps, render_staircase
from easyhard.runs import atomic_write_json, atomic_write_text, environment_info


def write_staircase_figures(out: Path, staircase: dict) -> dict[str, str]:
    """The overlap and loss figures of the staircase; returns {caption: file name}."""
    over = plot_overlaps(staircase["cells"], out / "staircase_overlaps.png")
    loss = plot_loss(staircase["cells"], out / "staircase_loss.png")
    return {"overlaps against steps/d": over.name, "excess loss against steps/d": loss.name}


def write_scaling_figures(out: Path, scaling: dict) -> dict[str, str]:
    """The scaling-law, collapse and phase-diagram figures; returns {caption: file name}."""
    from easyhard.report.scaling import plot_collapse, plot_phase, plot_scaling

    laws = plot_scaling(scaling["parts"], out / "scaling_laws.png")
    collapse = plot_collapse(scaling["parts"], out / "scaling_collapse.png")
    phase = plot_phase(scaling["phase"], out / "scaling_phase.png")
    return {"censored median recovery time against d": laws.name,
            "overlaps against steps / d^(k-1)": collapse.name,
            "fraction recovered against log n / log d and the step constant": phase.name}


def write_images_figures(out: Path, images: dict) -> dict[str, str]:
    """The loss-ratio, sample-error and Wiener-distance figures of the image experiment."""
    from easyhard.report.images import plot_delta_w, plot_loss_ratio, plot_sample_errors

    ratio = plot_loss_ratio(images, out / "images_loss_ratio.png")
    errors = plot_sample_errors(images, out / "images_sample_errors.png")
    dist = plot_delta_w(images, out / "images_delta_w.png")
    return {"test loss over the Gaussian MMSE, real vs clone": ratio.name,
            "covariance and higher-order errors of generated samples": errors.name,
            "distance to the Wiener denoiser": dist.name}


def write_reproduction(out_dir: str | Path, config: dict, theory: dict | None = None,
                       staircase: dict | None = None, scaling: dict | None = None,
                       images: dict | None = None) -> dict[str, Path]:
    """Write whichever parts were run; returns the written paths by role."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    env = environment_info()
    paths: dict[str, Path] = {}
    parts = ["# easyhard reproduction report", ""]
    results: dict = {}
    if theory is not None:
        theory = {**theory, "environment": env}
        paths["loss_curves"] = plot_loss_curves(theory["exponents"], out / "loss_curves.png")
        parts.append(render_markdown(theory, paths["loss_curves"].name).replace("# easyhard theory report",
                                                                             "## Theory: exponents and oracle MSEs"))
        table = {row["setting"]["name"]: {k: {f: d[f] for f in ("exponent", "slope", "samples", "step", "coefficient")}
                                          for k, d in row["directions"].items()} for row in theory["exponents"]}
        paths["exponents"] = atomic_write_json(out / "exponents.json", table)
        results["theory"] = theory
    if staircase is not None:
        figures = write_staircase_figures(out, staircase)
        for name in figures.values():
            paths[name] = out / name
        parts.append(render_staircase(staircase, figures))
        results["staircase"] = staircase
    if scaling is not None:
        from easyhard.report.scaling import render_scaling

        figures = write_scaling_figures(out, scaling)
        for name in figures.values():
            paths[name] = out / name
        parts.append(render_scaling(scaling, figures))
        results["scaling"] = scaling
    if images is not None:
        from easyhard.report.images import render_images

        figures = write_images_figures(out, images)
        for name in figures.values():
            paths[name] = out / name
        parts.append(render_images(images, figures))
        results["images"] = images
    results["environment"] = env
    paths["run"] = atomic_write_json(out / "run.json", {"config": config, **env})
    paths["results"] = atomic_write_json(out / "results.json", results)
    paths["report"] = atomic_write_text(out / "report.md", "\n".join(parts))
    return paths
