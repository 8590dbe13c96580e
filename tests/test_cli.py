"""The command-line contract: JSON keys, exit codes and one-line errors."""

import json

import pytest

from easyhard.cli import main
from easyhard.data import MixedCumulantModel, make_latent_law
from easyhard.oracles import per_direction_mse


def _run(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("args,exp_u,exp_v", [
    (["--nu", "rademacher", "--activation", "tanh"], 2, 4),
    (["--nu", "rademacher", "--activation", "relu"], 2, None),
    (["--nu", "rademacher", "--activation", "linear"], 2, None),
    (["--nu", "two_point", "--nu-param", "0.1", "--activation", "relu"], 2, 3),
    (["--nu", "rademacher", "--coupling", "sign", "--activation", "tanh"], 2, 1),
])
def test_exponents_json_contract(capsys, args, exp_u, exp_v):
    code, out, _ = _run(capsys, "exponents", "--beta-u", "5", "--beta-v", "5", "--t", "0.5", "--json", *args)
    assert code == 0
    directions = json.loads(out)["directions"]
    for key, expected in (("u", exp_u), ("v", exp_v)):
        d = directions[key]
        assert d["exponent"] == expected
        assert {"exponent", "slope", "samples"} <= set(d)
        if expected is not None:
            assert abs(d["slope"] - expected) < 0.1 and isinstance(d["samples"], str)


def test_oracle_mse_json_equals_library(capsys):
    code, out, _ = _run(capsys, "oracle-mse", "--nu", "laplace", "--beta-u", "2", "--beta-v", "3", "--t", "0.3",
                        "--json")
    assert code == 0
    got = json.loads(out)
    model = MixedCumulantModel.create(d=3, beta_u=2.0, beta_v=3.0, nu=make_latent_law("laplace"))
    expected = per_direction_mse(model, 0.3)
    assert set(got) == {"u", "v"} and set(got["u"]) == {"bayes", "linear"}
    for key in ("u", "v"):
        assert got[key] == pytest.approx(expected[key], rel=1e-12)


def test_tables_without_json(capsys):
    code, out, _ = _run(capsys, "exponents", "--coupling", "sign")
    assert code == 0 and "alpha_u alpha_v" in out and "d log d" in out
    code, out, _ = _run(capsys, "oracle-mse")
    assert code == 0 and "bayes" in out and out.count("\n") >= 4


@pytest.mark.parametrize("command", ["exponents", "oracle-mse"])
@pytest.mark.parametrize("args,name", [
    (["--beta-u", "-1"], "--beta-u"), (["--beta-v", "-0.5"], "--beta-v"), (["--t", "0"], "--t"),
    (["--t", "-2"], "--t"), (["--nu", "gaussian"], "nu"), (["--coupling", "both"], "coupling"),
    (["--nu", "laplace", "--coupling", "sign"], "coupling"), (["--nu", "two_point:1.5"], "two_point"),
    (["--q", "2", "--coupling", "sign"], "q"),
])
def test_bad_input_exits_2_with_one_line(capsys, command, args, name):
    code, out, err = _run(capsys, command, *args)
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and name in lines[0] and "Traceback" not in err


def test_unknown_activation_and_option(capsys):
    code, _, err = _run(capsys, "exponents", "--activation", "swish")
    assert code == 2 and "activation" in err and len(err.strip().splitlines()) == 1
    code, _, err = _run(capsys, "exponents", "--nope")
    assert code == 2 and "--nope" in err and len(err.strip().splitlines()) == 1


def test_reproduce_theory_writes_report(tmp_path, capsys):
    code, out, _ = _run(capsys, "reproduce", "theory", "--out", str(tmp_path / "out"))
    assert code == 0
    files = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"report.md", "results.json", "exponents.json", "run.json", "loss_curves.png"} <= files
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["theory"]["all_match"] is True and "staircase" not in results
    table = json.loads((tmp_path / "out" / "exponents.json").read_text())
    canonical = table["canonical: tanh, Rademacher, independent"]
    assert canonical["u"]["exponent"] == 2 and canonical["v"]["exponent"] == 4
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["packages"]["torch"] and run["device"] and run["config"]["command"] == "reproduce theory"
    assert "| setting |" in (tmp_path / "out" / "report.md").read_text()
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.endswith(".tmp")]


def test_reproduce_quick_writes_theory_and_staircase(tmp_path, capsys):
    """The README's main job, shrunk: all parts land in one folder with figures embedded in the report."""
    from easyhard.experiments import scaling

    out_dir = tmp_path / "out"
    code, out, _ = _run(capsys, "reproduce", "--profile", "smoke", "--out", str(out_dir), "--dims", "16,24",
                        "--seeds", "3", "--steps-per-d", "6")
    assert code == 0
    files = {p.name for p in out_dir.iterdir()}
    assert {"report.md", "results.json", "run.json", "loss_curves.png", "staircase_overlaps.png",
            "staircase_loss.png"} <= files
    results = json.loads((out_dir / "results.json").read_text())
    cells = results["staircase"]["cells"]
    assert {(c["coupling"], c["d"]) for c in cells} == {(c, d) for c in ("independent", "sign") for d in (16, 24)}
    for c in cells:
        assert c["steps"] == 6 * c["d"] and len(c["seeds"]) == 3
        assert 0 <= c["final_abs_alpha_u"] <= 1 and 0 <= c["final_abs_alpha_v"] <= 1
    report = (out_dir / "report.md").read_text()
    assert "![" in report and "staircase_overlaps.png" in report and "| setting |" in report
    run = json.loads((out_dir / "run.json").read_text())
    assert run["config"]["configs"]["staircase"]["dims"] == [16, 24] and run["config"]["profile"] == "smoke"
    assert not [p for p in out_dir.iterdir() if p.name.endswith(".tmp")]
    sc = results["scaling"]
    assert set(sc["parts"]) == {"u", "v_sign", "v_indep"} and "all_pass" in sc["acceptance"]
    assert {"scaling_laws.png", "scaling_collapse.png", "scaling_phase.png"} <= files
    assert "kappa (95% CI)" in out and "## Sample-complexity laws" in report
    assert len(list((out_dir / "cells").glob("*.json"))) == len(scaling.profile("smoke").all_cells())
    # `easyhard report` rebuilds the same report (and every figure) from results.json alone
    figures = [p for p in out_dir.iterdir() if p.suffix == ".png"]
    for path in [out_dir / "report.md", *figures]:
        path.unlink()
    code, _, err = _run(capsys, "report", str(out_dir))
    assert code == 0, err
    assert (out_dir / "report.md").read_text() == report and all(p.exists() for p in figures)


def test_reproduce_rejects_bad_dims(capsys, tmp_path):
    code, _, err = _run(capsys, "reproduce", "--out", str(tmp_path / "o"), "--dims", "4")
    assert code == 2 and "--dims must be an integer >= 8" in err and len(err.strip().splitlines()) == 1
