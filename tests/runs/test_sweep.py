"""Sweeps: spec parsing, grid expansion, run ids, run folders, skip / retry / kill-and-resume, the CLI contract."""

import ast
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from easyhard._validate import ConfigError
from easyhard.cli import main
from easyhard.experiments.registry import EXPERIMENTS, get_experiment, make_config
from easyhard.runs import (
    SweepSpec,
    expand,
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
)

pd = pytest.importorskip("pandas")
pytest.importorskip("pyarrow")

# A toy experiment importable as "easyhard_sweep_toy:TOY" (its folder goes on sys.path / PYTHONPATH): every
# execution appends x to the file ``log`` (to count executions), sleeps ``sleep`` seconds and fails while the
# file ``fail_flag`` exists and x == fail_x.
TOY_SOURCE = '''
import os
import time
from dataclasses import dataclass

from easyhard._validate import ConfigError
from easyhard.experiments.registry import Experiment


@dataclass(frozen=True)
class ToyConfig:
    x: int = 0
    y: float = 1.0
    sleep: float = 0.0
    log: str = ""
    fail_x: int = -1
    fail_flag: str = ""

    def __post_init__(self):
        if self.y <= 0:
            raise ConfigError(f"y must be > 0 (got {self.y})")


def run(config, ctx=None):
    if config.log:
        with open(config.log, "a") as fh:
            fh.write(f"{config.x}\\n")
    time.sleep(config.sleep)
    if config.x == config.fail_x and os.path.exists(config.fail_flag):
        raise RuntimeError(f"boom at x={config.x}")
    return {"x2": 2 * config.x, "ratio": config.x / config.y, "name": f"x{config.x}", "series": [config.x] * 3}


TOY = Experiment("toy", ToyConfig, run)
'''
TOY = "easyhard_sweep_toy:TOY"


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("toy")
    (folder / "easyhard_sweep_toy.py").write_text(TOY_SOURCE)
    return folder


@pytest.fixture
def toy(toy_dir, monkeypatch):
    """Makes the toy experiment importable here and in spawned workers (they inherit sys.path)."""
    monkeypatch.syspath_prepend(str(toy_dir))
    return toy_dir


def _executions(log: Path) -> list[int]:
    if not log.exists():
        return []
    return [int(line) for line in log.read_text().splitlines() if line.strip().isdigit()]


