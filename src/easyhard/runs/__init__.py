"""Run folders: atomic writes, the metadata that makes a run reproducible, and parameter sweeps."""

from easyhard.runs.backends import BACKENDS, LocalBackend, RayBackend, RunResult, Task, execute, make_backend
from easyhard.runs.io import atomic_write_json, atomic_write_text, environment_info
from easyhard.runs.sweep import (
    RunSpec,
    SweepSpec,
    SweepSummary,
    expand,
    load_results,
    load_spec,
    parse_grid,
    parse_set,
    parse_value,
    plan_sweep,
    results_table,
    run_dir,
    run_id,
    run_state,
    run_sweep,
    with_overrides,
    write_table,
)

__all__ = [
    "BACKENDS", "LocalBackend", "RayBackend", "RunResult", "RunSpec", "SweepSpec", "SweepSummary", "Task",
    "atomic_write_json", "atomic_write_text", "environment_info", "execute", "expand", "load_results", "load_spec",
    "make_backend", "parse_grid", "parse_set", "parse_value", "plan_sweep", "results_table", "run_dir", "run_id",
    "run_state", "run_sweep", "with_overrides", "write_table",
]
