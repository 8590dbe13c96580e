"""Figure and Markdown for ``easyhard diagnose``, built from the dict of
:func:`easyhard.experiments.diagnose.diagnose` (which this module does not import: report sits below
experiments)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from easyhard.metrics.memorization import threshold_label  # noqa: E402
from easyhard.report._figure import figure_png, fmt  # noqa: E402


def diagnosis_figure(result: dict) -> bytes:
    """PNG bytes: (left) histograms of d1/d2 of samples (and of test points, the reference) against train
    with the threshold lines; (right) nearest-neighbour L2 distances samples->train, samples->test and
    test->train (reference)."""
    per = result["per_sample"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    ax = axes[0]
    bins = np.linspace(0, 1, 41)
    ax.hist(per["ratio"], bins=bins, density=True, alpha=0.6, color="C0", label="samples -> train")
    if "test_ratio" in per:
        ax.hist(per["test_ratio"], bins=bins, density=True, histtype="step", lw=1.5, color="k",
                label="test -> train (reference)")
    for i, t in enumerate(result["settings"]["thresholds"]):
        ax.axvline(t, color="C3", ls=("--", ":", "-.")[i % 3], lw=1, label=f"k = {threshold_label(t)}")
    ax.set_xlim(0, 1)
    ax.set_xlabel("d1 / d2 (nearest / second-nearest training point)")
    ax.set_ylabel("density")
    ax.set_title("copies: d1/d2 < k", fontsize=9)
    ax.legend(fontsize=7)
    ax = axes[1]
    series = [("samples -> train", per["d1"], "C0")]
    if "d_test" in per:
        series += [("samples -> test", per["d_test"], "C1"), ("test -> train (reference)", per["test_d1"], "k")]
    values = np.concatenate([np.asarray(v, dtype=float) for _, v, _ in series])
    edges = np.linspace(values.min(), values.max() if values.max() > values.min() else values.min() + 1, 41)
    for name, v, color in series:
        ax.hist(v, bins=edges, density=True, histtype="step", lw=1.5, color=color, label=name)
    ax.set_xlabel("nearest-neighbour L2 distance")
    ax.set_ylabel("density")
    ax.set_title("nearest-neighbour distances", fontsize=9)
    ax.legend(fontsize=7)
    return figure_png(fig)


def _row(cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _table(header: list[str], rows: list[list]) -> list[str]:
    return [_row(header), _row(["---"] * len(header)), *(_row(r) for r in rows), ""]


def _interval(d: dict, spec: str = ".3g") -> str:
    return f"[{fmt(d['interval'][0], spec)}, {fmt(d['interval'][1], spec)}]"


def _shape(s: dict) -> str:
    return f"{s['n']} of shape ({', '.join(map(str, s['shape']))}), values in [{s['min']:.3g}, {s['max']:.3g}]"


def render_diagnosis(result: dict, figure: str) -> str:
    """The report: inputs, flags, f_mem table, distance table, split comparison, closest samples, figure."""
    inputs, settings, split = result["inputs"], result["settings"], result["split"]
    level = f"{settings['level']:.0%}"
    lines = ["# Memorisation diagnostics", "",
             f"- samples: {_shape(inputs['samples'])}",
             f"- train: {_shape(inputs['train'])}"]
    if inputs["test"] is not None:
        lines.append(f"- test: {_shape(inputs['test'])}")
    lines += [f"- distances: L2 on the flattened values (dimension {inputs['dimension']}); bootstrap over samples "
              f"with {settings['n_boot']} resamples, seed {settings['seed']}", "", "## Flags", ""]
    lines += [f"- **{f['id']}**: {f['message']}" for f in result["flags"]] or ["- none: no sign of memorisation "
                                                                               "or of a bias towards train"]
    lines += ["", "## Memorisation fraction f_mem", ""]
    rows = [[threshold_label(m["threshold"]), m["copies"], fmt(m["value"], ".4f"), _interval(m, ".4f"),
             fmt(m["se"], ".2g"), fmt(m["wilson_upper"], ".4f")] for m in result["memorization"]]
    lines += _table(["k", "copies", "f_mem", f"{level} CI (bootstrap)", "SE", "Wilson upper"], rows)
    main = next(m for m in result["memorization"] if m["threshold"] == settings["main_threshold"])
    k = threshold_label(main["threshold"])
    if main["copies"]:
        lines.append(f"A sample is a copy when its nearest training point is much nearer than the second nearest "
                     f"(d1/d2 < k). At k = {k}, {main['copies']} of {main['n_samples']} samples are copies: the "
                     f"model reproduces training images.")
    else:
        lines.append(f"A sample is a copy when d1/d2 < k. At k = {k} no sample is a copy; with {main['n_samples']} "
                     f"samples, f_mem is below {main['wilson_upper']:.2%} ({level} Wilson upper bound).")
    lines += ["", "## Nearest-neighbour distances", ""]
    keys = ["mean", "q05", "q25", "median", "q75", "q95"]
    table = [("samples -> train, d1", result["nn_train"]["d1"]), ("samples -> train, d2", result["nn_train"]["d2"]),
             ("samples -> train, d1/d2", result["nn_train"]["ratio"])]
    if split is not None:
        table += [("samples -> test, d1", split["nn_test"]["d1"]),
                  ("test -> train, d1 (reference)", split["reference"]["d1"]),
                  ("test -> train, d1/d2 (reference)", split["reference"]["ratio"])]
    lines += _table(["distance", *keys], [[name, *(fmt(s[key], ".4g") for key in keys)] for name, s in table])
    nn = result["nn_train"]
    lines.append(f"Samples lie at a median L2 distance {nn['d1']['median']:.4g} from their nearest training point "
                 f"(median d1/d2 {nn['ratio']['median']:.3g}; d1/d2 near 1 means no training point stands out); "
                 f"{nn['distinct_nearest']} distinct training points are nearest to some sample, "
                 f"{nn['exact_copies']} samples equal one exactly.")
    if split is not None:
        ref = split["reference"]
        lines += ["", f"Held-out test images, novel by construction, lie at a median {ref['d1']['median']:.4g} from "
                     f"train (median d1/d2 {ref['ratio']['median']:.3g}): samples nearer than that lean towards "
                     f"the training set."]
        lines += ["", "## Own (train) versus other (test) split", ""]
        sub = split["subsampled"]
        gap, closer, nearer = split["gap"], split["closer_to_train"], split["nearer_than_reference"]
        rows = [["NN similarity to train (own)", fmt(split["own"], ".4f"), "", "", ""],
                ["NN similarity to test (other)", fmt(split["other"], ".4f"), "", "", ""],
                ["gap own - other", fmt(gap["value"], ".4f"), _interval(gap, ".4f"), fmt(gap["se"], ".2g"), "0"],
                ["fraction nearer (L2) to train than to test", fmt(closer["value"], ".3f"), _interval(closer),
                 fmt(closer["se"], ".2g"), "0.5"],
                [f"fraction nearer to train than {1 - nearer['expected']:.0%} of test images "
                 f"(d1 < {nearer['distance']:.4g})", fmt(nearer["value"], ".3f"), _interval(nearer),
                 fmt(nearer["se"], ".2g"), f"{nearer['expected']:g}"]]
        lines += _table(["", "value", f"{level} CI", "SE", "novel samples"], rows)
        lines.append(f"Similarity: per-image-standardised cosine to the nearest point. Compared on equal-sized "
                     f"sets of {split['subset_size']}" + (f" (a seeded random subset of {sub})" if sub else "")
                     + ", since nearest-neighbour similarity grows with the size of the set. A gap above 0 "
                     "(interval excluding 0) means samples lean towards their own training data: biased "
                     "generalisation without copies if f_mem is 0.")
    lines += ["", "## Closest samples", ""]
    lines += _table(["sample", "nearest train", "d1", "d1/d2"],
                    [[c["sample"], c["train"], fmt(c["d1"], ".4g"), fmt(c["ratio"], ".3g")] for c in result["closest"]])
    lines.append("Indices count from 0 in load order (sorted file names, batches concatenated).")
    lines += ["", f"![d1/d2 ratios and nearest-neighbour distances]({figure})", ""]
    return "\n".join(lines)
