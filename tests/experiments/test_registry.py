"""The experiment interface end to end: a toy experiment defined here runs through the generated command line
(`reproduce NAME --profile smoke`, `sweep` on local processes and on Ray, `report`) with no change to cli.py;
bad names, profiles and fields exit with code 2 and one line; the scaling laws give the same results table
whether their cells run in this process or on Ray."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from easyhard._validate import ConfigError
from easyhard.cli import main
from easyhard.experiments.registry import (
    REGISTRY,
    Experiment,
    Option,
    RunContext,
    build_config,
    get_experiment,
    make_config,
    register,
)


@dataclass(frozen=True)
class ToyConfig:
    """x: the input; scale: a factor (> 0); tag: a label; inner: nested settings."""

    x: int = 1
    scale: float = 2.0
    tag: str = "a"
    device: str = "cpu"

    def __post_init__(self):
        if self.scale <= 0:
            raise ConfigError(f"scale must be > 0 (got {self.scale})")


def run_toy(config: ToyConfig, ctx: RunContext | None = None) -> dict:
    ctx = ctx or RunContext()
    for _ in range(3):
        ctx.progress(1, "step")
    return {"y": config.x * config.scale, "tag": config.tag, "series": [config.x] * 3}


def report_toy(results: dict, out: Path) -> tuple[list[str], str]:
    (out / "toy.txt").write_text(str(results["series"]))
    return ["toy.txt"], f"## Toy\n\ny = {results['y']:.6g} ({results['tag']})\n"


TOY = Experiment("toy", ToyConfig, run_toy, "a toy experiment defined in a test file",
                 profiles={"smoke": lambda: ToyConfig(x=3), "quick": lambda: {"x": 5}},
                 report=report_toy, options=(Option("--x", "x", "the input"),),
                 summary=lambda results: [f"toy y = {results['y']}"], total=lambda config: 3)


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setitem(REGISTRY, "toy", f"{__file__}:TOY")
    return get_experiment("toy")


def _run(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_toy_runs_through_reproduce_report_and_sweeps(toy, tmp_path, capsys):
    pd = pytest.importorskip("pandas")
    out = tmp_path / "out"
    code, stdout, err = _run(capsys, "reproduce", "toy", "--profile", "smoke", "--set", "scale=0.5", "--out", str(out))
    assert code == 0, err
    assert "toy y = 1.5" in stdout
    results = json.loads((out / "results.json").read_text())
    assert results["toy"] == {"y": 1.5, "tag": "a", "series": [3, 3, 3]} and "environment" in results
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["configs"]["toy"] == {"x": 3, "scale": 0.5, "tag": "a", "device": "cpu"}
    report = (out / "report.md").read_text()
    assert "## Toy" in report and "y = 1.5 (a)" in report and (out / "toy.txt").read_text() == "[3, 3, 3]"
    # the report is rebuilt from results.json alone, identical
    (out / "report.md").unlink()
    (out / "toy.txt").unlink()
    assert _run(capsys, "report", str(out))[0] == 0
    assert (out / "report.md").read_text() == report and (out / "toy.txt").exists()
    # an alias and a dict profile
    code, stdout, _ = _run(capsys, "reproduce", "toy", "--quick", "--x", "7", "--out", str(tmp_path / "q"))
    assert code == 0 and "toy y = 14.0" in stdout
    # the same experiment swept, on local processes and on Ray: the same table
    sweep = tmp_path / "toy.toml"
    sweep.write_text('experiment = "toy"\n[base]\nscale = 3\n[grid]\nx = [1, 2]\ntag = ["p", "q"]\n')
    for backend in ("local", "ray"):
        if backend == "ray":
            pytest.importorskip("ray")
        code, _, err = _run(capsys, "sweep", str(sweep), "--out", str(tmp_path / backend), "--backend", backend,
                            "--workers", "2")
        assert code == 0, err
    local = pd.read_parquet(tmp_path / "local" / "results.parquet")
    ray_table = pd.read_parquet(tmp_path / "ray" / "results.parquet")
    pd.testing.assert_frame_equal(local, ray_table)
    assert sorted(local["metrics.y"]) == [3.0, 3.0, 6.0, 6.0]


@pytest.mark.parametrize("argv, words", [
    (["reproduce", "nope"], ["experiment must be one of", "theory", "scaling", "memorization", "'nope'"]),
    (["reproduce", "toy", "--profile", "huge"], ["profile must be one of smoke, quick", "'huge'"]),
    (["reproduce", "toy", "--set", "nope=1"], ["unknown field 'nope'", "allowed: x, scale, tag, device"]),
    (["reproduce", "toy", "--set", "x=abc"], ["x must be an integer", "'abc'"]),
    (["reproduce", "toy", "--set", "scale=-1"], ["scale must be > 0"]),
    (["reproduce", "toy", "--set", "x"], ["--set must look like FIELD=VALUE"]),
    (["reproduce", "toy", "--quick", "--full"], ["choose one profile"]),
    (["reproduce", "toy", "--profile", "full"], ["profile must be one of smoke, quick"]),
    (["reproduce", "--set", "nope.x=1"], ["NAME.FIELD=VALUE with NAME one of theory, staircase, scaling"]),
    (["reproduce", "staircase", "--set", "dims=[4]"], ["dims must be an integer >= 8"]),
    (["reproduce", "memorization", "--set", "train.nope=1"], ["unknown field 'train.nope'", "train.steps"]),
    (["reproduce", "memorization", "--set", "train=3"], ["field 'train' is a group of settings", "train.steps"]),
    (["reproduce", "scaling", "--set", "parts=1"], ["field 'parts' cannot be set"]),
    (["report", "/nonexistent/folder"], ["results.json does not exist"]),
])
def test_bad_names_profiles_and_fields_exit_2_with_one_line(toy, capsys, tmp_path, argv, words):
    code, _, err = _run(capsys, *argv, *([] if argv[0] == "report" else ["--out", str(tmp_path / "o")]))
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    for word in words:
        assert word in err, err
    assert not (tmp_path / "o").exists()  # refused before any work


def test_make_config_sets_nested_fields_and_build_config_resolves_auto():
    memorization = get_experiment("memorization")
    config = build_config(memorization, "smoke", {"train.steps": 77, "seeds": 3})
    assert config.train.steps == 77 and config.seeds == 3 and config.train.checkpoints == 5  # rest of smoke kept
    assert make_config(memorization, {"train.lr": 1}).train.lr == 1.0  # int widened to float, nested
    full = build_config(get_experiment("staircase"), "full")
    assert full.device in ("cpu", "cuda")  # "auto" resolved where the run happens
    assert build_config(get_experiment("staircase"), "full", resolve_auto=False).device == "auto"
    with pytest.raises(ConfigError, match="target must be"):
        register("x", "no_colon")


@pytest.mark.slow
def test_scaling_cells_on_ray_give_the_local_results_table(tmp_path, capsys):
    pytest.importorskip("ray")
    tables = {}
    for backend in ("inline", "ray"):
        out = tmp_path / backend
        code, _, err = _run(capsys, "reproduce", "scaling", "--profile", "smoke", "--out", str(out),
                            *(["--backend", "ray"] if backend == "ray" else []))
        assert code == 0, err
        tables[backend] = json.loads((out / "results.json").read_text())["scaling"]
    assert tables["inline"] == tables["ray"]
    assert set(tables["ray"]["parts"]) == {"u", "v_sign", "v_indep"}
