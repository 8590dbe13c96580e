"""`easyhard calibrate`: JSON equals the library, readable table, one-line errors with exit code 2."""

import json

import pytest

from easyhard.cli import main
from easyhard.data import MixedCumulantModel, make_latent_law
from easyhard.oracles import make_activation
from easyhard.theory import SingleNeuron, calibrate

S1 = ["--nu", "bernoulli_gauss", "--nu-param", "0.1", "--beta-u", "0", "--beta-v", "20", "--t", "0.1",
      "--a-out", "-1"]


def _run(capsys, *args):
    code = main(["calibrate", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_json_for_s1_equals_library(capsys):
    code, out, err = _run(capsys, *S1, "--dims", "32,100", "--json")
    assert code == 0 and err == ""
    got = json.loads(out)
    model = MixedCumulantModel.create(d=3, beta_u=0.0, beta_v=20.0, nu=make_latent_law("bernoulli_gauss", 0.1))
    expected = calibrate(model, SingleNeuron(make_activation("tanh"), 0.1, None, -1.0))
    numbers = {k: v for k, v in expected.to_dict().items() if isinstance(v, float)}
    assert {k: got["calibration"][k] for k in numbers} == pytest.approx(numbers, rel=1e-12)
    assert got["calibration"] == {**expected.to_dict(), **{k: got["calibration"][k] for k in numbers}}
    assert got["calibration"]["eps"] == pytest.approx(12.53, rel=0.02)
    assert [r["d"] for r in got["dims"]] == [32, 100]
    for row in got["dims"]:
        assert row["step"] == pytest.approx(expected.step(row["d"]), rel=1e-12)
        assert row["n_med"] == pytest.approx(expected.predicted_median(row["d"]), rel=1e-12)
        assert row["warning"] is None
    assert got["neuron"]["a_out"] == -1.0 and got["model"]["nu"]["name"] == "bernoulli_gauss"


def test_eps_option_sets_zeta(capsys):
    code, out, _ = _run(capsys, *S1, "--eps", "3.76", "--json")
    assert code == 0
    c = json.loads(out)["calibration"]
    assert c["eps"] == 3.76 and c["zeta"] == pytest.approx(1.0, rel=0.01)  # docs/theory/calibration.md: zeta = 1, eps = 3.76


def test_table_output(capsys):
    code, out, _ = _run(capsys, *S1, "--dims", "16,64")
    assert code == 0
    for text in ("c_4 = -0.8672", "G^2 = 0.9228", "eta = 12.53 / d^2", "T*(zeta) = 2.963", "n_med/d^3 = 0.02045"):
        assert text in out, text
    lines = out.splitlines()
    assert any(line.split()[:1] == ["64"] for line in lines)
    assert sum(line.startswith("warning: d = 16") for line in lines) == 1  # below the barrier margin


def test_repelled_direction_json_has_null_median(capsys):
    code, out, _ = _run(capsys, "--nu", "bernoulli_gauss:0.1", "--beta-u", "0", "--beta-v", "10", "--t", "0.2",
                        "--json")
    assert code == 0
    got = json.loads(out)
    assert got["calibration"]["attractive"] is False and got["calibration"]["t_star"] is None
    assert all(r["n_med"] is None for r in got["dims"]) and "repelled" in got["calibration"]["warnings"][0]


@pytest.mark.parametrize("args,name", [
    ([*S1, "--zeta", "-1"], "zeta"),
    ([*S1, "--zeta", "0.3", "--eps", "10"], "--eps"),
    ([*S1, "--eps", "0"], "eps"),
    ([*S1, "--direction", "w"], "direction"),
    ([*S1, "--dims", "32,abc"], "--dims"),
    ([*S1, "--dims", "4"], "--dims"),
    ([*S1, "--threshold", "1.5"], "threshold"),
    ([*S1, "--t", "0"], "--t"),
    (["--beta-u", "5", "--direction", "u"], "d log d"),
    (["--activation", "relu", "--beta-u", "0"], "does not enter"),
    (["--coupling", "sign", "--beta-u", "5"], "jointly"),
])
def test_bad_input_exits_2_with_one_line(capsys, args, name):
    code, out, err = _run(capsys, *args)
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and name in lines[0] and "Traceback" not in err
