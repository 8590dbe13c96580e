"""The benchmark script runs end to end (smoke mode) and reports one row per engine configuration."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "online_sgd.py"


def test_benchmark_quick_json_rows():
    out = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--json", "--no-cuda"], capture_output=True,
                         text=True, timeout=600, check=True).stdout
    rows = json.loads(out)
    assert {(r["engine_name"], r["d"], r["E"]) for r in rows} == {
        ("numba", 128, 1), ("numba", 128, 64), ("numba", 1024, 1), ("numba", 1024, 64),
        ("reduced", 128, 64), ("reduced", 1024, 64)}
    for r in rows:
        assert r["engine"] > 0 and r["reference"] > 0 and abs(r["ratio"] - r["engine"] / r["reference"]) < 1e-9
    reduced = [r for r in rows if r["engine_name"] == "reduced"]
    full = {(r["d"], r["E"]): r["engine"] for r in rows if r["engine_name"] == "numba"}
    assert all(r["reference"] == full[(r["d"], r["E"])] for r in reduced)  # side by side with the full kernel
