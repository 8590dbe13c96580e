"""Saved state under fault injection (issue 14): nothing invalid from a cell cache or a sweep folder is merged.

Each test runs something tiny once, damages one saved piece (truncated, empty, garbage or non-UTF-8 bytes,
the wrong schema, NaN with a matching checksum, another config), runs again and checks that the damaged
piece (and only it) was recomputed and that the results equal those of an uninterrupted run exactly.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from easyhard._io import nonfinite_path, read_checked_json, write_checked_json
from easyhard._validate import ConfigError
from easyhard.cli import main
from easyhard.experiments import scaling
from easyhard.experiments.registry import (
    CellCache,
    CellsFailed,
    RunContext,
    config_to_dict,
    get_experiment,
    run_cells_inline,
)
from easyhard.experiments.scaling import CANONICAL, S1, Part, RecoveryConfig, ScalingConfig, run_scaling
from easyhard.runs import SweepSpec, execute, expand, run_dir, run_state, run_sweep
from easyhard.runs.cells import BackendCells
from easyhard.theory import NeuronSettings

pd = pytest.importorskip("pandas")
pytest.importorskip("pyarrow")

# A toy experiment loaded as "<folder>/easyhard_faults_toy.py:TOY": every execution appends x to ``log``;
# while the file ``nan_flag`` exists, the run with x == nan_x returns NaN as its ratio.
TOY_SOURCE = '''
import os
from dataclasses import dataclass

from easyhard.experiments.registry import Experiment


@dataclass(frozen=True)
class ToyConfig:
    x: int = 0
    log: str = ""
    nan_x: int = -1
    nan_flag: str = ""


def run(config, ctx=None):
    if config.log:
        with open(config.log, "a") as fh:
            fh.write(f"{config.x}\\n")
    poisoned = config.x == config.nan_x and os.path.exists(config.nan_flag)
    return {"x2": 2 * config.x, "ratio": float("nan") if poisoned else config.x / 3, "name": f"x{config.x}",
            "series": [config.x, config.x + 0.5]}


TOY = Experiment("toy", ToyConfig, run)
'''


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> str:
    """The toy experiment's target (the same file for every test, so run ids agree across tests)."""
    path = tmp_path_factory.mktemp("toy") / "easyhard_faults_toy.py"
    path.write_text(TOY_SOURCE)
    return f"{path}:TOY"


class InProcess:
    """A backend that runs each task here, one by one (torch's thread count untouched)."""

    name = "inline"

    def run(self, tasks):
        for task in tasks:
            yield [execute(replace(task, threads=None))]


def _executions(log: Path) -> list[int]:
    return [int(line) for line in log.read_text().splitlines()] if log.exists() else []