def _write_spec(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


# ----- spec, grid, ids -------------------------------------------------------------------------------------

def test_grid_expands_in_file_order_first_field_slowest(tmp_path):
    path = _write_spec(tmp_path / "s.toml", """
        experiment = "exponents"
        [base]
        t = 0.4
        [grid]
        activation = ["tanh", "relu", "erf"]
        beta_v = [2.0, 5]
    """)
    runs = expand(load_spec(path))
    assert [r.index for r in runs] == list(range(6))
    assert [(r.swept["activation"], r.swept["beta_v"]) for r in runs] == [
        ("tanh", 2.0), ("tanh", 5.0), ("relu", 2.0), ("relu", 5.0), ("erf", 2.0), ("erf", 5.0)]
    assert all(list(r.swept) == ["activation", "beta_v"] for r in runs)
    assert all(r.config.neuron.t == 0.4 and r.config_dict["neuron"]["t"] == 0.4 and r.config_dict["k_max"] == 8
               for r in runs)  # a sub-field's own name sets it in its group (t -> neuron.t)
    assert isinstance(runs[1].config.mcm.beta_v, float)  # the integer 5 of a float field became 5.0
    assert len({r.run_id for r in runs}) == 6


def test_empty_grid_is_one_run_of_the_base_config():
    runs = expand(SweepSpec("exponents", {"activation": "relu"}))
    assert len(runs) == 1 and runs[0].swept == {} and runs[0].config.neuron.activation == "relu"


def test_run_id_is_stable_and_depends_on_every_field():
    spec = SweepSpec("exponents", {"beta_v": 5, "t": 0.5}, {"activation": ("tanh", "relu")})
    a, b = expand(spec), expand(spec)
    assert [r.run_id for r in a] == [r.run_id for r in b]
    # the same config however it is written: defaults spelled out, ints for floats, swept or fixed
    same = expand(SweepSpec("exponents", {"activation": "tanh", "beta_v": 5.0, "k_max": 8}))[0]
    assert same.run_id == a[0].run_id
    # documented formula: sha256 of the canonical JSON of [experiment, full config], 12 hex digits
    text = json.dumps(["exponents", a[0].config_dict], sort_keys=True, separators=(",", ":"))
    assert a[0].run_id == hashlib.sha256(text.encode()).hexdigest()[:12] == run_id("exponents", a[0].config_dict)
    assert len(a[0].run_id) == 12 and int(a[0].run_id, 16) >= 0
    # any change of any field, or of the experiment, changes the id
    ids = {a[0].run_id}
    for change in ({"beta_v": 5.000001}, {"k_max": 9}, {"nu_param": None, "nu": "two_point"}, {"q": 0.5},
                   {"alpha_u_learned": 0.25}):
        ids.add(expand(SweepSpec("exponents", {"beta_v": 5.0, "t": 0.5, "activation": "tanh"} | change))[0].run_id)
    assert len(ids) == 6
    assert run_id("other", a[0].config_dict) != a[0].run_id


def test_grid_with_the_same_config_twice_is_rejected():
    with pytest.raises(ConfigError, match="same run"):
        expand(SweepSpec("exponents", {}, {"beta_v": (5, 5.0)}))


@pytest.mark.parametrize("text,value", [
    ("5", 5), ("5.0", 5.0), ("-2.5e-3", -2.5e-3), ("true", True), ("false", False), ('"tanh"', "tanh"),
    ("tanh", "tanh"), ("two_point:0.2", "two_point:0.2"), ("[64, 128]", [64, 128]), ("", ""),
])
def test_parse_value_follows_toml_scalar_rules(text, value):
    parsed = parse_value(text)
    assert parsed == value and type(parsed) is type(value)


def test_parse_set_and_grid():
    assert parse_set("beta_v=2") == ("beta_v", 2)
    assert parse_set(" activation = relu ") == ("activation", "relu")
    assert parse_grid("beta_v=1,2.5,3") == ("beta_v", (1, 2.5, 3))
    assert parse_grid("activation=tanh, relu") == ("activation", ("tanh", "relu"))
    for bad in ("beta_v", "=2"):
        with pytest.raises(ConfigError, match="--set must look like FIELD=VALUE"):
            parse_set(bad)
    for bad in ("beta_v=", "beta_v=1,,2"):
        with pytest.raises(ConfigError, match="--grid beta_v needs comma-separated values"):
            parse_grid(bad)


def test_overrides_fix_replace_and_extend_the_grid():
    spec = SweepSpec("exponents", {"t": 0.5, "k_max": 6}, {"activation": ("tanh", "relu"), "beta_v": (2.0, 5.0)})
    new = with_overrides(spec, [parse_set("activation=erf")], [parse_grid("beta_v=1,3"), parse_grid("t=0.2,0.3")])
    assert new.base == {"k_max": 6, "activation": "erf"}
    assert list(new.grid.items()) == [("beta_v", (1, 3)), ("t", (0.2, 0.3))]
    assert spec.grid["activation"] == ("tanh", "relu")  # the original is untouched
    assert [(r.swept["beta_v"], r.swept["t"]) for r in expand(new)] == [(1.0, 0.2), (1.0, 0.3), (3.0, 0.2), (3.0, 0.3)]


@pytest.mark.parametrize("spec", [
    SweepSpec("exponents", {"temperature": 1.0}),
    SweepSpec("exponents", {}, {"temperature": (1.0, 2.0)}),
    with_overrides(SweepSpec("exponents"), [parse_set("temperature=1")]),
])
def test_unknown_field_names_the_field_and_the_allowed_ones(spec):
    with pytest.raises(ConfigError) as err:
        expand(spec)
    message = str(err.value)
    assert "'temperature'" in message and "allowed: nu, nu_param, beta_u, beta_v, coupling, q, activation, t" in message
    assert "\n" not in message


@pytest.mark.parametrize("values,needle", [
    ({"beta_v": -1.0}, r"beta_v must lie in \[0, 100\]"),
    ({"activation": "softplus"}, "activation must be one of"),
    ({"k_max": 2.5}, "k_max must be an integer"),
    ({"k_max": True}, "k_max must be an integer"),
    ({"t": "fast"}, "t must be a number"),
    ({"nu": "laplace", "coupling": "sign"}, "requires nu=rademacher"),
    ({"nu": "two_point", "nu_param": 1.5}, "two_point"),
])
def test_every_config_is_validated_before_running(values, needle):
    with pytest.raises(ConfigError, match=needle):
        expand(SweepSpec("exponents", values))


def test_make_config_coerces_like_the_documentation_says():
    exp = get_experiment("exponents")
    config = make_config(exp, {"beta_u": 3, "nu": "two_point", "nu_param": 0.2})
    assert config.mcm.beta_u == 3.0 and isinstance(config.mcm.beta_u, float) and config.mcm.nu_param == 0.2
    assert make_config(exp, {"nu_param": "none"}).mcm.nu_param is None


@pytest.mark.parametrize("text,needle", [
    (None, "does not exist"),
    ("experiment = \n", "not valid TOML"),
    ('experiment = "exponents"\nseeds = 3\n', "unknown key 'seeds'"),
    ("[grid]\nt = [0.1]\n", "missing key 'experiment'"),
    ('experiment = "exponents"\n[grid]\nt = 0.5\n', "grid.t must be a non-empty array"),
    ('experiment = "exponents"\n[grid]\nt = []\n', "grid.t must be a non-empty array"),
    ('experiment = "exponents"\n[base]\nt = 0.5\n[grid]\nt = [0.1, 0.2]\n', "both fixed"),
    ('experiment = "exponents"\nbase = 3\n', "base must be a table"),
])
def test_bad_sweep_files(tmp_path, text, needle):
    path = tmp_path / "s.toml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(ConfigError, match=needle):
        load_spec(path)


def test_registry_lists_names_and_imports_lazily():
    assert {"theory", "staircase", "staircase_cell", "scaling", "images", "memorization", "grammar", "diagnose",
            "exponents", "recovery"} == set(EXPERIMENTS)
    with pytest.raises(ConfigError, match="experiment must be one of theory, staircase, .*, exponents, recovery"):
        get_experiment("nope")
    with pytest.raises(ConfigError, match="could not be imported"):
        get_experiment("easyhard.no_such_module:THING")
    # the registry module itself imports nothing beyond the standard library and easyhard._validate
    import easyhard.experiments.registry as registry

    tree = ast.parse(Path(registry.__file__).read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    # (and the base-level atomic writer, in the function that saves a finished cell)
    assert {name for name in imported if name.split(".")[0] not in sys.stdlib_module_names} == {
        "easyhard._validate", "easyhard._io"}
    assert registry.REGISTRY["recovery"] == "easyhard.experiments.scaling:RECOVERY"


def test_results_table_rows_in_grid_order_whatever_the_finishing_order():
    runs = expand(SweepSpec("exponents", {"k_max": 4}, {"beta_v": (1.0, 2.0, 3.0)}))
    metrics = {runs[2].run_id: {"k": 3, "s": "c", "mixed": "x", "lst": [1]},  # finished first
               runs[0].run_id: {"k": 1, "s": "a", "mixed": 2.5, "extra": True}}
    table = results_table(runs, metrics)
    assert list(table["run_id"]) == [runs[0].run_id, runs[2].run_id]
    assert list(table["beta_v"]) == [1.0, 3.0] and list(table["config.k_max"]) == [4, 4]
    assert [c for c in table.columns if c.startswith("metrics.")] == [
        "metrics.k", "metrics.s", "metrics.mixed", "metrics.extra"]
    assert list(table["metrics.mixed"]) == ["2.5", "x"]  # one kind per column: mixed values become strings
    assert table["metrics.extra"].iloc[1] is None
    assert list(results_table(runs, {}).columns)[:2] == ["run_id", "beta_v"] and results_table(runs, {}).empty


# ----- running: folders, failure, retry, skip (local backend; the first run through the CLI) -------------

def _cli(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_folders_failure_retry_and_skip(toy, capsys, tmp_path):
    log, flag, out = tmp_path / "log.txt", tmp_path / "fail.flag", tmp_path / "out"
    flag.touch()
    spec_file = _write_spec(tmp_path / "s.toml", f"""
        experiment = "{TOY}"
        [base]
        log = "{log}"
        fail_flag = "{flag}"
        [grid]
        x = [0, 1, 2]
    """)
    cli_args = ["sweep", spec_file, "--out", out, "--workers", "2", "--set", "fail_x=1", "--grid", "y=1,4"]
    spec = with_overrides(load_spec(spec_file), [parse_set("fail_x=1")], [parse_grid("y=1,4")])
    runs = expand(spec)
    ids = [r.run_id for r in runs]
    failing = {r.run_id for r in runs if r.swept["x"] == 1}

    code, stdout, _ = _cli(capsys, *cli_args, "--dry-run")
    assert code == 0 and stdout.count("pending") == 6 and "6 runs of" in stdout and "0 done, 6 to run" in stdout
    assert not out.exists() and not log.exists()

    # first run: two runs fail; summary, one line per failed run, exit code 1
    code, stdout, err = _cli(capsys, *cli_args)
    assert code == 1 and "4 done, 0 skipped, 2 failed of 6 runs; table: " in stdout
    assert err.count("failed: RuntimeError: boom at x=1") == 2 and "easyhard: error: 2 of 6 runs failed" in err
    assert sorted(_executions(log)) == [0, 0, 1, 1, 2, 2]
    for r in runs:
        folder = run_dir(out, r.run_id)
        status = json.loads((folder / "status.json").read_text())
        config = json.loads((folder / "config.json").read_text())
        assert config == {"run_id": r.run_id, "experiment": TOY, "config": r.config_dict, "swept": r.swept}
        assert status["backend"] == "local" and status["wall_s"] >= 0
        assert json.loads((folder / "environment.json").read_text())["packages"]["torch"]
        if r.run_id in failing:
            assert status["state"] == "failed" and status["error"] == "RuntimeError: boom at x=1"
            assert "Traceback" in status["traceback"]
            assert not (folder / "metrics.json").exists() and run_state(out, r.run_id) == "failed"
        else:
            assert status["state"] == "done" and status["error"] is None and run_state(out, r.run_id) == "done"
            assert json.loads((folder / "metrics.json").read_text())["series"] == [r.swept["x"]] * 3
    sweep = json.loads((out / "sweep.json").read_text())
    assert sweep["run_ids"] == ids and sweep["experiment"] == TOY and sweep["swept"] == ["x", "y"]
    assert sweep["summary"]["failed"] == 2
    table = pd.read_parquet(out / "results.parquet")
    assert list(table["run_id"]) == [i for i in ids if i not in failing]  # grid order, finished runs only
    assert list(table.columns) == ["run_id", "x", "y", *(f"config.{k}" for k in runs[0].config_dict),
                                   "metrics.x2", "metrics.ratio", "metrics.name"]  # lists stay in metrics.json
    assert list(table["metrics.ratio"]) == [0.0, 0.0, 2.0, 0.5]
    # a run whose status says done but whose metrics.json is gone (say, deleted by hand) is not done
    victim = runs[4]
    (run_dir(out, victim.run_id) / "metrics.json").unlink()
    assert run_state(out, victim.run_id) == "pending"
    mtimes = {i: (run_dir(out, i) / "status.json").stat().st_mtime_ns for i in ids
              if i not in failing and i != victim.run_id}

    # re-run: the failed runs and the victim (and only they) run again; they now succeed
    flag.unlink()
    second = run_sweep(spec, out, workers=1)
    assert (second.done, second.skipped, second.failed) == (3, 3, {}) and second.ok
    assert sorted(_executions(log)) == [0, 0, 1, 1, 1, 1, 2, 2, 2]
    assert {i: (run_dir(out, i) / "status.json").stat().st_mtime_ns for i in mtimes} == mtimes
    table = pd.read_parquet(out / "results.parquet")
    assert list(table["run_id"]) == ids and list(table["metrics.x2"]) == [0, 0, 2, 2, 4, 4]
    assert [state for _, state in plan_sweep(spec, out)] == ["done"] * 6

    # re-run once more: nothing executes, the table is unchanged
    code, stdout, _ = _cli(capsys, *cli_args)
    assert code == 0 and "0 done, 6 skipped, 0 failed of 6 runs" in stdout
    assert len(_executions(log)) == 9
    pd.testing.assert_frame_equal(pd.read_parquet(out / "results.parquet"), table)


# ----- CLI errors ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("content,extra,needle", [
    (None, [], "does not exist"),
    ("experiment = [\n", [], "not valid TOML"),
    ('experiment = "exponents"\n[grid]\nbeta = [1.0, 2.0]\n', [], "unknown field 'beta'"),
    ('experiment = "exponents"\n', ["--set", "temperature=2"], "unknown field 'temperature'"),
    ('experiment = "exponents"\n', ["--grid", "beta_v=1,-2"], "beta_v must lie in [0, 100]"),
    ('experiment = "nope"\n', [], "experiment must be one of"),
    ('experiment = "exponents"\n', ["--set", "noequals"], "FIELD=VALUE"),
    ('experiment = "exponents"\n', ["--workers", "0"], "--workers must be an integer >= 1"),
    ('experiment = "exponents"\n', ["--address", "10.0.0.1:6379"], "--address needs --backend ray"),
    ('experiment = "exponents"\n', ["--backend", "slurm"], "--backend"),
])
def test_cli_bad_input_exits_2_with_one_line(capsys, tmp_path, content, extra, needle):
    path = tmp_path / "s.toml"
    if content is not None:
        path.write_text(content)
    code, out, err = _cli(capsys, "sweep", path, "--out", tmp_path / "out", *extra)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("easyhard: error: ") and needle in err
    assert not (tmp_path / "out").exists()


# ----- kill -9 and resume ----------------------------------------------------------------------------------

def _sweep_command(spec_file: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "easyhard.cli", "sweep", str(spec_file), "--out", str(out), "--workers", "1"]


def test_sigkill_then_rerun_completes_every_run_exactly_once(toy, tmp_path):
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(toy), os.environ.get("PYTHONPATH", "")])}
    sleep = 0.15
    for attempt in range(4):  # if the sweep finished before we could kill it, make the runs slower and retry
        out, log = tmp_path / f"out{attempt}", tmp_path / f"log{attempt}.txt"
        spec_file = _write_spec(tmp_path / f"s{attempt}.toml", f"""
            experiment = "{TOY}"
            [base]
            sleep = {sleep}
            log = "{log}"
            [grid]
            x = {list(range(12))}
        """)
        runs = expand(load_spec(spec_file))
        ids = [r.run_id for r in runs]
        proc = subprocess.Popen(_sweep_command(spec_file, out), env=env, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        done_at_kill: set[str] = set()
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            done_at_kill = {i for i in ids if run_state(out, i) == "done"}
            if 2 <= len(done_at_kill) < len(ids):
                os.killpg(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.02)
        proc.wait(timeout=30)
        if proc.returncode == -signal.SIGKILL:
            break
        assert proc.returncode == 0, proc.stderr.read().decode()
        sleep *= 3
    else:
        pytest.fail("could not kill the sweep while it was running")
    assert 2 <= len(done_at_kill) < 12
    if (out / "results.parquet").exists():  # the table of a killed sweep holds only finished runs
        finished = {i for i in ids if run_state(out, i) == "done"}
        assert set(pd.read_parquet(out / "results.parquet")["run_id"]) <= finished

    rerun = subprocess.run(_sweep_command(spec_file, out), env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    counts = re.search(r"(\d+) done, (\d+) skipped, 0 failed of 12 runs", rerun.stdout)
    assert counts and int(counts[1]) + int(counts[2]) == 12 and int(counts[2]) >= len(done_at_kill)
    assert sorted(p.name for p in (out / "runs").iterdir()) == sorted(ids)
    for i in ids:
        folder = run_dir(out, i)
        assert json.loads((folder / "status.json").read_text())["state"] == "done"
        visible = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))  # stray .tmp may stay
        assert visible == ["config.json", "environment.json", "metrics.json", "status.json"]
    table = pd.read_parquet(out / "results.parquet")
    assert list(table["run_id"]) == ids and list(table["metrics.x2"]) == [2 * x for x in range(12)]
    executions = _executions(log)
    by_x = {r.run_id: r.swept["x"] for r in runs}
    assert all(executions.count(by_x[i]) == 1 for i in done_at_kill)  # finished runs never ran again
    assert set(executions) == set(range(12))
