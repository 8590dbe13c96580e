"""Parameter sweeps: a TOML spec expanded into runs, each with a stable id and a folder, and a results table.

A sweep file names an experiment (see :mod:`easyhard.experiments.registry`), fixed config fields and a grid::

    experiment = "exponents"
    [base]                  # fixed config fields
    t = 0.5
    [grid]                  # every combination, in file order (the first field varies slowest)
    activation = ["tanh", "relu"]
    beta_v = [2.0, 5.0]

Layout of the output folder OUT::

    OUT/sweep.json              the spec, the swept fields, the run ids in grid order, a summary
    OUT/results.parquet         one row per finished run, in grid order
    OUT/runs/<id>/config.json   experiment, full config, swept fields
    OUT/runs/<id>/metrics.json  everything run() returned
    OUT/runs/<id>/environment.json
    OUT/runs/<id>/status.json   state (done / failed), wall seconds, backend, error, the SHA-256 of the
                                metrics and of the config (:func:`easyhard._io.json_sha256`); written last

The run id is the first 12 hex digits of the SHA-256 of the canonical JSON of ``[experiment, config]`` with
the full config (defaults included, after validation), so the same run gets the same folder in any sweep.
Re-running a sweep skips the runs that are done and retries failed ones. A run is done only if its folder
verifies (:func:`run_state`): status.json says done, metrics.json parses to a dict of finite numbers with the
checksum in status.json, and config.json holds the run's own config; any other folder is pending and runs
again, so nothing unverified reaches the table. A run whose metrics hold NaN or infinity is recorded as
failed (a one-line error naming the metric), never as a number. Every file is written atomically (temporary
file + rename), status.json last: a killed sweep loses at most the runs in progress. OUT, OUT/runs and the
run folders must be folders and sweep.json, results.parquet and the run files files: else ConfigError
(one line naming the path) before any run starts.

Table columns: ``run_id``, the swept fields (bare names), ``config.<field>`` for every config field,
``metrics.<name>`` for every scalar metric (lists and dicts stay in metrics.json); wall time is in
status.json only, so tables from different backends compare equal.
"""

from __future__ import annotations

import collections
import datetime
import hashlib
import io
import itertools
import json
import time
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from easyhard._io import json_sha256, nonfinite_path
from easyhard._validate import ConfigError
from easyhard.experiments.registry import (
    CellCache,
    canonical_json,
    config_fields,
    config_to_dict,
    get_experiment,
    make_config,
    qualified_field,
    resolve_target,
    settable_fields,
)
from easyhard.runs.backends import Backend, RunResult, Task, make_backend
from easyhard.runs.io import atomic_write_bytes, atomic_write_json, atomic_write_text, environment_info

SWEEP_EXTRA_MESSAGE = "`easyhard sweep` needs the 'sweep' extra for its results table: pip install 'easyhard[sweep]'"
SPEC_KEYS = ("experiment", "base", "grid")
TABLE_FILE = "results.parquet"
SWEEP_FILE = "sweep.json"
RUNS_DIR = "runs"
RUN_FILES = ("config.json", "metrics.json", "environment.json", "status.json")
ID_LENGTH = 12
SCALARS = (str, int, float, bool, type(None))


@dataclass(frozen=True)
class SweepSpec:
    """What to sweep: the experiment name, fixed config fields and the grid (field -> values, in order)."""

    experiment: str
    base: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    source: str | None = None

    def __post_init__(self):
        if not isinstance(self.experiment, str) or not self.experiment:
            raise ConfigError(f"experiment must be a non-empty string (got {self.experiment!r})")
        grid = {}
        for name, values in self.grid.items():
            if not isinstance(values, (list, tuple)) or not values:
                raise ConfigError(f"grid.{name} must be a non-empty array of values (got {values!r})")
            grid[name] = tuple(values)
            if name in self.base:
                raise ConfigError(f"field {name!r} is both fixed ([base] / --set) and swept ([grid] / --grid)")
        object.__setattr__(self, "base", dict(self.base))
        object.__setattr__(self, "grid", grid)

    def to_dict(self) -> dict:
        """JSON-able form (recorded in sweep.json)."""
        return {"experiment": self.experiment, "base": dict(self.base),
                "grid": {k: list(v) for k, v in self.grid.items()}, "source": self.source}


