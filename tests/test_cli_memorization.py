"""``easyhard reproduce memorization`` end to end (smoke-sized), and its one-line errors."""

from __future__ import annotations

import json

from easyhard.cli import main


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_reproduce_memorization_writes_report_figures_and_resumes(tmp_path, capsys):
    from easyhard.experiments import memorization

    out_dir = tmp_path / "out"
    code, out, _ = _run(capsys, "reproduce", "memorization", "--profile", "smoke", "--out", str(out_dir))
    assert code == 0 and "memorization checks pass:" in out
    files = {p.name for p in out_dir.iterdir()}
    assert {"report.md", "results.json", "run.json", "memorization_fmem.png", "memorization_timescales.png",
            "memorization_split.png", "memorization_denoisers.png"} <= files
    results = json.loads((out_dir / "results.json").read_text())["memorization"]
    assert results["steps"] == memorization.SMOKE.train.checkpoint_steps()
    report = (out_dir / "report.md").read_text()
    assert "## Memorisation and biased generalisation" in report and "memorization_split.png" in report
    run = json.loads((out_dir / "run.json").read_text())
    assert run["config"]["configs"]["memorization"]["ns"] == list(memorization.SMOKE.ns) and run["device"]
    # a second run finds the finished training and only re-analyses: identical numbers
    code, _, _ = _run(capsys, "reproduce", "memorization", "--profile", "smoke", "--out", str(out_dir))
    assert code == 0 and json.loads((out_dir / "results.json").read_text())["memorization"] == results


def test_reproduce_memorization_rejects_bad_options(tmp_path, capsys):
    code, _, err = _run(capsys, "reproduce", "memorization", "--data", "faces", "--out", str(tmp_path / "o"))
    assert code == 2 and "data must be one of" in err and len(err.strip().splitlines()) == 1
    code, _, err = _run(capsys, "reproduce", "memorization", "--data", "cifar10", "--out", str(tmp_path / "o"))
    assert code == 2 and "needs --data-dir" in err and len(err.strip().splitlines()) == 1


def test_reproduce_memorization_rejects_bad_counts_and_devices(tmp_path, capsys):
    for args, message in ((("--seeds", "0"), "seeds must be an integer >= 1"),
                          (("--steps", "5"), "--steps must be above first = 10"),
                          (("--device", "tpu"), "device must be auto, cpu, cuda or cuda:N")):
        code, _, err = _run(capsys, "reproduce", "memorization", *args, "--out", str(tmp_path / "o"))
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1
