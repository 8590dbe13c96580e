"""Independent cells of an experiment (the scaling laws' cells, ...) run through a sweep backend.

:class:`BackendCells` is a :class:`~easyhard.experiments.registry.CellRunner`: the cells not yet finished
in the cache folder become tasks of a :mod:`easyhard.runs.backends` backend (local processes or Ray); each
result is written to the cache as it arrives, so an interrupted reproduction loses only the cells in
flight and a rerun skips the finished ones. The results are what the in-process runner gives: the same
configs run by the same function, read back from the same checked JSON. A cached cell is reused only if its
file verifies (:class:`~easyhard.experiments.registry.CellCache`), else it runs again; a worker's result that
is not a dict of finite numbers counts as a failed cell (a one-line reason, nothing cached).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from easyhard.experiments.registry import CellCache, CellsFailed, Progress, config_to_dict, resolve_target
from easyhard.runs.backends import Backend, Task

__all__ = ["BackendCells", "CellsFailed"]


class BackendCells:
    """Run cells as backend tasks (``backend``: a :class:`~easyhard.runs.backends.Backend`)."""

    def __init__(self, backend: Backend):
        self.backend = backend

    def __call__(self, experiment: str, cells: Sequence[tuple[str, Any]], cache_dir: Path | None,
                 progress: Progress | None = None) -> dict[str, dict]:
        cache = None if cache_dir is None else CellCache(Path(cache_dir))
        dicts = {label: config_to_dict(config) for label, config in cells}
        out: dict[str, dict] = {}
        tasks = []
        for label, config_dict in dicts.items():
            saved = None if cache is None else cache.load(label, config_dict)
            if saved is not None:
                out[label] = saved
                if progress is not None:
                    progress(1, label)
                continue
            checkpoint = None if cache is None else str(cache.checkpoint(label, config_dict))
            tasks.append(Task(label, resolve_target(experiment), config_dict,
                              work_dir=None if cache_dir is None else str(cache_dir), checkpoint=checkpoint))
        failed = {}
        for batch in self.backend.run(tasks):
            for result in batch:
                if result.state != "done":
                    failed[result.run_id] = result.error or "unknown error"
                    continue
                metrics = json.loads(result.metrics_json)
                problem = CellCache.problem(metrics)
                if problem is not None:
                    failed[result.run_id] = problem
                    continue
                if cache is not None:
                    cache.save(result.run_id, dicts[result.run_id], metrics)
                out[result.run_id] = metrics
                if progress is not None:
                    progress(1, result.run_id)
        if failed:
            first = ", ".join(f"{label}: {error}" for label, error in list(failed.items())[:3])
            raise CellsFailed(f"{len(failed)} of {len(cells)} cells of {experiment} failed ({first}); "
                              "run the command again to retry them")
        return {label: out[label] for label, _ in cells}