@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep: its place in the grid, id, validated config and the values of the swept fields."""

    index: int
    run_id: str
    experiment: str
    config: Any
    config_dict: dict[str, Any]
    swept: dict[str, Any]


@dataclass(frozen=True)
class SweepSummary:
    """Outcome of :func:`run_sweep`: counts of this invocation and where the table is. ``discarded``: the runs
    whose status said done but whose folder did not verify (:func:`run_state`), run again."""

    out: Path
    table: Path
    run_ids: tuple[str, ...]
    done: int
    skipped: int
    failed: dict[str, str]  # run id -> one-line error
    discarded: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.failed


# ----- the spec -------------------------------------------------------------------------------------------

def load_spec(path: str | Path) -> SweepSpec:
    """Read a sweep file (TOML with keys ``experiment``, ``[base]``, ``[grid]``); ConfigError if it is bad."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"sweep file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"sweep file {path} cannot be read: {' '.join(str(err).split())}") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"sweep file {path} is not valid TOML: {' '.join(str(err).split())}") from None
    for key in data:
        if key not in SPEC_KEYS:
            raise ConfigError(f"sweep file {path}: unknown key {key!r} (allowed: {', '.join(SPEC_KEYS)})")
    if "experiment" not in data:
        raise ConfigError(f"sweep file {path}: missing key 'experiment' (the name of the experiment to run)")
    for key in ("base", "grid"):
        if not isinstance(data.get(key, {}), dict):
            raise ConfigError(f"sweep file {path}: {key} must be a table [{key}] of config fields")
    return SweepSpec(data["experiment"], data.get("base", {}), data.get("grid", {}), str(path))


def parse_value(text: str) -> Any:
    """A command-line value by TOML rules (``5`` int, ``5.0`` float, ``true`` bool, ``"x"`` string, ``[1, 2]``
    array); text that is not a TOML value is a plain string (``tanh``)."""
    try:
        parsed = tomllib.loads(f"value = {text}")
    except tomllib.TOMLDecodeError:
        return text
    if set(parsed) != {"value"}:
        return text
    value = parsed["value"]
    if isinstance(value, list):
        if not all(isinstance(v, SCALARS) for v in value):
            raise ConfigError(f"{text!r} must be a scalar or an array of scalars")
        return value
    if not isinstance(value, SCALARS):
        raise ConfigError(f"{text!r} must be a number, true/false or a string (got a TOML {type(value).__name__})")
    return value


def _split_assignment(text: str, option: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    name = name.strip()
    if not sep or not name:
        raise ConfigError(f"{option} must look like FIELD=VALUE (got {text!r})")
    return name, value.strip()


def parse_set(text: str) -> tuple[str, Any]:
    """``FIELD=VALUE`` of ``--set`` -> (field, value)."""
    name, value = _split_assignment(text, "--set")
    return name, parse_value(value)


def parse_grid(text: str) -> tuple[str, tuple[Any, ...]]:
    """``FIELD=V1,V2,...`` of ``--grid`` -> (field, values); each value is a scalar parsed by TOML rules."""
    name, value = _split_assignment(text, "--grid")
    items = [item.strip() for item in value.split(",")]
    if not value or any(not item for item in items):
        raise ConfigError(f"--grid {name} needs comma-separated values (got {value!r})")
    values = tuple(parse_value(item) for item in items)
    if any(isinstance(v, list) for v in values):
        raise ConfigError(f"--grid {name} values must be scalars (got {value!r})")
    return name, values


def with_overrides(spec: SweepSpec, sets: Iterable[tuple[str, Any]] = (),
                   grids: Iterable[tuple[str, Sequence[Any]]] = ()) -> SweepSpec:
    """``spec`` with fields fixed by ``sets`` (dropped from the grid) and swept by ``grids`` (dropped from the
    fixed fields; a field already in the grid keeps its position, a new one is appended)."""
    base, grid = dict(spec.base), dict(spec.grid)
    for name, value in sets:
        grid.pop(name, None)
        base[name] = value
    for name, values in grids:
        base.pop(name, None)
        grid[name] = tuple(values)
    return SweepSpec(spec.experiment, base, grid, spec.source)


def run_id(experiment: str, config: Mapping[str, Any]) -> str:
    """Stable run id: the first 12 hex digits of sha256 of the canonical JSON of ``[experiment, config]``."""
    text = canonical_json([experiment, dict(config)])
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:ID_LENGTH]


def _describe(values: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in values.items())


def _lookup(config_dict: Mapping[str, Any], key: str) -> Any:
    """The value of a (dotted) field in a config dict."""
    for part in key.split("."):
        config_dict = config_dict[part]
    return config_dict


