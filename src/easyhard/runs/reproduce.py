"""Reproductions: run registered experiments into one folder, and build the report from saved results only.

``OUT`` receives ``results.json`` ({experiment name: results, ..., "environment"}), ``run.json`` (the command,
every config, package versions and device), ``report.md`` and the figures, each written atomically.
:func:`write_report` is the only way a report is made: a run writes its results, then builds the report
from the JSON text it just wrote, so :func:`rebuild_report` on ``OUT`` gives the identical file.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from easyhard._io import atomic_write_json, atomic_write_text, nonfinite_path
from easyhard._validate import ConfigError
from easyhard.experiments.registry import CellRunner, Progress, RunContext, config_to_dict, get_experiment
from easyhard.runs.io import environment_info

RESULTS_FILE = "results.json"
REPORT_FILE = "report.md"
RUN_FILE = "run.json"
TITLE = "# easyhard reproduction report"


def run_experiments(jobs: Sequence[tuple[str, Any]], out_dir: str | Path, cells: CellRunner | None = None,
                    progress: Callable[[str, Any], Progress] | None = None, restart: bool = False) -> dict[str, dict]:
    """Run each (experiment name, config) with ``OUT`` as its working folder; returns results by name.

    ``progress(name, config)`` gives the progress callback of one experiment; ``cells`` runs the independent
    cells of the experiments that have them (default: in this process); ``restart`` is passed on in the
    :class:`~easyhard.experiments.registry.RunContext`.
    """
    out = Path(out_dir)
    results = {}
    for name, config in jobs:
        experiment = get_experiment(name)
        ctx = RunContext(out_dir=out, cells=cells, restart=restart)
        if progress is not None:
            ctx = dataclasses.replace(ctx, progress=progress(name, config))
        results[name] = experiment.run(config, ctx)
    return results


def write_outputs(out_dir: str | Path, results: dict[str, dict], command: dict) -> dict[str, Path]:
    """results.json, run.json, report.md and the figures; returns the written paths by role."""
    out = Path(out_dir)
    env = environment_info()
    saved = {**results, "environment": env}
    paths = {"run": atomic_write_json(out / RUN_FILE, {"config": command, **env}),
             "results": atomic_write_json(out / RESULTS_FILE, saved)}
    paths.update(write_report(out, json.loads(paths["results"].read_text())))
    return paths


def run_command(jobs: Sequence[tuple[str, Any]], profile: str | None) -> dict:
    """What run.json records of a reproduction: the command, experiment names, profile and each full config."""
    return {"command": " ".join(["reproduce", *(name for name, _ in jobs)]) if len(jobs) == 1 else "reproduce",
            "experiments": [name for name, _ in jobs], "profile": profile,
            "configs": {name: config_to_dict(config) for name, config in jobs}}


def write_report(out_dir: str | Path, saved: dict) -> dict[str, Path]:
    """report.md and every figure from saved results ({name: results, ..., "environment"}), in their order."""
    out = Path(out_dir)
    parts = [TITLE, ""]
    paths: dict[str, Path] = {}
    for name, result in saved.items():
        if name == "environment":
            continue
        experiment = get_experiment(name)
        if experiment.report is not None:
            files, section = experiment.report(result, out)
        else:
            files, section = [], _scalar_section(name, result)
        paths.update({f: out / f for f in files})
        parts.append(section)
    if "environment" in saved:
        parts += ["## Environment", "", "```", str(saved["environment"]), "```", ""]
    paths["report"] = atomic_write_text(out / REPORT_FILE, "\n".join(parts))
    return paths


def _scalar_section(name: str, result: dict) -> str:
    """The section of an experiment without a report of its own: its scalar results as a table."""
    rows = [f"| {key} | {value} |" for key, value in result.items()
            if value is None or isinstance(value, (str, int, float, bool))]
    return "\n".join([f"## {name}", "", "| result | value |", "|---|---|", *rows, ""])


def rebuild_report(out_dir: str | Path) -> dict[str, Path]:
    """Rebuild report.md and the figures of ``OUT`` from ``OUT/results.json`` alone."""
    path = Path(out_dir) / RESULTS_FILE
    try:
        saved = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist: OUT must be the folder of a finished run") from None
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path} cannot be read ({type(err).__name__}); rerun the experiment") from None
    if not isinstance(saved, dict):
        raise ConfigError(f"{path} is not a results file of easyhard (expected a JSON object)")
    bad = nonfinite_path(saved)
    if bad is not None:
        raise ConfigError(f"{path} holds a non-finite number at {bad}; rerun the experiment")
    try:
        return write_report(out_dir, saved)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as err:
        raise ConfigError(f"{path} does not hold the results of a finished run ({type(err).__name__}: "
                          f"{' '.join(str(err).split())[:120]}); rerun the experiment") from None
