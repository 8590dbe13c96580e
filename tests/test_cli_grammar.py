"""``easyhard reproduce grammar`` end to end (smoke-sized), the report rebuilt from its results, one-line errors."""

from __future__ import annotations

import json

from easyhard.cli import main


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_reproduce_grammar_writes_results_report_and_figures(tmp_path, capsys):
    out_dir = tmp_path / "out"
    code, out, _ = _run(capsys, "reproduce", "grammar", "--profile", "smoke", "--set", "ns=[16]", "--set", "seeds=1",
                        "--out", str(out_dir))
    assert code == 0 and "grammar checks pass:" in out and "tau_split" in out
    files = {p.name for p in out_dir.iterdir()}
    assert {"report.md", "results.json", "run.json", "grammar_ordering.png", "grammar_nn.png", "grammar_uturn.png",
            "grammar_bp_kl.png"} <= files
    results = json.loads((out_dir / "results.json").read_text())["grammar"]
    assert results["config"]["ns"] == [16] and len(results["cells"]) == 1
    report = (out_dir / "report.md").read_text()
    assert "## Biased generalisation on a hierarchical grammar" in report and "grammar_ordering.png" in report
    (out_dir / "report.md").unlink()
    code, _, _ = _run(capsys, "report", str(out_dir))
    assert code == 0 and (out_dir / "report.md").read_text() == report


def test_reproduce_grammar_rejects_bad_options(tmp_path, capsys):
    for argv, words in ((["--set", "twins=9"], "twins"), (["--set", "norm=mid"], "norm must be one of"),
                        (["--steps", "5"], "steps must be above first"), (["--device", "tpu"], "device")):
        code, _, err = _run(capsys, "reproduce", "grammar", "--profile", "smoke", *argv, "--out", str(tmp_path / "o"))
        assert code == 2 and words in err and len(err.strip().splitlines()) == 1, (argv, err)