def expand(spec: SweepSpec) -> list[RunSpec]:
    """All runs of the sweep in grid order (cartesian product, the first grid field varying slowest).

    Every config is validated (its dataclass is constructed) before the list is returned; ConfigError names
    an unknown field (listing the allowed ones), a bad value, or two grid points with the same config.
    """
    experiment = get_experiment(spec.experiment)
    allowed = config_fields(experiment)
    for name in (*spec.base, *spec.grid):
        if qualified_field(experiment, name).split(".")[0] not in allowed:
            raise ConfigError(f"unknown field {name!r} for experiment {spec.experiment!r} "
                              f"(allowed: {', '.join(settable_fields(experiment.config_cls))})")
    names = list(spec.grid)
    runs: list[RunSpec] = []
    seen: dict[str, str] = {}
    for index, combo in enumerate(itertools.product(*spec.grid.values())):
        point = dict(zip(names, combo))
        context = f"run {index} ({_describe(point)})" if point else "run 0"
        config = make_config(experiment, spec.base | point, context)
        config_dict = config_to_dict(config)
        rid = run_id(spec.experiment, config_dict)
        if rid in seen:
            raise ConfigError(f"grid repeats a config: {context} is the same run as {seen[rid]}")
        seen[rid] = context
        runs.append(RunSpec(index, rid, spec.experiment, config, config_dict, {k: _lookup(config_dict, qualified_field(experiment, k)) for k in names}))
    return runs


# ----- run folders ----------------------------------------------------------------------------------------

def run_dir(out: str | Path, rid: str) -> Path:
    """The folder of run ``rid`` under the sweep output folder ``out``."""
    return Path(out) / RUNS_DIR / rid


def _read_json(path: Path) -> Any:
    """The JSON in ``path``, or None if it cannot be read or parsed (NaN and infinity parse as floats)."""
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, ValueError):
        return None


def _verified_metrics(folder: Path, rid: str, status: Mapping[str, Any]) -> dict | None:
    """The metrics of a run whose status says done if its folder verifies, else None: metrics.json is a dict
    of finite numbers matching ``metrics_sha256`` in status.json, and config.json is the run's (its experiment
    and config give the id ``rid``, its config matches ``config_sha256``)."""
    metrics, record = _read_json(folder / "metrics.json"), _read_json(folder / "config.json")
    if not isinstance(metrics, dict) or nonfinite_path(metrics) is not None or not isinstance(record, dict):
        return None
    experiment, config = record.get("experiment"), record.get("config")
    if not isinstance(experiment, str) or not isinstance(config, dict) or record.get("run_id") != rid:
        return None
    try:
        ok = (json_sha256(metrics) == status.get("metrics_sha256") and json_sha256(config) == status.get(
            "config_sha256") and run_id(experiment, config) == rid)
    except (TypeError, ValueError):  # a config that is not canonical JSON (NaN, odd types)
        return None
    return metrics if ok else None


def _saved_run(out: str | Path, rid: str) -> tuple[str, dict | None]:
    """(state, metrics) of run ``rid`` in ``out``: ("done", verified metrics), ("failed", None), ("pending",
    None), or ("discarded", None) when status.json says done but the folder does not verify."""
    folder = run_dir(out, rid)
    status = _read_json(folder / "status.json")
    state = status.get("state") if isinstance(status, dict) else None
    if state == "done":
        metrics = _verified_metrics(folder, rid, status)
        return ("done", metrics) if metrics is not None else ("discarded", None)
    return ("failed" if state == "failed" else "pending"), None


def run_state(out: str | Path, rid: str) -> str:
    """``done`` (status done and the folder verifies: metrics.json a dict of finite numbers with the recorded
    checksum, config.json the run's config), ``failed`` (last attempt failed) or ``pending`` (anything else:
    the run is run again)."""
    state = _saved_run(out, rid)[0]
    return "pending" if state == "discarded" else state


def check_layout(out: str | Path, runs: Sequence[RunSpec] = ()) -> None:
    """ConfigError (one line naming the path) unless ``out``, ``out/runs`` and the folders of ``runs`` are
    folders (or absent) and sweep.json, results.parquet and each run's files are files (or absent)."""
    out = Path(out)
    folders = [out, out / RUNS_DIR, *(run_dir(out, run.run_id) for run in runs)]
    for folder in folders:
        if folder.exists() and not folder.is_dir():
            raise ConfigError(f"{folder} must be a folder of the sweep's output (--out), not a file")
    files = [out / SWEEP_FILE, out / TABLE_FILE, *(run_dir(out, run.run_id) / name for run in runs
                                                    for name in RUN_FILES)]
    for path in files:
        if path.is_dir():
            raise ConfigError(f"{path} must be a file of the sweep's output (--out), not a folder")


