"""Resource estimates against measurements: for each registered experiment with a ``resources`` estimate,
run its profile (default: smoke) in a fresh process, measure wall time and peak resident memory, and print
estimate / measured for both (easyhard.experiments.resources: meant to be right within a factor of a few).

    python benchmarks/resource_estimates.py [--profile smoke] [--only staircase,images]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile

CHILD = """
import json, resource, sys, time
from pathlib import Path
from easyhard.experiments.registry import RunContext, build_config, get_experiment
experiment = get_experiment(sys.argv[1])
config = build_config(experiment, sys.argv[2])
start = time.perf_counter()
experiment.run(config, RunContext(out_dir=Path(sys.argv[3])))
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


def main() -> None:
    from easyhard.experiments.registry import build_config, get_experiment, names
    from easyhard.experiments.resources import BASE_MEMORY, format_bytes

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="smoke")
    parser.add_argument("--only", default=None, help="comma-separated experiment names")
    args = parser.parse_args()
    chosen = args.only.split(",") if args.only else names()
    print(f"{'experiment':<14} {'est. time':>10} {'measured':>10} {'ratio':>6}   {'est. memory':>11} "
          f"{'measured':>10} {'ratio':>6}")
    for name in chosen:
        experiment = get_experiment(name)
        if experiment.resources is None or args.profile not in experiment.profiles:
            continue
        try:
            config = build_config(experiment, args.profile)
        except Exception as err:  # a profile that needs data folders
            print(f"{name:<14} skipped ({err})")
            continue
        estimate = experiment.resources(config)
        with tempfile.TemporaryDirectory() as out:
            done = subprocess.run([sys.executable, "-c", CHILD, name, args.profile, out], capture_output=True,
                                  text=True, check=True)
        measured = json.loads(done.stdout.strip().splitlines()[-1])
        memory = BASE_MEMORY + estimate.memory_bytes
        print(f"{name:<14} {estimate.seconds:>9.3g}s {measured['seconds']:>9.3g}s "
              f"{estimate.seconds / measured['seconds']:>6.2f}   {format_bytes(memory):>11} "
              f"{format_bytes(measured['rss']):>10} {memory / measured['rss']:>6.2f}")


if __name__ == "__main__":
    main()
