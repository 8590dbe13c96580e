"""Every bad invocation is refused before any work: exit code 2, one line on stderr naming the parameter, no
traceback, nothing written to the output folder, in well under 10 s (README, "Errors and saved state")."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
import torch

from easyhard.cli import main

NO_CUDA = not torch.cuda.is_available()


def _refused(capsys, argv: list[str], name: str, out: Path | None = None) -> str:
    start = time.perf_counter()
    rc = main(argv)
    elapsed = time.perf_counter() - start
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert rc == 2, (rc, captured.err[-2000:])
    assert len(lines) == 1, captured.err
    assert name in lines[0], lines[0]
    assert "Traceback" not in captured.err + captured.out
    if out is not None:
        assert not out.exists() or not any(out.iterdir()), sorted(out.iterdir())
    assert elapsed < 10, f"refused only after {elapsed:.1f} s"  # refused before the work, not after it
    return lines[0]


@pytest.fixture
def a_file(tmp_path) -> Path:
    path = tmp_path / "plain-file"
    path.write_text("not a folder")
    return path


SWEEP = """experiment = "exponents"
[base]
k_max = 6
[grid]
"mcm.beta_v" = [1.0, 2.0]
"""


@pytest.mark.parametrize("argv", [
    ["reproduce", "theory"], ["reproduce", "scaling"], ["reproduce", "memorization"], ["reproduce"],
])
def test_out_under_a_file_is_refused(capsys, a_file, argv):
    _refused(capsys, [*argv, "--out", str(a_file / "out")], "--out")


def test_out_that_is_a_file_is_refused_by_every_command(capsys, a_file, tmp_path):
    _refused(capsys, ["reproduce", "theory", "--out", str(a_file)], "--out")
    spec = tmp_path / "sweep.toml"
    spec.write_text(SWEEP)
    _refused(capsys, ["sweep", str(spec), "--out", str(a_file / "x")], "--out")
    (tmp_path / "s").mkdir()
    _refused(capsys, ["diagnose", "--samples", str(tmp_path / "s"), "--train", str(tmp_path / "s"),
                      "--out", str(a_file / "x")], "--out")
    _refused(capsys, ["report", str(a_file)], "OUT")


@pytest.mark.skipif(not Path("/proc/self").exists(), reason="needs Linux /proc (a folder nobody can write)")
def test_out_in_an_unwritable_place_is_refused(capsys):
    line = _refused(capsys, ["reproduce", "theory", "--out", "/proc/easyhard-out/x"], "--out")
    assert "not writable" in line


def test_empty_out_is_refused(capsys):
    _refused(capsys, ["reproduce", "theory", "--out", ""], "--out")


@pytest.mark.skipif(not NO_CUDA, reason="checks the message of a machine without CUDA")
@pytest.mark.parametrize("argv", [["reproduce"], ["reproduce", "staircase"], ["reproduce", "memorization"],
                                  ["reproduce", "images"]])
@pytest.mark.parametrize("device", ["cuda", "cuda:3"])
def test_cuda_without_cuda_is_one_line(capsys, tmp_path, argv, device):
    line = _refused(capsys, [*argv, "--device", device, "--out", str(tmp_path / "o")], "--device", tmp_path / "o")
    assert "no CUDA device" in line


@pytest.mark.parametrize("argv", [["reproduce", "scaling"], ["reproduce", "images"], ["reproduce", "staircase"],
                                  ["reproduce", "memorization"], ["reproduce"]])
@pytest.mark.parametrize("device", ["tpu", "CPU", ""])
def test_unknown_devices_are_refused(capsys, tmp_path, argv, device):
    _refused(capsys, [*argv, f"--device={device}", "--out", str(tmp_path / "o")], "--device", tmp_path / "o")


@pytest.mark.parametrize("argv, name", [
    (["reproduce", "--seeds", "99999999999"], "reproduce staircase"),
    (["reproduce", "--steps-per-d", "99999999999"], "reproduce staircase"),
    (["reproduce", "staircase", "--seeds", "99999999999"], "reproduce staircase"),
    (["reproduce", "memorization", "--steps", "99999999999999"], "reproduce memorization"),
    (["reproduce", "images", "--steps", "99999999999999"], "reproduce images"),
    (["reproduce", "images", "--seeds", "99999999999"], "--seeds"),
    (["reproduce", "images", "--workers", "1000"], "--workers"),
    (["reproduce", "scaling", "--set", "n_boot=99999999999"], "n_boot"),
])
def test_huge_sizes_are_refused_with_what_they_need(capsys, tmp_path, argv, name):
    line = _refused(capsys, [*argv, "--out", str(tmp_path / "o")], name, tmp_path / "o")
    if name.startswith("reproduce"):
        assert "--force" in line and "memory" in line


def test_diagnose_bounds(capsys, tmp_path):
    (tmp_path / "s").mkdir()
    common = ["diagnose", "--samples", str(tmp_path / "s"), "--train", str(tmp_path / "s"), "--out",
              str(tmp_path / "o")]
    _refused(capsys, [*common, "--n-boot", "999999999999"], "--n-boot", tmp_path / "o")
    _refused(capsys, [*common, "--seed", "-1"], "--seed", tmp_path / "o")


def test_huge_sweep_grid_is_refused(capsys, tmp_path):
    spec = tmp_path / "sweep.toml"
    spec.write_text('experiment = "staircase_cell"\n[base]\ndims = [64]\ncouplings = ["sign"]\n'
                    "[grid]\nseeds = [8, 99999999999]\n")
    _refused(capsys, ["sweep", str(spec), "--out", str(tmp_path / "o")], "sweep staircase_cell", tmp_path / "o")


def test_contradictions_and_duplicates(capsys, tmp_path):
    _refused(capsys, ["reproduce", "--quick", "--full", "--out", str(tmp_path / "o")], "--full", tmp_path / "o")
    _refused(capsys, ["reproduce", "staircase", "--dims", "64,64", "--out", str(tmp_path / "o")], "--dims",
             tmp_path / "o")


def test_errors_name_the_option_not_an_internal_field(capsys, tmp_path):
    line = _refused(capsys, ["reproduce", "memorization", "--steps", "10", "--out", str(tmp_path / "o")], "--steps",
                    tmp_path / "o")
    assert "first" not in line.split("--steps")[0]


# ----- the error boundary ----------------------------------------------------------------------------------

def _failing_theory(monkeypatch, error: BaseException):
    """The run of the experiment raises ``error`` (after every check passed)."""
    from easyhard.runs import reproduce

    def run_experiments(*args, **kwargs):
        raise error

    monkeypatch.setattr(reproduce, "run_experiments", run_experiments)


def test_unexpected_error_is_one_line_with_a_trace_file(capsys, monkeypatch, tmp_path):
    _failing_theory(monkeypatch, RuntimeError("something\nbroke"))
    assert main(["reproduce", "theory", "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line != "theory"]  # the progress bar's label
    assert len(lines) == 1 and "Traceback" not in err
    assert lines[0].startswith("easyhard reproduce theory: error: RuntimeError: something broke")
    log = Path(lines[0].split("full trace in ")[1].split(";")[0])
    assert "Traceback" in log.read_text() and "something" in log.read_text()
    log.unlink()


def test_debug_prints_the_trace(capsys, monkeypatch, tmp_path):
    _failing_theory(monkeypatch, RuntimeError("boom"))
    assert main(["--debug", "reproduce", "theory", "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("easyhard reproduce theory: error")


def test_ctrl_c_exits_130(capsys, monkeypatch, tmp_path):
    _failing_theory(monkeypatch, KeyboardInterrupt())
    assert main(["reproduce", "theory", "--out", str(tmp_path / "o")]) == 130
    assert "interrupted" in capsys.readouterr().err


def test_the_command_line_entry_point_has_no_traceback(tmp_path):
    """The installed entry point, end to end in a fresh interpreter."""
    import subprocess

    done = subprocess.run([sys.executable, "-m", "easyhard.cli", "reproduce", "staircase", "--device", "tpu",
                           "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == ["easyhard: error: --device must be auto, cpu, cuda or cuda:N (got 'tpu')"]


def test_sweep_on_a_dead_ray_address_is_refused_before_anything_is_written(capsys, tmp_path):
    pytest.importorskip("ray")
    spec = tmp_path / "sweep.toml"
    spec.write_text(SWEEP)
    line = _refused(capsys, ["sweep", str(spec), "--backend", "ray", "--address", "127.0.0.1:1", "--ray-timeout", "3",
                             "--out", str(tmp_path / "o")], "--address 127.0.0.1:1", tmp_path / "o")
    assert "no Ray cluster answered" in line


def test_sweep_workers_bound(capsys, tmp_path):
    spec = tmp_path / "sweep.toml"
    spec.write_text(SWEEP)
    _refused(capsys, ["sweep", str(spec), "--workers", "1000", "--out", str(tmp_path / "o")], "--workers",
             tmp_path / "o")


@pytest.mark.parametrize("argv, name", [
    (["exponents", "--beta-u", "1e308"], "--beta-u"),
    (["calibrate", "--beta-u", "1e308"], "--beta-u"),
    (["exponents", "--k-max", "100000"], "--k-max"),
    (["calibrate", "--k-max", "100000"], "--k-max"),
    (["calibrate", "--zeta", "1e300"], "--zeta"),
    (["calibrate", "--zeta", "1e-300"], "--zeta"),
    (["calibrate", "--eps", "1e300"], "--eps"),
    (["exponents", "--t", "1e300"], "--t"),
    (["exponents", "--t", "1e-300"], "--t"),
    (["oracle-mse", "--beta-u", "1e308"], "--beta-u"),
    (["oracle-mse", "--beta-u", "1e308", "--json"], "--beta-u"),
    (["oracle-mse", "--t", "1e300"], "--t"),
    (["calibrate", "--dims", "99999999999999999999999"], "--dims"),
    (["calibrate", "--dims", "64,64"], "--dims"),
    (["exponents", "--a-out", "1e200"], "--a-out"),
    (["calibrate", "--threshold", "1e-224"], "--threshold"),
])
def test_theory_commands_refuse_values_outside_their_ranges(capsys, argv, name):
    _refused(capsys, argv, name)
