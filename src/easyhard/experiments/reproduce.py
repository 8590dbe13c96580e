"""``easyhard reproduce``: the theory report, the staircase, the scaling laws and the image experiment into
one folder.

Writes report.md (the parts that ran, figures embedded), results.json ({"theory", "staircase",
"scaling", "images", "memorization", "environment"}), exponents.json, run.json (config, package versions, device) and the PNG figures,
each atomically.
"""

from __future__ import annotations

from pathlib import Path

from easyhard.report import plot_loss_curves, render_markdown
from easyhard.report.staircase import plot_loss, plot_overlaps, render_staircase
from easyhard.runs import atomic_write_json, atomic_write_text, environment_info


def _staircase_section(out: Path, staircase: dict) -> tuple[list[str], str]:
    """The staircase's overlap and loss figures and its Markdown: (figure file names, section)."""
    over = plot_overlaps(staircase["cells"], out / "staircase_overlaps.png")
    loss = plot_loss(staircase["cells"], out / "staircase_loss.png")
    figures = {"overlaps against steps/d": over.name, "excess loss against steps/d": loss.name}
    return list(figures.values()), render_staircase(staircase, figures)


def _scaling_section(out: Path, scaling: dict) -> tuple[list[str], str]:
    """The scaling-law, collapse and phase-diagram figures and the Markdown section."""
    from easyhard.report.scaling import plot_collapse, plot_phase, plot_scaling, render_scaling

    laws = plot_scaling(scaling["parts"], out / "scaling_laws.png")
    collapse = plot_collapse(scaling["parts"], out / "scaling_collapse.png")
    phase = plot_phase(scaling["phase"], out / "scaling_phase.png")
    figures = {"censored median recovery time against d": laws.name,
               "overlaps against steps / d^(k-1)": collapse.name,
               "fraction recovered against log n / log d and the step constant": phase.name}
    return list(figures.values()), render_scaling(scaling, figures)


def _images_section(out: Path, images: dict) -> tuple[list[str], str]:
    """The loss-ratio, sample-error and Wiener-distance figures of the image experiment and its section."""
    from easyhard.report.images import plot_delta_w, plot_loss_ratio, plot_sample_errors, render_images

    ratio = plot_loss_ratio(images, out / "images_loss_ratio.png")
    errors = plot_sample_errors(images, out / "images_sample_errors.png")
    dist = plot_delta_w(images, out / "images_delta_w.png")
    figures = {"test loss over the Gaussian MMSE, real vs clone": ratio.name,
               "covariance and higher-order errors of generated samples": errors.name,
               "distance to the Wiener denoiser": dist.name}
    return list(figures.values()), render_images(images, figures)


def _memorization_section(out: Path, memorization: dict) -> tuple[list[str], str]:
    """The memorisation, timescale, sample-split and denoiser figures and the Markdown section."""
    from easyhard.report.memorization import (
        plot_denoisers, plot_memorization, plot_split, plot_timescales, render_memorization)

    figures = {"memorisation fraction against steps and steps / n":
               plot_memorization(memorization, out / "memorization_fmem.png").name,
               "timescales against n": plot_timescales(memorization, out / "memorization_timescales.png").name,
               "cross-split similarity, its floor and the test loss":
               plot_split(memorization, out / "memorization_split.png").name,
               "distance to the empirical and exact denoisers; train/test gap per level":
               plot_denoisers(memorization, out / "memorization_denoisers.png").name}
    return list(figures.values()), render_memorization(memorization, figures)


_SECTIONS = {"staircase": _staircase_section, "scaling": _scaling_section, "images": _images_section,
             "memorization": _memorization_section}


def write_reproduction(out_dir: str | Path, config: dict, theory: dict | None = None,
                       staircase: dict | None = None, scaling: dict | None = None,
                       images: dict | None = None, memorization: dict | None = None) -> dict[str, Path]:
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
    for name, result in (("staircase", staircase), ("scaling", scaling), ("images", images),
                         ("memorization", memorization)):
        if result is not None:
            files, section = _SECTIONS[name](out, result)
            paths.update({f: out / f for f in files})
            parts.append(section)
            results[name] = result
    results["environment"] = env
    paths["run"] = atomic_write_json(out / "run.json", {"config": config, **env})
    paths["results"] = atomic_write_json(out / "results.json", results)
    paths["report"] = atomic_write_text(out / "report.md", "\n".join(parts))
    return paths
