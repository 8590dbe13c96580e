"""Memorisation diagnostics for samples of any model (docs/theory/generalization.md, sections 2 and 5).

:func:`diagnose` compares generated samples with the training set (and optionally a held-out test set
of the same distribution) in pixel space and returns a JSON-ready dict; :func:`write_diagnosis` writes
results.json, report.md, run.json and a figure. Pure: nothing is printed.

Every number is a function of :mod:`easyhard.metrics` (nearest neighbours, copies, ratios, similarities, and the
percentile bootstrap of :mod:`easyhard.metrics.bootstrap`):

- Memorisation fraction f_mem: a sample is a copy when d1/d2 < k (L2 distances to its nearest and
  second-nearest training point), at every threshold k (default 1/4, 1/3, 1/2), with the percentile
  bootstrap interval, bootstrap SE and Wilson upper bound. One k = 2 search serves every threshold.
- Nearest-neighbour statistics of samples to train: d1, d2 and d1/d2 (quantiles), the closest samples.
- With a test set: the same distances of samples to test, and the reference distances of test points
  to train (what novel data of the same law looks like, including the copy rate of the detector on test
  points: non-zero means train and test overlap); the own- (train) versus other- (test) split nearest-
  neighbour similarity (per-image-standardised cosine), its gap with a bootstrap interval over samples,
  and the fraction of samples nearer (L2) to train than to test.

Fair split comparison [choice]: nearest-neighbour similarity grows with the size of the reference
set, so when train and test differ in size the larger one is replaced by a random subset (seeded by
``seed``) of the smaller one's size before the own-versus-other comparison; intervals are over samples,
conditional on that subset. For novel samples of the data law the gap is then ~0 and the fraction
nearer to train ~1/2.

Distances are L2 on the flattened values as given (the distances are unchanged by centring on the
training mean). A d1/d2 ratio with d1 = d2 = 0 (a duplicated training image copied exactly) is
recorded as 0 and counted as a copy, as in :func:`easyhard.metrics.memorization.copies_from_distances`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from easyhard._io import atomic_write_bytes, atomic_write_json, atomic_write_text
from easyhard._validate import ConfigError, check_int_at_least, check_n_boot, check_seed
from easyhard.experiments.registry import Experiment, RunContext
from easyhard.metrics import (
    bootstrap_mean, copies_from_distances, distance_ratio, fraction_with_interval, nearest_neighbours,
    nearest_similarity, threshold_label)

DEFAULT_THRESHOLDS = (1 / 4, 1 / 3, 1 / 2)
#: the threshold of the headline number and the flags (the one nearest to it among those given)
MAIN_THRESHOLD = 1 / 3
#: samples listed as the closest to a training image
N_CLOSEST = 10
#: reference quantile: fraction of samples nearer to train than this quantile of test->train distances
REFERENCE_QUANTILE = 0.05
FIGURE = "diagnose.png"


def _summary(x) -> dict:
    x = np.asarray(x, dtype=np.float64)
    q = np.percentile(x, [5, 25, 50, 75, 95])
    return {"mean": float(x.mean()), "min": float(x.min()), "q05": float(q[0]), "q25": float(q[1]),
            "median": float(q[2]), "q75": float(q[3]), "q95": float(q[4]), "max": float(x.max())}


def _stats(x: torch.Tensor) -> dict:
    flat = x.reshape(len(x), -1).to(torch.float64)
    return {"n": len(x), "shape": list(x.shape[1:]), "mean": float(flat.mean()), "std": float(flat.std()),
            "min": float(flat.min()), "max": float(flat.max())}


def _mean(values: torch.Tensor, n_boot: int, level: float, seed: list[int]) -> dict:
    """{"value", "interval", "se", "boot_mean"} of per-sample values (:func:`~easyhard.metrics.bootstrap_mean`)."""
    boot = bootstrap_mean(values.numpy(), n_boot, level, seed).to_dict()
    return boot | {"interval": list(boot["interval"])}


def check_thresholds(thresholds) -> tuple[float, ...]:
    """Sorted distinct thresholds, each in (0, 1)."""
    try:
        values = sorted({float(t) for t in thresholds})
    except (TypeError, ValueError):
        raise ConfigError(f"thresholds must be numbers in (0, 1) (got {thresholds!r})") from None
    if not values or not all(0 < t < 1 for t in values):
        raise ConfigError(f"thresholds must be one or more numbers in (0, 1) (got {list(thresholds)})")
    return tuple(values)


def _rows(n_rows: int, n: int, seed: list[int]) -> np.ndarray:
    """``n`` of ``n_rows`` row indices drawn without replacement by a generator seeded by ``seed``, sorted."""
    return np.sort(np.random.default_rng(seed).choice(n_rows, n, replace=False))


def subsample(x: torch.Tensor, n: int | None, seed: int = 0) -> tuple[torch.Tensor, np.ndarray | None]:
    """At most ``n`` rows of ``x`` drawn without replacement (seeded), in their original order, and their
    indices (None when all rows are kept)."""
    if n is None or n >= len(x):
        return x, None
    check_int_at_least("max_samples", n, 1)
    idx = _rows(len(x), n, [seed, 4])
    return x[torch.from_numpy(idx)], idx


def check_inputs(samples, train, test=None) -> None:
    """Tensors (n, ...) of finite real values with items of one shape, and at least 2 training points."""
    parts = {"samples": samples, "train": train} | ({} if test is None else {"test": test})
    for name, x in parts.items():
        if not isinstance(x, torch.Tensor) or x.ndim < 2 or len(x) == 0:
            raise ConfigError(f"{name} must be a tensor of shape (n, ...) with n >= 1")
        if x.is_complex() or not torch.isfinite(x).all():
            raise ConfigError(f"{name} must hold finite real values")
    shapes = {name: tuple(x.shape[1:]) for name, x in parts.items()}
    if len(set(shapes.values())) > 1:
        got = ", ".join(f"{name} {s}" for name, s in shapes.items())
        raise ConfigError(f"samples, train and test must have items of one shape (got {got})")
    if len(train) < 2:
        raise ConfigError(f"train must hold at least 2 points for the d1/d2 ratio (got {len(train)})")


def _scale_mismatch(a: dict, b: dict) -> bool:
    """Means more than half a standard deviation apart, or standard deviations more than a factor 2 apart."""
    sd = max(b["std"], 1e-12)
    return abs(a["mean"] - b["mean"]) > 0.5 * sd or not 0.5 <= a["std"] / sd <= 2.0


def diagnose(samples: torch.Tensor, train: torch.Tensor, test: torch.Tensor | None = None,
             thresholds=DEFAULT_THRESHOLDS, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """Memorisation diagnostics of ``samples`` (m, ...) against ``train`` (n, ...) and optionally ``test``.

    Returns a JSON-ready dict: inputs, settings, memorization (one entry per threshold), nn_train,
    closest, split (None without test), flags and per_sample (the distances behind the figure).
    """
    check_inputs(samples, train, test)
    thresholds = check_thresholds(thresholds)
    n_boot = check_int_at_least("n_boot", n_boot, 10)
    if not 0 < level < 1:
        raise ConfigError(f"level must lie in (0, 1) (got {level})")
    main_t = min(thresholds, key=lambda t: abs(t - MAIN_THRESHOLD))
    inputs = {"samples": _stats(samples), "train": _stats(train), "test": None if test is None else _stats(test),
              "dimension": int(np.prod(samples.shape[1:]))}

    dist, idx = nearest_neighbours(samples, train, k=2)  # one search for every threshold
    ratio = distance_ratio(dist)
    memorization = [fraction_with_interval(copies_from_distances(dist, t), t, n_boot, level, seed).to_dict()
                    for t in thresholds]
    for entry in memorization:
        entry["copies"] = int(round(entry["value"] * entry["n_samples"]))
        entry["interval"] = list(entry["interval"])
    order = np.lexsort((dist[:, 0].numpy(), ratio.numpy()))[:N_CLOSEST]
    closest = [{"sample": int(i), "train": int(idx[i, 0]), "d1": float(dist[i, 0]), "ratio": float(ratio[i])}
               for i in order]
    nn_train = {"d1": _summary(dist[:, 0]), "d2": _summary(dist[:, 1]), "ratio": _summary(ratio),
                "exact_copies": int((dist[:, 0] == 0).sum()), "distinct_nearest": int(idx[:, 0].unique().numel())}
    per_sample = {"d1": dist[:, 0].tolist(), "d2": dist[:, 1].tolist(), "ratio": ratio.tolist()}
    result = {"inputs": inputs,
              "settings": {"thresholds": list(thresholds), "main_threshold": main_t, "n_boot": n_boot, "seed": seed,
                           "level": level, "distance": "L2 on flattened values",
                           "similarity": "per-image-standardised cosine"},
              "memorization": memorization, "nn_train": nn_train, "closest": closest, "split": None}
    if test is not None:
        result["split"], extra = _split(samples, train, test, dist, thresholds, n_boot, level, seed)
        per_sample |= extra
    result["flags"] = _flags(result, main_t)
    result["per_sample"] = per_sample
    return result


def _split(samples, train, test, dist, thresholds, n_boot, level, seed) -> tuple[dict, dict]:
    """Samples against test, test against train (reference), and the fair own-versus-other comparison."""
    d_test = nearest_neighbours(samples, test, k=1)[0][:, 0]
    ref, _ = nearest_neighbours(test, train, k=2)
    ref_ratio = distance_ratio(ref)
    ref_copies = [{"threshold": t, "copies": int(c.sum()), "value": float(c.double().mean())}
                  for t in thresholds for c in [copies_from_distances(ref, t)]]
    cut = float(np.quantile(ref[:, 0].numpy(), REFERENCE_QUANTILE))
    nearer = _mean((dist[:, 0] < cut).double(), n_boot, level, [seed, 3])
    nearer |= {"expected": REFERENCE_QUANTILE, "distance": cut}

    size = min(len(train), len(test))
    own_set, other_set = (x if len(x) == size else x[torch.from_numpy(_rows(len(x), size, [seed, 1]))]
                          for x in (train, test))
    s_own, s_other = nearest_similarity(samples, own_set), nearest_similarity(samples, other_set)
    gap = _mean(s_own - s_other, n_boot, level, [seed, 2])  # the gap of split_similarity, with its bootstrap
    l2_own = dist[:, 0] if len(own_set) == len(train) else nearest_neighbours(samples, own_set, k=1)[0][:, 0]
    l2_other = d_test if len(other_set) == len(test) else nearest_neighbours(samples, other_set, k=1)[0][:, 0]
    closer = (l2_own < l2_other).double() + 0.5 * (l2_own == l2_other).double()
    closer = _mean(closer, n_boot, level, [seed, 5]) | {"expected": 0.5}
    split = {"nn_test": {"d1": _summary(d_test)},
             "reference": {"d1": _summary(ref[:, 0]), "ratio": _summary(ref_ratio), "copies": ref_copies},
             "nearer_than_reference": nearer,
             "subset_size": size,
             "subsampled": None if len(train) == len(test) else ("train" if len(train) > len(test) else "test"),
             "own": float(s_own.mean()), "other": float(s_other.mean()), "gap": gap, "closer_to_train": closer}
    extra = {"d_test": d_test.tolist(), "test_d1": ref[:, 0].tolist(), "test_ratio": ref_ratio.tolist(),
             "similarity_own": s_own.tolist(), "similarity_other": s_other.tolist()}
    return split, extra


def _flags(result: dict, main_t: float) -> list[dict]:
    """Warnings read off the numbers (id, one-line message)."""
    flags = []
    label = threshold_label(main_t)
    mem = next(m for m in result["memorization"] if m["threshold"] == main_t)
    n = mem["n_samples"]
    if mem["copies"]:
        flags.append({"id": "copies", "message": f"{mem['copies']} of {n} samples ({mem['value']:.2%}) are near-copies "
                                                 f"of a training image (d1/d2 < {label})"})
    exact = result["nn_train"]["exact_copies"]
    if exact:
        flags.append({"id": "exact_copies", "message": f"{exact} of {n} samples equal a training image exactly"})
    inputs = result["inputs"]
    for name in ("samples", "test"):
        if inputs[name] is not None and _scale_mismatch(inputs[name], inputs["train"]):
            a, b = inputs[name], inputs["train"]
            flags.append({"id": f"scale_{name}", "message": (
                f"{name} and train differ in scale (mean {a['mean']:.3g} vs {b['mean']:.3g}, std {a['std']:.3g} vs "
                f"{b['std']:.3g}): check that both use the same value range")})
    split = result["split"]
    if split is None:
        return flags
    ref = next(c for c in split["reference"]["copies"] if c["threshold"] == main_t)
    if ref["copies"]:
        flags.append({"id": "test_overlap", "message": (
            f"{ref['copies']} test images are near-copies of training images (d1/d2 < {label}): train and test "
            f"overlap, so copies among samples may be duplicates in the data")})
    gap, closer = split["gap"], split["closer_to_train"]
    sizes = f"equal-sized sets of {split['subset_size']}"
    if gap["interval"][0] > 0:
        flags.append({"id": "closer_to_train", "message": (
            f"samples are closer to train than to test: NN similarity gap {gap['value']:.3g} "
            f"[{gap['interval'][0]:.3g}, {gap['interval'][1]:.3g}] ({sizes}); "
            f"{closer['value']:.0%} of samples are nearer (L2) to train")})
    elif gap["interval"][1] < 0:
        flags.append({"id": "closer_to_test", "message": (
            f"samples are closer to test than to train: NN similarity gap {gap['value']:.3g} "
            f"[{gap['interval'][0]:.3g}, {gap['interval'][1]:.3g}] ({sizes}); check that train and test are not "
            f"swapped")})
    nearer = split["nearer_than_reference"]
    if nearer["interval"][0] > REFERENCE_QUANTILE:
        flags.append({"id": "nearer_than_novel", "message": (
            f"{nearer['value']:.1%} of samples are nearer to train than {1 - REFERENCE_QUANTILE:.0%} of test images "
            f"are (expected {REFERENCE_QUANTILE:.0%} for novel samples)")})
    return flags


@dataclass(frozen=True)
class DiagnoseConfig:
    """A diagnosis: the folders of samples, training data and (optional) test data (PNG/JPEG, .npy or .pt;
    :func:`easyhard.data.load_tensor_folder`), the d1/d2 thresholds, bootstrap resamples, the seed of the
    bootstrap and of the subsets, and an optional cap on the number of samples (a seeded random subset)."""

    samples: str = ""
    train: str = ""
    test: str | None = None
    thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS
    n_boot: int = 1000
    seed: int = 0
    max_samples: int | None = None

    def __post_init__(self):
        for name in ("samples", "train"):
            if not getattr(self, name):
                raise ConfigError(f"{name} must name a folder of samples / training data (got nothing)")
        object.__setattr__(self, "thresholds", check_thresholds(self.thresholds))
        check_n_boot("n_boot", self.n_boot)
        check_seed("seed", self.seed)
        if self.max_samples is not None:
            check_int_at_least("max_samples", self.max_samples, 1)


def run_diagnose(config: DiagnoseConfig, ctx: RunContext | None = None) -> dict:
    """Load the folders, check them, subsample, and :func:`diagnose`; the closest samples keep their index in
    the loaded folder and ``inputs.samples.loaded`` counts the samples read."""
    from easyhard.data.folders import load_tensor_folder

    samples = load_tensor_folder(config.samples, "samples")
    train = load_tensor_folder(config.train, "train")
    test = None if config.test is None else load_tensor_folder(config.test, "test")
    n_loaded = len(samples)
    check_inputs(samples, train, test)
    samples, subset = subsample(samples, config.max_samples, config.seed)
    result = diagnose(samples, train, test, config.thresholds, config.n_boot, config.seed)
    result["inputs"]["samples"]["loaded"] = n_loaded
    if subset is not None:
        for row in result["closest"]:
            row["sample"] = int(subset[row["sample"]])
    return result


def report_diagnose(result: dict, out: Path) -> tuple[list[str], str]:
    """The diagnosis figure and the Markdown report."""
    from easyhard.report.diagnose import diagnosis_figure, render_diagnosis

    atomic_write_bytes(Path(out) / FIGURE, diagnosis_figure(result))
    return [FIGURE], render_diagnosis(result, FIGURE)


def summarize_diagnose(result: dict) -> list[str]:
    """f_mem at each threshold with its interval, the split-similarity gap and the flags."""
    main_t = result["settings"]["main_threshold"]
    several = len(result["memorization"]) > 1
    lines = [f"f_mem(d1/d2 < {threshold_label(m['threshold'])}) = {m['value']:.4f} "
             f"[{m['interval'][0]:.4f}, {m['interval'][1]:.4f}], Wilson upper {m['wilson_upper']:.4f}"
             + ("  <- main" if m["threshold"] == main_t and several else "") for m in result["memorization"]]
    if result["split"] is not None:
        gap = result["split"]["gap"]
        lines.append(f"own - other NN similarity gap (train vs test, {result['split']['subset_size']} each) = "
                     f"{gap['value']:.4f} [{gap['interval'][0]:.4f}, {gap['interval'][1]:.4f}]")
    return lines + [f"flag {flag['id']}: {flag['message']}" for flag in result["flags"]]


DIAGNOSE = Experiment("diagnose", DiagnoseConfig, run_diagnose,
                      "memorisation diagnostics of any model's samples against its training (and test) data",
                      report=report_diagnose, summary=summarize_diagnose)


def write_diagnosis(out_dir: str | Path, result: dict, config: dict, environment: dict) -> dict[str, Path]:
    """results.json (result and ``environment``), report.md, run.json (config and environment) and the figure,
    each written atomically; returns the paths by role. The caller supplies the environment metadata
    (:func:`easyhard.runs.io.environment_info`)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files, report = report_diagnose(result, out)
    return {"figure": out / files[0],
            "results": atomic_write_json(out / "results.json", {**result, "environment": environment}),
            "run": atomic_write_json(out / "run.json", {"config": config, **environment}),
            "report": atomic_write_text(out / "report.md", report)}
