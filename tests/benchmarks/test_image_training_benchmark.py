"""The image-training benchmark runs end to end at toy size (CPU row only)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "image_training.py"


def test_image_training_benchmark_rows():
    out = subprocess.run([sys.executable, str(SCRIPT), "--json", "--no-cuda", "--repeats", "1", "--cpu-batch", "4",
                          "--cpu-steps", "1"], capture_output=True, text=True, timeout=600, check=True).stdout
    rows = json.loads(out)
    assert [(r["device"], r["engine"]) for r in rows] == [("cpu", "easyhard")]
    r = rows[0]
    assert r["images_per_s"] > 0 and r["reference_images_per_s"] > 0
    assert abs(r["ratio"] - r["images_per_s"] / r["reference_images_per_s"]) < 1e-9
