"""Across monitored runs of different training-set sizes: the memorisation onset against n (docs/monitor.md,
"Across runs").

A run's onset is the first update whose status is "memorising" (f_mem's lower bootstrap bound above the monitor's
``memorising_level``); a run that never gets there is right-censored. Per n, the Kaplan-Meier median over runs;
over n, the power law tau_mem = C n^gamma with a bootstrap interval over runs and a prediction for a larger n
(:func:`~easyhard.metrics.bootstrap_scaling`; a censored run counts as never reaching its onset).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from easyhard._validate import ConfigError
from easyhard.metrics.scaling import bootstrap_scaling, km_median
from easyhard.monitor.core import META, RECORDS, read_records


def run_onset(folder: str | Path) -> dict:
    """{"folder", "n", "onset" (step, or None if censored), "last_step", "threshold", "level"} of one monitored
    run."""
    folder = Path(folder)
    meta_path, records_path = folder / META, folder / RECORDS
    if not meta_path.is_file() or not records_path.is_file():
        raise ConfigError(f"{folder} is not a monitored run (expected {META} and {RECORDS})")
    try:
        identity = json.loads(meta_path.read_text())["identity"]
        n = int(identity["n_train"])
        level = float(identity["config"]["memorising_level"])
    except (OSError, ValueError, KeyError, TypeError):
        raise ConfigError(f"{meta_path} is not a monitor's metadata file") from None
    records = [r for r in read_records(records_path) if "error" not in r]
    if not records:
        raise ConfigError(f"{records_path} holds no successful update")
    onset = next((r["step"] for r in records if r["status"] == "memorising"), None)
    return {"folder": str(folder), "n": n, "onset": onset, "last_step": records[-1]["step"], "level": level}


def summarize(folders: Sequence[str | Path], predict: float | None = None, n_boot: int = 1000,
              seed: int = 0) -> dict:
    """Onsets of every run, Kaplan-Meier medians per n, the power-law fit over n (at least two sizes with a
    median reached) and the predicted onset at ``predict`` (default twice the largest n) with its interval."""
    if not folders:
        raise ConfigError("give at least one monitored run folder")
    runs = [run_onset(f) for f in folders]
    by_n: dict[int, list[float]] = {}
    for run in runs:
        by_n.setdefault(run["n"], []).append(-1.0 if run["onset"] is None else float(run["onset"]))
    medians = {n: km_median(np.array(t)) for n, t in sorted(by_n.items())}
    out = {"runs": runs, "medians": {str(n): (m if np.isfinite(m) else None) for n, m in medians.items()}}
    reached = {n: np.array(t) for n, t in by_n.items() if np.isfinite(medians[n])}
    target = float(predict) if predict is not None else 2.0 * max(by_n)
    if len(reached) < 2:
        out["fit"] = {"error": f"the onset median is reached at {len(reached)} size(s); a fit needs two "
                               f"(sizes: {sorted(by_n)})"}
        return out
    fit = bootstrap_scaling(reached, n_boot=n_boot, seed=seed, predict=[target])
    out["fit"] = {"gamma": fit.kappa, "interval": list(fit.interval), "prefactor": fit.prefactor,
                  "sizes": list(fit.dims), "runs_per_size": [len(reached[n]) for n in fit.dims],
                  "predicted": {"n": target, "onset": fit.predictions[0][1], "interval": list(fit.predictions[0][2:])}}
    return out


def summary_lines(summary: dict) -> list[str]:
    """Human-readable lines of :func:`summarize`'s result (for the CLI)."""
    lines = [f"{r['folder']}: n = {r['n']}, onset " + (f"at step {r['onset']}" if r["onset"] is not None
                                                        else f"not reached by step {r['last_step']} (censored)")
             for r in summary["runs"]]
    lines.append("Kaplan-Meier median onset per n: " + ", ".join(
        f"n = {n}: {m if m is not None else 'not reached'}" for n, m in summary["medians"].items()))
    fit = summary["fit"]
    if "error" in fit:
        lines.append(f"no fit: {fit['error']}")
        return lines
    lo, hi = fit["interval"]
    p = fit["predicted"]
    lines.append(f"onset ~ n^{fit['gamma']:.2f} [95%: {lo:.2f}, {hi:.2f}] over n = {fit['sizes']} "
                 f"(runs per n: {fit['runs_per_size']})")
    lines.append(f"predicted onset at n = {p['n']:g}: step {p['onset']:.0f} [95%: {p['interval'][0]:.0f}, "
                 f"{p['interval'][1]:.0f}]" + (" (one run per n: the interval cannot show run-to-run spread)"
                                                if max(fit["runs_per_size"]) == 1 else ""))
    return lines
