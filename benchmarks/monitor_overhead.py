"""The monitor's overhead on the diffusers demonstration, beside the nearest-neighbour search's speed.

What is compared
----------------
1. ``examples/monitor_diffusers.py`` (its defaults: the monitor's default update grid) runs once; inside that one
   process it times the training steps of both models and, separately, every ``monitor.update`` call. The ratio
   monitor seconds / training seconds is the overhead the issue bounds (<= 10%).
2. ``benchmarks/nearest_neighbours.py``: ``easyhard.metrics.nearest_neighbours`` against ``torch.cdist`` + ``topk``
   at m = 1e3 and at full size (m = 1e4, n = 1e5, d = 1024), each in fresh processes (:func:`rows`); the ratio
   naive / easyhard must be >= 1 at every size.

Both tables are printed together. Timings need an otherwise idle machine (the load average is printed).

Usage::

    python benchmarks/monitor_overhead.py [--out DIR] [--rounds 2] [--demo-args "--steps 2000"]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEMO = HERE.parent / "examples" / "monitor_diffusers.py"


def _nearest_neighbours():
    spec = importlib.util.spec_from_file_location("_bench_nearest_neighbours", HERE / "nearest_neighbours.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def demo_overhead(out: Path, extra: list[str]) -> dict:
    """Run the demonstration and return its summary (training and monitor seconds from its own process)."""
    subprocess.run([sys.executable, str(DEMO), "--out", str(out), *extra], check=True)
    return json.loads((out / "summary.json").read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="folder of the demonstration run (default: temporary)")
    parser.add_argument("--rounds", type=int, default=2, help="fresh-process rounds per nearest-neighbour row")
    parser.add_argument("--demo-args", default="", help="extra arguments of the demonstration script")
    args = parser.parse_args(argv)
    print(f"load average before: {os.getloadavg()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        summary = demo_overhead(args.out or Path(tmp) / "demo", shlex.split(args.demo_args))
    train_s, monitor_s = summary["train_seconds"], summary["monitor_seconds"]
    bench = _nearest_neighbours()
    m_full, n, d = bench.FULL
    nn_rows = bench.rows([(1000, n, d, 3), (m_full, n, d, 1)], rounds=args.rounds)
    print("\nmonitor overhead (demonstration, one process)")
    print(f"  training {train_s:.1f} s, monitor {monitor_s:.1f} s over {summary['updates']} updates: "
          f"ratio {monitor_s / train_s:.3f} (requirement <= 0.10)")
    print("nearest_neighbours vs torch.cdist + topk (fresh processes; ratio naive / easyhard, requirement >= 1)")
    for row in nn_rows:
        if row["method"] == "easyhard":
            print(f"  m = {row['m']}, n = {row['n']}, d = {row['d']}: easyhard {row['seconds']:.3g} s, "
                  f"time ratio {row.get('time_ratio', float('nan')):.2f}, peak {row['peak_MiB']:.0f} MiB")
    print(f"load average after: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