def plan_sweep(spec: SweepSpec, out: str | Path) -> list[tuple[RunSpec, str]]:
    """The runs of the sweep with their current state in ``out`` (what ``--dry-run`` lists); writes nothing.

    ConfigError if ``out`` is laid out wrongly (:func:`check_layout`)."""
    runs = expand(spec)
    check_layout(out, runs)
    return [(run, run_state(out, run.run_id)) for run in runs]


def _write_config(out: Path, run: RunSpec) -> None:
    atomic_write_json(run_dir(out, run.run_id) / "config.json",
                      {"run_id": run.run_id, "experiment": run.experiment, "config": run.config_dict,
                       "swept": run.swept})


def _checked(result: RunResult) -> tuple[RunResult, dict | None]:
    """(result, metrics): a done result whose metrics are not a dict of finite numbers becomes a failed one
    (one-line error naming the metric; metrics None)."""
    if result.state != "done":
        return result, None
    metrics = json.loads(result.metrics_json)
    problem = CellCache.problem(metrics)
    if problem is None:
        return result, metrics
    return replace(result, state="failed", metrics_json=None, traceback=None, error=f"{problem}: not recorded"), None


def _write_result(out: Path, run: RunSpec, result: RunResult, metrics: dict | None) -> None:
    """config.json, metrics.json (done, ``metrics`` parsed from it) and environment.json, then status.json last,
    with the checksums that :func:`run_state` verifies."""
    folder = run_dir(out, run.run_id)
    _write_config(out, run)
    if result.state == "done":
        atomic_write_text(folder / "metrics.json", result.metrics_json + "\n")
    else:
        (folder / "metrics.json").unlink(missing_ok=True)  # stale output of an earlier, interrupted attempt
    if result.environment is not None:
        atomic_write_json(folder / "environment.json", result.environment | {"host": result.host})
    atomic_write_json(folder / "status.json", {
        "run_id": run.run_id, "state": result.state, "wall_s": result.wall_s, "backend": result.backend,
        "started": result.started, "finished": result.finished, "host": result.host, "device": result.device,
        "error": result.error, "traceback": result.traceback, "config_sha256": json_sha256(run.config_dict),
        "metrics_sha256": None if metrics is None else json_sha256(metrics)})


# ----- the results table ----------------------------------------------------------------------------------

def check_table_extra() -> None:
    """ConfigError unless pandas and pyarrow (the 'sweep' extra) are installed: the results table needs them."""
    try:
        import pandas  # noqa: F401
        import pyarrow  # noqa: F401
    except ImportError:
        raise ConfigError(SWEEP_EXTRA_MESSAGE) from None


def _tidy(values: list[Any]) -> list[Any]:
    """A column must hold one kind of value for parquet: mixed strings / numbers / booleans become strings."""
    kinds = {type(v) for v in values if v is not None}
    if len(kinds) <= 1 or kinds <= {int, float}:
        return values
    return [v if v is None or isinstance(v, str) else json.dumps(v) for v in values]


def _flat_config(config_dict: Mapping[str, Any]) -> dict[str, Any]:
    """A config dict with its groups of settings flattened: a sub-field keeps its own name where it is unique
    in the config (``beta_u``), else it is named ``group.field``."""
    leaves = [(group, key) for group, value in config_dict.items() if isinstance(value, dict) for key in value]
    counts = collections.Counter([key for _, key in leaves] + [k for k, v in config_dict.items()
                                                                if not isinstance(v, dict)])
    out: dict[str, Any] = {}
    for name, value in config_dict.items():
        if isinstance(value, dict):
            out |= {(key if counts[key] == 1 else f"{name}.{key}"): v for key, v in value.items()}
        else:
            out[name] = value
    return out


def results_table(runs: Sequence[RunSpec], metrics: Mapping[str, Mapping[str, Any]]):
    """The results table (a pandas DataFrame) of the runs that have metrics, in the order of ``runs``.

    Columns: ``run_id``, the swept fields, ``config.<field>`` for every config field, ``metrics.<name>`` for
    every scalar metric (in order of first appearance; missing values are null).
    """
    import pandas as pd

    swept = list(runs[0].swept) if runs else []
    flat = [_flat_config(run.config_dict) for run in runs]
    config_cols = list(flat[0]) if runs else []
    flat_by_id = {run.run_id: f for run, f in zip(runs, flat)}
    metric_cols: dict[str, None] = {}
    rows = []
    for run in runs:
        values = metrics.get(run.run_id)
        if values is None:
            continue
        scalars = {k: v for k, v in values.items() if isinstance(v, SCALARS)}
        metric_cols.update(dict.fromkeys(scalars))
        rows.append((run, scalars))
    columns: dict[str, list] = {"run_id": [run.run_id for run, _ in rows]}
    columns |= {name: [run.swept[name] for run, _ in rows] for name in swept}
    columns |= {f"config.{name}": [flat_by_id[run.run_id].get(name) for run, _ in rows] for name in config_cols}
    columns |= {f"metrics.{name}": [m.get(name) for _, m in rows] for name in metric_cols}
    return pd.DataFrame({name: _tidy(values) for name, values in columns.items()})


