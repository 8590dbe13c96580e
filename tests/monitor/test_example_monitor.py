"""Smoke test of examples/monitor_diffusers.py with tiny settings: it trains, monitors, saves what the offline mode
reads, the offline mode over its checkpoints reproduces its records, and a second run with the same seed writes
the same records; its marker summary (``ordering``) on planted records."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "monitor_diffusers.py"
TINY = ["--steps", "24", "--n", "6", "--held-out", "24", "--channels", "8,16", "--first-update", "8",
        "--per-octave", "1"]


def _script():
    spec = importlib.util.spec_from_file_location("_example_monitor_diffusers", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _records(folder: Path) -> list[dict]:
    records = [json.loads(line) for line in (folder / "monitor" / "monitor.jsonl").read_text().splitlines()]
    for r in records:
        r.pop("seconds")
    return records


def test_update_grid_is_log_spaced_and_ends_at_the_last_step():
    script = _script()
    assert script.update_steps(4000, 125, 1.5) == [125, 198, 315, 500, 794, 1260, 2000, 3175, 4000]
    assert script.update_steps(3500) == [175, 278, 441, 700, 1111, 1764, 2800, 3500]  # the demonstration's grid
    assert script.update_steps(24, 8, 1) == [8, 16, 24]
    assert script.update_steps(5, 8, 1) == [5]


def test_tiny_run_writes_records_checkpoints_data_and_summary_reproducibly(tmp_path):
    script, threads = _script(), torch.get_num_threads()
    try:
        summary = script.main(["--out", str(tmp_path / "a"), *TINY])
        script.main(["--out", str(tmp_path / "b"), *TINY])
    finally:
        torch.set_num_threads(threads)
    a = tmp_path / "a"
    assert summary["updates"] == 3 and summary["train_seconds"] > 0 and summary["monitor_seconds"] > 0
    assert set(summary) >= {"held_out_loss_min", "memorisation_onset", "split_similarity_peak", "overhead",
                            "similarity_falls", "loss_flat", "loss_rises"}
    assert summary["offline_max_difference"] <= 1e-6
    assert json.loads((a / "summary.json").read_text())["updates"] == 3
    for folder in ("checkpoints", "twin_checkpoints"):
        assert sorted(p.name for p in (a / folder).glob("checkpoint-*")) == ["checkpoint-16", "checkpoint-24",
                                                                            "checkpoint-8"]
    assert (a / "checkpoints" / "scheduler_config.json").is_file()
    data = {name: torch.load(a / "data" / name / f"{name}.pt") for name in ("train", "twin", "test")}
    assert [len(data[k]) for k in ("train", "twin", "test")] == [6, 6, 24]
    flat = torch.cat(list(data.values())).flatten(1)
    assert len(torch.unique(flat, dim=0)) == 36  # three disjoint sets of patches
    assert (a / "monitor" / "report.md").is_file() and (a / "monitor" / "monitor.png").is_file()
    assert _records(a) == _records(tmp_path / "b")  # seeded: the same measurements in a second run


def _planted(step, loss_change, loss_se, sim_change, sim_se, loss_min, peak):
    ref = None if step == 1 else 1
    return {"step": step, "recommended": {"held_out_loss_min": loss_min, "split_similarity_peak": peak},
            "changes": {"test_loss": {"change": loss_change, "se": loss_se, "ref_step": ref},
                        "pair_similarity": {"change": sim_change, "se": sim_se, "ref_step": ref}}}


def test_ordering_reads_the_markers_from_the_changes():
    # the loss is flat (< 3 SE above its minimum at step 2) until step 4 and rises at 5; the similarity falls at 3
    changes = {1: (0.0, 0.0, 0.0, 0.0), 2: (0.0, 0.0, 0.1, 0.1), 3: (0.1, 0.1, 0.5, 0.1), 4: (0.29, 0.1, 0.6, 0.1),
               5: (0.31, 0.1, 0.7, 0.1)}
    records = [_planted(s, *c, loss_min=2, peak=2) for s, c in changes.items()]
    order = _script().ordering(records, z=3.0)
    assert order == {"held_out_loss_min": 2, "split_similarity_peak": 2, "similarity_falls": 3,
                     "loss_flat": [2, 3, 4], "loss_rises": 5}
