"""The nearest-neighbour benchmark runs end to end at toy size (smoke mode) and reports both searches at both
sizes, with the ratios on the easyhard rows."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "nearest_neighbours.py"


def test_nearest_neighbours_benchmark_quick_json_rows():
    out = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--json"], capture_output=True, text=True,
                         timeout=300, check=True).stdout
    rows = json.loads(out)
    assert [(r["method"], r["m"]) for r in rows] == [("easyhard", 100), ("naive", 100), ("easyhard", 400),
                                                     ("naive", 400)]
    for ez, nv in (rows[:2], rows[2:]):
        assert ez["same_indices"] and ez["index_mismatch_rows"] == 0 and ez["max_abs_distance_diff"] < 1e-3
        assert abs(ez["time_ratio"] - nv["seconds"] / ez["seconds"]) < 1e-9
        assert abs(ez["peak_ratio"] - nv["peak_MiB"] / ez["peak_MiB"]) < 1e-9
    full = rows[2]
    for r in rows:
        assert r["seconds"] > 0 and r["peak_MiB"] >= r["inputs_MiB"] > 0 and r["extra_MiB"] >= 0
    assert full["within_limit"] and full["limit_GiB"] == 4.0