def write_table(out: str | Path, runs: Sequence[RunSpec], metrics: Mapping[str, Mapping[str, Any]]) -> Path:
    """Write ``OUT/results.parquet`` atomically (see :func:`results_table`)."""
    buffer = io.BytesIO()
    results_table(runs, metrics).to_parquet(buffer, index=False)
    path = Path(out) / TABLE_FILE
    atomic_write_bytes(path, buffer.getvalue())
    return path


def load_results(out: str | Path):
    """The results table of the sweep in ``out`` as a pandas DataFrame."""
    check_table_extra()
    import pandas as pd

    return pd.read_parquet(Path(out) / TABLE_FILE)


# ----- running --------------------------------------------------------------------------------------------

def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def run_sweep(spec: SweepSpec, out: str | Path, *, backend: str | Backend = "local", workers: int | None = None,
              address: str | None = None, gpus_per_run: float | None = None, threads: int | None = 1,
              progress: Callable[[RunSpec, RunResult], None] | None = None,
              table_interval_s: float = 2.0, connect_timeout: float = 30.0) -> SweepSummary:
    """Run every run of ``spec`` that is not done yet in ``out`` and write the folders and the results table.

    ``backend``: "local" (worker processes) or "ray", with ``workers``, ``address``, ``gpus_per_run``,
    ``threads`` and ``connect_timeout`` as in :func:`easyhard.runs.backends.make_backend`, or a backend object. ``progress`` is called
    after each finished run. The table is rewritten after each batch of finished runs (at most every
    ``table_interval_s`` seconds) and at the end. Everything is validated before any run starts, the layout
    of ``out`` included (:func:`check_layout`). The table holds only verified metrics: saved runs that do not
    verify run again (counted in ``discarded``), fresh metrics with NaN or infinity make a failed run.
    """
    check_table_extra()
    runs = expand(spec)
    check_layout(out, runs)
    if isinstance(backend, str):
        backend = make_backend(backend, workers=workers, address=address, gpus_per_run=gpus_per_run,
                               threads=threads, connect_timeout=connect_timeout)
    out = Path(out)
    by_id = {run.run_id: run for run in runs}
    metrics: dict[str, dict] = {}
    todo, discarded = [], []
    for run in runs:
        state, loaded = _saved_run(out, run.run_id)
        if loaded is not None:
            metrics[run.run_id] = loaded
            continue
        if state == "discarded":
            discarded.append(run.run_id)
        todo.append(run)
    skipped = len(runs) - len(todo)
    record = {**spec.to_dict(), "swept": list(spec.grid), "run_ids": [run.run_id for run in runs],
              "backend": backend.name, "started": _now(), "environment": environment_info()}
    atomic_write_json(out / SWEEP_FILE, record)

    done, failed = 0, {}
    last_table = -float("inf")
    batches = backend.run([Task(run.run_id, resolve_target(run.experiment), run.config_dict) for run in todo])
    try:
        for batch in batches:
            for result in batch:
                run = by_id[result.run_id]
                result, fresh = _checked(result)
                _write_result(out, run, result, fresh)
                if fresh is not None:
                    metrics[run.run_id] = fresh
                    done += 1
                else:
                    failed[run.run_id] = result.error or "unknown error"
                if progress is not None:
                    progress(run, result)
            if time.monotonic() - last_table >= table_interval_s:
                write_table(out, runs, metrics)
                last_table = time.monotonic()
    except BaseException:
        close = getattr(batches, "close", None)
        if close is not None:
            close()  # the backend stops its workers
        try:
            write_table(out, runs, metrics)  # interrupted: keep a table of what finished
        except Exception:
            pass
        raise
    table = write_table(out, runs, metrics)
    summary = {"done": done, "skipped": skipped, "failed": len(failed), "discarded": len(discarded),
               "finished": _now()}
    atomic_write_json(out / SWEEP_FILE, record | {"summary": summary})
    return SweepSummary(out, table, tuple(by_id), done, skipped, failed, tuple(discarded))