def _nan_sha256(data) -> str:
    """What json_sha256 would give if it accepted NaN: a checksum that matches a NaN-bearing file."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def _corrupt_bytes(path: Path, how: str) -> None:
    data = path.read_bytes()
    path.write_bytes({"truncate": data[: len(data) // 2], "empty": b"", "garbage": b"\x00\x13garbage{[",
                      "non-utf8": b"\xff\xfe\xc3(" + data[4:]}[how])


BYTE_FAULTS = ("truncate", "empty", "garbage", "non-utf8")


def _one_line_error(excinfo, *needles: str) -> None:
    message = str(excinfo.value)
    assert "\n" not in message and all(n in message for n in needles), message


# ----- cell caches -----------------------------------------------------------------------------------------

def _rewrite_cell(path: Path, how: str) -> None:
    """Damage a cell file whose envelope stays well-formed (so only content checks can catch it)."""
    blob = json.loads(path.read_text())
    data = blob["data"]
    if how == "nan":  # NaN inside the metrics, the checksum recomputed to match
        data["metrics"]["times"][0] = float("nan")
        blob["sha256"] = _nan_sha256(data)
    elif how == "schema":  # metrics not a dict, checksum valid
        write_checked_json(path, {**data, "metrics": [1, 2]}, "cell", blob["config_sha256"])
        return
    elif how == "other config":  # a file of another config under this cell's name, checksum valid
        write_checked_json(path, {**data, "config": {**data["config"], "seeds": 99}}, "cell", blob["config_sha256"])
        return
    elif how == "foreign hash":
        blob["config_sha256"] = "0" * 64
    elif how == "legacy":  # the old, unverifiable format {"config", "metrics"}
        blob = {"config": data["config"], "metrics": data["metrics"]}
    elif how == "edited":  # a number changed by hand, checksum left as it was
        data["metrics"]["times"][0] += 1
    path.write_text(json.dumps(blob))


CELL_FAULTS = (*BYTE_FAULTS, "nan", "schema", "other config", "foreign hash", "legacy", "edited")


def _cells() -> list[tuple[str, RecoveryConfig]]:
    cell = RecoveryConfig(**S1, d=24, seeds=4, budget=0.15, n_logs=5)
    return [("a d=24", cell), ("b d=32", replace(cell, d=32))]


@pytest.fixture(scope="module")
def cell_reference() -> dict:
    return run_cells_inline("recovery", _cells(), None)


@pytest.fixture
def sgd_calls(monkeypatch) -> list[int]:
    """The dimension of every recovery cell that actually runs from now on."""
    calls: list[int] = []
    real = scaling.run_online_sgd
    monkeypatch.setattr(scaling, "run_online_sgd", lambda net, *args: calls.append(net.d) or real(net, *args))
    return calls


@pytest.mark.parametrize("how", CELL_FAULTS)
def test_a_damaged_cell_file_is_recomputed(tmp_path, cell_reference, sgd_calls, how):
    assert run_cells_inline("recovery", _cells(), tmp_path) == cell_reference
    cache = CellCache(tmp_path)
    victim = cache.path("b d=32")
    (_corrupt_bytes if how in BYTE_FAULTS else _rewrite_cell)(victim, how)
    sgd_calls.clear()
    again = run_cells_inline("recovery", _cells(), tmp_path)
    assert again == cell_reference and nonfinite_path(again) is None
    assert sgd_calls == [32]  # only the damaged cell ran again
    label, config = _cells()[1]
    assert cache.load(label, config_to_dict(config)) == cell_reference[label]  # its file is whole again


def test_a_cell_file_keeps_its_config_readable(tmp_path):
    label, config = _cells()[0]
    run_cells_inline("recovery", [(label, config)], tmp_path)
    saved = json.loads(CellCache(tmp_path).path(label).read_text())
    assert saved["easyhard"] == "cell" and saved["data"]["config"] == config_to_dict(config)
    assert saved["data"]["label"] == label


def test_cells_cache_that_is_a_file_is_one_line_error(tmp_path):
    (tmp_path / "cells").write_text("not a folder")
    with pytest.raises(ConfigError) as excinfo:
        run_cells_inline("recovery", _cells(), tmp_path / "cells")
    _one_line_error(excinfo, str(tmp_path / "cells"), "must be a folder")


def _toy_cells(toy: str, flag: Path) -> list[tuple[str, object]]:
    config_cls = get_experiment(toy).config_cls
    return [(f"x={x}", config_cls(x=x, nan_x=1, nan_flag=str(flag))) for x in range(3)]


def test_a_fresh_cell_with_nan_fails_in_process_and_is_not_cached(toy, tmp_path):
    flag = tmp_path / "nan.flag"
    flag.touch()
    with pytest.raises(CellsFailed) as excinfo:
        run_cells_inline(toy, _toy_cells(toy, flag), tmp_path / "cells")
    _one_line_error(excinfo, "x=1", "['ratio'] is not finite")
    assert sorted(p.name for p in (tmp_path / "cells").glob("*.json")) == ["x0.json"]


def test_a_worker_cell_with_nan_fails_and_is_not_cached(toy, tmp_path):
    flag = tmp_path / "nan.flag"
    flag.touch()
    cells = _toy_cells(toy, flag)
    with pytest.raises(CellsFailed) as excinfo:
        BackendCells(InProcess())(toy, cells, tmp_path / "cells")
    _one_line_error(excinfo, "1 of 3 cells", "x=1: metric ['ratio'] is not finite")
    assert sorted(p.name for p in (tmp_path / "cells").glob("*.json")) == ["x0.json", "x2.json"]
    flag.unlink()
    results = BackendCells(InProcess())(toy, cells, tmp_path / "cells")
    assert results == run_cells_inline(toy, cells, None) and nonfinite_path(results) is None


# ----- reproduce scaling -----------------------------------------------------------------------------------

def _tiny_scaling() -> ScalingConfig:
    u = RecoveryConfig(**CANONICAL | {"neuron": NeuronSettings(t=0.5)}, direction="u", delta=0.5, p=1.0, budget=30.0,
                       budget_power=1.0, seeds=12, engine="reduced")
    v = RecoveryConfig(**S1, seeds=24, budget=0.15)
    parts = (Part("u", u, (24, 48), 1.0, True), Part("v_indep", v, (24, 32), 3.0, False, sde=True))
    canonical = RecoveryConfig(**CANONICAL, direction="u", delta=0.5, p=1.0, budget=2.0, budget_power=2.0, seeds=8,
                               engine="reduced")
    phase = RecoveryConfig(**S1, d=24, budget=1.0, budget_power=2.8, seeds=8)
    return ScalingConfig(parts, canonical, (24,), phase, (1.0, 0.1), n_boot=50)


@pytest.fixture(scope="module")
def scaling_run(tmp_path_factory) -> tuple[dict, Path]:
    """(results, OUT) of one uninterrupted tiny scaling run with its cell cache."""
    out = tmp_path_factory.mktemp("scaling")
    return run_scaling(_tiny_scaling(), RunContext(out_dir=out)), out


def test_scaling_recomputes_damaged_cells_and_gives_the_same_results(tmp_path, scaling_run, sgd_calls):
    reference, first = scaling_run
    shutil.copytree(first / "cells", tmp_path / "cells")
    cache = CellCache(tmp_path / "cells")
    damage = {"u d=48": "truncate", "v_indep d=32": "non-utf8", "canonical d=24": "nan", "phase zeta=0.1": "schema"}
    for label, how in damage.items():
        (_corrupt_bytes if how in BYTE_FAULTS else _rewrite_cell)(cache.path(label), how)
    again = run_scaling(_tiny_scaling(), RunContext(out_dir=tmp_path))
    assert json.dumps(again) == json.dumps(reference) and nonfinite_path(again) is None
    assert len(sgd_calls) == len(damage)  # the damaged cells, and only they, ran again
    for label, _ in _tiny_scaling().all_cells():
        read_checked_json(cache.path(label), "cell")  # every file verifies again


def test_scaling_cell_with_nan_times_is_an_error_not_a_budget_problem(tmp_path, scaling_run):
    _, first = scaling_run
    shutil.copytree(first / "cells", tmp_path / "cells")

    def poisoning(experiment, cells, cache_dir, progress=None):  # a runner that hands back a NaN time
        out = run_cells_inline(experiment, cells, cache_dir, progress)
        out["v_indep d=24"]["times"][2] = float("nan")
        return out

    with pytest.raises(CellsFailed) as excinfo:
        run_scaling(_tiny_scaling(), RunContext(out_dir=tmp_path, cells=poisoning))
    _one_line_error(excinfo, "v_indep d=24", "times[2] = nan")
    assert "budget" not in str(excinfo.value)


# ----- sweeps ----------------------------------------------------------------------------------------------

def _spec(toy: str, log: Path, flag: Path) -> SweepSpec:
    return SweepSpec(toy, {"log": str(log), "nan_x": 1, "nan_flag": str(flag)}, {"x": [0, 1, 2, 3]})


@pytest.fixture(scope="module")
def sweep_reference(toy, tmp_path_factory):
    """The results table of an uninterrupted sweep (runs, log and flag paths are the tests' own)."""
    return _sweep_table(toy, tmp_path_factory.mktemp("reference"))


def _sweep_table(toy: str, folder: Path):
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        summary = run_sweep(_spec(toy, Path("log.txt"), Path("nan.flag")), "out", backend=InProcess())
        assert summary.ok
        return pd.read_parquet(summary.table)


def _status(folder: Path) -> dict:
    return json.loads((folder / "status.json").read_text())


def _rewrite_run(folder: Path, how: str) -> None:
    """Damage a finished run folder whose files stay well-formed JSON."""
    metrics = json.loads((folder / "metrics.json").read_text())
    status, config = _status(folder), json.loads((folder / "config.json").read_text())
    if how == "nan, checksum matching":
        metrics["ratio"] = float("nan")
        status["metrics_sha256"] = _nan_sha256(metrics)
    elif how == "nan edited":
        metrics["series"][1] = float("inf")
    elif how == "number edited":
        metrics["x2"] += 1
    elif how == "schema":
        metrics = [metrics]
        status["metrics_sha256"] = _nan_sha256(metrics)
    elif how == "other config":  # config.json of another run, with its own (valid) hash in status.json
        config["config"]["x"] += 10
        status["config_sha256"] = _nan_sha256(config["config"])
    elif how == "no checksums":  # a folder written before status.json carried checksums
        del status["metrics_sha256"], status["config_sha256"]
    for name, data in (("metrics.json", metrics), ("status.json", status), ("config.json", config)):
        (folder / name).write_text(json.dumps(data))


RUN_FAULTS = [("metrics.json", how) for how in BYTE_FAULTS] + [
    ("config.json", "garbage"), ("config.json", "truncate"), ("status.json", "garbage"),
    *((None, how) for how in ("nan, checksum matching", "nan edited", "number edited", "schema", "other config",
                              "no checksums"))]


@pytest.mark.parametrize("name,how", RUN_FAULTS)
def test_a_damaged_run_folder_is_rerun(toy, tmp_path, monkeypatch, sweep_reference, name, how):
    monkeypatch.chdir(tmp_path)  # the spec's log and flag paths are relative, as in the reference sweep
    spec = _spec(toy, Path("log.txt"), Path("nan.flag"))
    run_sweep(spec, "out", backend=InProcess())
    victim = expand(spec)[1]
    folder = run_dir("out", victim.run_id)
    if name is None:
        _rewrite_run(folder, how)
    else:
        _corrupt_bytes(folder / name, how)
    assert run_state("out", victim.run_id) == "pending"
    summary = run_sweep(spec, "out", backend=InProcess())
    assert (summary.done, summary.skipped, summary.failed) == (1, 3, {})
    assert summary.discarded == (() if name == "status.json" else (victim.run_id,))
    assert _executions(Path("log.txt")) == [0, 1, 2, 3, 1]  # only the damaged run ran again
    table = pd.read_parquet(summary.table)
    pd.testing.assert_frame_equal(table, sweep_reference)
    assert not table.select_dtypes("number").isna().any().any()
    assert run_state("out", victim.run_id) == "done"
    assert json.loads((folder / "metrics.json").read_text()) == {"x2": 2, "ratio": 1 / 3, "name": "x1",
                                                                 "series": [1, 1.5]}  # plain JSON for users


def test_a_fresh_nan_metric_fails_the_run_and_stays_out_of_the_table(toy, tmp_path, monkeypatch, sweep_reference):
    monkeypatch.chdir(tmp_path)
    Path("nan.flag").touch()
    spec = _spec(toy, Path("log.txt"), Path("nan.flag"))
    victim = expand(spec)[1]
    summary = run_sweep(spec, "out", backend=InProcess())
    error = summary.failed[victim.run_id]
    assert list(summary.failed) == [victim.run_id] and "\n" not in error and "['ratio'] is not finite" in error
    folder = run_dir("out", victim.run_id)
    assert _status(folder)["state"] == "failed" and _status(folder)["error"] == error
    assert not (folder / "metrics.json").exists() and run_state("out", victim.run_id) == "failed"
    table = pd.read_parquet(summary.table)
    assert victim.run_id not in set(table["run_id"]) and not table.select_dtypes("number").isna().any().any()
    Path("nan.flag").unlink()
    retry = run_sweep(spec, "out", backend=InProcess())
    assert (retry.done, retry.skipped, retry.failed) == (1, 3, {})
    pd.testing.assert_frame_equal(pd.read_parquet(retry.table), sweep_reference)


@pytest.mark.parametrize("path,make", [
    ("out", "file"), ("out/runs", "file"), ("out/sweep.json", "folder"), ("out/results.parquet", "folder"),
    ("out/runs/{victim}", "file"), ("out/runs/{victim}/metrics.json", "folder"),
])
def test_a_misshapen_output_folder_is_one_line_error_before_any_run(toy, tmp_path, monkeypatch, path, make):
    monkeypatch.chdir(tmp_path)
    spec = _spec(toy, Path("log.txt"), Path("nan.flag"))
    target = Path(path.format(victim=expand(spec)[2].run_id))
    target.parent.mkdir(parents=True, exist_ok=True)
    target.mkdir() if make == "folder" else target.write_text("in the way")
    with pytest.raises(ConfigError) as excinfo:
        run_sweep(spec, "out", backend=InProcess())
    _one_line_error(excinfo, str(target), "must be a " + ("file" if make == "folder" else "folder"))
    assert _executions(Path("log.txt")) == []


def test_cli_sweep_into_a_runs_file_exits_2_with_one_line(tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "runs").write_text("in the way")
    spec_file = tmp_path / "s.toml"
    spec_file.write_text('experiment = "exponents"\n[grid]\nbeta_v = [2.0, 5.0]\n')
    code = main(["sweep", str(spec_file), "--out", str(tmp_path / "out"), "--workers", "1"])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == "" and captured.err.count("\n") == 1
    assert captured.err.startswith("easyhard: error: ") and f"{tmp_path / 'out' / 'runs'} must be a folder" in captured.err
