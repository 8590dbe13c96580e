"""Wall time and peak memory of ``easyhard.metrics.memorization.nearest_neighbours`` against a naive search.

What is compared
----------------
Both sides find the k = 2 nearest training vectors (Euclidean) of every sample, on CPU, float32 inputs:
training vectors ~ N(0, I_d) and samples ~ N(0, I_d), except that a tenth of the samples are copies of
training vectors plus N(0, 0.01^2 I_d) noise (the memorisation setting, so that some nearest distances
are tiny and others are not).

* ``easyhard``: :func:`easyhard.metrics.memorization.nearest_neighbours` (block-wise float32 candidate
  search with a running top-k, exact float64 re-ranking, ties to the smaller index);
* ``naive``: ``torch.cdist(samples, train)`` (the full m x n distance matrix, float32) then
  ``torch.topk(k, largest=False)``.

The issue's requirement is the ``easyhard`` row at full size: m = 1e4 samples against n = 1e5 training
vectors of dimension 1024 on CPU within 4 GiB of peak memory. The naive search does not fit there (its
distance matrix alone takes m n 4 bytes = 3.7 GiB, on top of the inputs and cdist's temporaries: about
4.8 GiB peak), but it is run and timed there too, so that the time ratio is shown at both sizes: the
comparison size m = 1e3 (same n and d) and the full size. At each size the indices are compared; where they
differ (the naive float32 distances are off by ~1e-3, so near-ties can swap), float64 distances check that
easyhard's neighbours are no farther. The full-size naive row needs about 5 GiB of free memory; where it is
killed, its row reports the failure.

How it is measured
------------------
Every (method, size) runs in a fresh Python process: it imports torch and easyhard, creates the data
(seeded; the same data for both methods), makes one tiny warm-up call, then resets the peak-RSS counter
(``echo 5 > /proc/self/clear_refs``) and times ``--repeats`` calls (best kept; at full size one call).
This is done in ``--rounds`` processes per (method, size) (default 2), the methods alternating; a row keeps
the fastest round and the largest memory of its rounds. Memory columns, from /proc/self/status:

* ``inputs_MiB``: resident memory after set-up (interpreter, torch, the float32 inputs, the warm-up);
* ``peak_MiB``: the peak resident memory (VmHWM) of the process during the calls: the number held
  against the 4 GiB requirement;
* ``extra_MiB`` = peak - inputs: the working memory of the search itself;
* ``maxrss_MiB``: ``getrusage(RUSAGE_SELF).ru_maxrss``, the lifetime peak (set-up included).

Ratios (naive / easyhard at the same size, on the easyhard row): ``time`` > 1 means easyhard is faster,
``extra`` > 1 means it needs less working memory. Timings need an otherwise idle machine
(``busy_cpus_before`` is recorded). Another benchmark can print these ratios beside its own with
:func:`rows`.

Usage::

    python benchmarks/nearest_neighbours.py            # table (one to two minutes on 2 CPU cores)
    python benchmarks/nearest_neighbours.py --json     # the rows as a JSON list on stdout
    python benchmarks/nearest_neighbours.py --quick    # smoke test (tiny sizes, one repeat)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

K = 2
FULL = (10_000, 100_000, 1024)  # (m samples, n training vectors, dimension d)
SMALL_M = 1_000
QUICK_FULL = (400, 4_000, 32)
QUICK_SMALL_M = 100
LIMIT_GIB = 4.0
COPY_FRACTION = 0.1
COPY_NOISE = 0.01
MIB = 2**20
Row = dict[str, Any]


# ----- measured in the worker process ---------------------------------------------------------------------------
def proc_status(key: str) -> int:
    """A memory field of /proc/self/status in bytes (0 where unavailable)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def make_data(m: int, n: int, d: int, seed: int):
    """Float32 samples (m, d) and training vectors (n, d): Gaussian, a tenth of the samples near-copies."""
    import torch

    g = torch.Generator().manual_seed(seed)
    train = torch.randn((n, d), generator=g, dtype=torch.float32)
    samples = torch.randn((m, d), generator=g, dtype=torch.float32)
    n_copies = int(COPY_FRACTION * m)
    src = torch.randint(0, n, (n_copies,), generator=g)
    samples[:n_copies] = train[src] + COPY_NOISE * torch.randn((n_copies, d), generator=g, dtype=torch.float32)
    return samples, train


def naive_search(samples, train, k: int):
    """The full distance matrix with ``torch.cdist`` then ``topk``: (distances, indices)."""
    import torch

    return torch.topk(torch.cdist(samples, train), k, dim=1, largest=False)


def method(name: str) -> Callable:
    if name == "naive":
        return naive_search
    from easyhard.metrics.memorization import nearest_neighbours

    return lambda samples, train, k: nearest_neighbours(samples, train, k=k)


def worker(args: argparse.Namespace) -> Row:
    """One (method, size) measurement in this process; prints a JSON object."""
    import torch

    fn = method(args.worker)
    samples, train = make_data(args.m, args.n, args.d, args.seed)
    fn(samples[:4], train[:64], K)  # warm-up: thread pools, lazy initialisation
    inputs = proc_status("VmRSS")
    reset = reset_peak()
    best, out = float("inf"), None
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        out = fn(samples, train, K)
        best = min(best, time.perf_counter() - t0)
    peak = proc_status("VmHWM")
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux
    if args.save:
        np.savez(args.save, distances=out[0].double().numpy(), indices=out[1].numpy())
    return {"method": args.worker, "m": args.m, "n": args.n, "d": args.d, "k": K, "seconds": best,
            "repeats": args.repeats, "inputs_MiB": inputs / MIB, "peak_MiB": peak / MIB,
            "extra_MiB": (peak - inputs) / MIB, "maxrss_MiB": maxrss / MIB, "peak_reset": reset,
            "input_data_MiB": (samples.nbytes + train.nbytes) / MIB, "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__}


# ----- driver ---------------------------------------------------------------------------------------------------
def start(name: str, m: int, n: int, d: int, repeats: int, seed: int, save: str | None) -> subprocess.Popen:
    """A fresh worker process measuring one (method, size)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--m", str(m), "--n", str(n),
           "--d", str(d), "--repeats", str(repeats), "--seed", str(seed)] + (["--save", save] if save else [])
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.spec = {"method": name, "m": m, "n": n, "d": d, "k": K}  # type: ignore[attr-defined]
    return proc


def finish(proc: subprocess.Popen) -> Row:
    """The worker's row (or the failure, e.g. killed when out of memory)."""
    out, err = proc.communicate()
    if proc.returncode != 0:
        msg = (err.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        return {**proc.spec, "error": msg}  # type: ignore[attr-defined]
    return json.loads(out.strip().splitlines()[-1])


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def busy_cpus(interval: float = 0.5) -> float:
    """CPUs kept busy by any process over ``interval`` seconds (from /proc/stat; NaN where unavailable)."""
    def sample() -> tuple[int, int]:
        with open("/proc/stat") as fh:
            fields = [int(x) for x in fh.readline().split()[1:]]
        return sum(fields), fields[3] + fields[4]

    try:
        total0, idle0 = sample()
        time.sleep(interval)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return float("nan")
    return (os.cpu_count() or 1) * (1.0 - (idle1 - idle0) / max(total1 - total0, 1))


def rows(sizes: Sequence[tuple[int, int, int, int]], seed: int = 0, rounds: int = 1,
         log: Callable[[str], None] | None = None, at_once: bool = False) -> list[Row]:
    """Both searches at each size (m, n, d, repeats): the rows [easyhard, naive] per size.

    Each (method, size) is measured ``rounds`` times, each time in a fresh process, the methods alternating
    (easyhard, naive, easyhard, ...) so that a burst of load from elsewhere does not fall on one method only; a
    row keeps the fastest round's time (``seconds_rounds``: all of them) and the largest memory of its rounds.
    Processes run one at a time, or all at once with ``at_once`` (a smoke test, timings aside). The easyhard
    row of each size gets the ratios naive / easyhard (``time_ratio``, ``peak_ratio``, ``extra_ratio``),
    ``same_indices``, ``index_mismatch_rows``, ``max_abs_distance_diff`` and, where indices differ (the naive
    float32 distances are off by ~1e-3, so near-ties may swap), ``mismatch_easyhard_exact``: whether on every
    such row the float64 distances of easyhard's neighbours are no larger than those of the naive ones.
    ``log`` receives one line per process.
    """
    with tempfile.TemporaryDirectory() as tmp:
        jobs = [(name, m, n, d, reps, os.path.join(tmp, f"{name}-{i}.npz") if r == 0 else None)
                for i, (m, n, d, reps) in enumerate(sizes) for r in range(rounds) for name in ("easyhard", "naive")]
        if at_once:
            procs = [start(name, m, n, d, reps, seed, save) for name, m, n, d, reps, save in jobs]
            measured = [finish(p) for p in procs]
        else:
            measured = [finish(start(name, m, n, d, reps, seed, save)) for name, m, n, d, reps, save in jobs]
        if log:
            for r in measured:
                log(f"{r['method']} m={r['m']}: {r.get('seconds', float('nan')):.3g} s, "
                    f"peak {r.get('peak_MiB', float('nan')):.0f} MiB" + (f" ({r['error']})" if "error" in r else ""))
        out: list[Row] = []
        for i, (m, n, d, _) in enumerate(sizes):
            per_size = measured[2 * rounds * i:2 * rounds * (i + 1)]
            for name in ("easyhard", "naive"):
                runs = [r for r in per_size if r["method"] == name]
                failed = [r for r in runs if "error" in r]
                if failed:
                    out.append(failed[0])
                    continue
                row = dict(min(runs, key=lambda r: r["seconds"]))
                row.update({key: max(r[key] for r in runs) for key in ("peak_MiB", "extra_MiB", "maxrss_MiB")})
                row.update({"rounds": rounds, "seconds_rounds": [r["seconds"] for r in runs]})
                out.append(row)
            ez, nv = out[-2:]
            if "error" in ez or "error" in nv:
                continue
            ours, ref = np.load(os.path.join(tmp, f"easyhard-{i}.npz")), np.load(os.path.join(tmp, f"naive-{i}.npz"))
            differ = np.flatnonzero((ours["indices"] != ref["indices"]).any(1))
            ez.update({"reference": "naive", "time_ratio": nv["seconds"] / ez["seconds"],
                       "peak_ratio": nv["peak_MiB"] / ez["peak_MiB"],
                       "extra_ratio": nv["extra_MiB"] / max(ez["extra_MiB"], 1.0),
                       "same_indices": len(differ) == 0, "index_mismatch_rows": len(differ),
                       "max_abs_distance_diff": float(np.abs(ours["distances"] - ref["distances"]).max())})
            if len(differ):
                ez["mismatch_easyhard_exact"] = exact_no_farther(m, n, d, seed, differ, ours["indices"][differ],
                                                                 ref["indices"][differ])
    return out


def exact_no_farther(m: int, n: int, d: int, seed: int, samples_at: np.ndarray, ours: np.ndarray,
                     other: np.ndarray) -> bool:
    """Whether, for the samples ``samples_at`` of the benchmark data, the float64 distances of the neighbours
    ``ours`` (sorted) are elementwise no larger than those of ``other``: then ``ours`` is a correct answer."""
    import torch

    samples, train = make_data(m, n, d, seed)
    a = samples[torch.from_numpy(samples_at)].double()[:, None, :]

    def sorted_distances(idx: np.ndarray) -> torch.Tensor:
        return (a - train[torch.from_numpy(idx)].double()).norm(dim=-1).sort(1).values

    return bool((sorted_distances(ours) <= sorted_distances(other)).all())


def run(args: argparse.Namespace, log: Callable[[str], None]) -> list[Row]:
    """The comparison size and the full size (the memory requirement on its easyhard row)."""
    m_full, n, d = QUICK_FULL if args.quick else FULL
    m_small = QUICK_SMALL_M if args.quick else args.small_m
    if args.m:
        m_full = args.m
    out = rows([(m_small, n, d, args.repeats), (m_full, n, d, 1)], args.seed, args.rounds, log,
               at_once=args.quick)
    full = out[2]
    if "error" not in full:
        full["within_limit"] = full["peak_MiB"] <= LIMIT_GIB * 1024
        full["limit_GiB"] = LIMIT_GIB
    full["naive_matrix_MiB"] = m_full * n * 4 / MIB  # what the naive search needs for its matrix alone
    return out


def format_table(rows: Sequence[Row]) -> str:
    def num(x: Any, fmt: str) -> str:
        width = int(fmt.split(".")[0])
        return f"{'-':>{width}}" if x is None else format(x, fmt)

    head = (f"{'method':<9} {'m':>6} {'n':>7} {'d':>5} {'seconds':>8} {'inputs_MiB':>10} {'peak_MiB':>9} "
            f"{'extra_MiB':>9} {'time_ratio':>10} {'peak_ratio':>10} {'extra_ratio':>11}")
    lines = [head, "-" * len(head)]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['method']:<9} {r['m']:>6} {r['n']:>7} {r['d']:>5}  failed: {r['error']}")
            continue
        lines.append(f"{r['method']:<9} {r['m']:>6} {r['n']:>7} {r['d']:>5} {num(r['seconds'], '8.3g')} "
                     f"{num(r['inputs_MiB'], '10.0f')} {num(r['peak_MiB'], '9.0f')} {num(r['extra_MiB'], '9.0f')} "
                     f"{num(r.get('time_ratio'), '10.2f')} {num(r.get('peak_ratio'), '10.2f')} "
                     f"{num(r.get('extra_ratio'), '11.2f')}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print the rows as a JSON list on stdout")
    parser.add_argument("--quick", action="store_true", help=f"tiny sizes {QUICK_FULL}, one repeat (smoke test)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="fresh processes per (method, size), the methods alternating; fastest kept (default 2)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed calls at the comparison size, best kept (default 3; full size: one call)")
    parser.add_argument("--small-m", type=int, default=SMALL_M, help=f"samples at the comparison size ({SMALL_M})")
    parser.add_argument("--m", type=int, default=None, help=f"samples at full size (default {FULL[0]})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worker", choices=("easyhard", "naive"), help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--d", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--save", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    if args.quick:
        args.repeats = args.rounds = 1

    def log(msg: str) -> None:  # progress goes to stderr so that --json keeps stdout clean
        print(msg, file=sys.stderr, flush=True)

    load_before = busy_cpus(0.1 if args.quick else 0.5)
    t0 = time.perf_counter()
    result = run(args, log)
    wall = time.perf_counter() - t0
    for row in result:
        row.update({"busy_cpus_before": load_before, "device": f"cpu ({cpu_name()})",
                    "numpy": np.__version__, "python": platform.python_version()})
    if load_before > 0.3:
        log(f"warning: {load_before:.2f} CPUs were busy just before the run; timings may be slowed down")
    if args.json:
        print(json.dumps(result, indent=1))
        log(f"wall time {wall:.1f} s")
        return 0 if all("error" not in r for r in result) else 1
    full = result[2]
    print(f"k = {K} nearest neighbours (L2), float32 inputs, {result[0]['device']}, "
          f"{result[0].get('torch_threads', '?')} torch threads; time: best of {args.rounds} processes x "
          f"{args.repeats} calls (full size: one call each); memory in MiB from /proc/self/status, each row in "
          "a fresh process")
    print()
    print(format_table(result))
    print()
    for ez in result[::2]:
        if "same_indices" in ez:
            exact = ("" if ez["same_indices"] else "; easyhard's neighbours no farther in float64 on those rows: "
                     f"{ez['mismatch_easyhard_exact']}")
            print(f"m={ez['m']}: easyhard {ez['time_ratio']:.2f}x as fast as the naive search; same indices: "
                  f"{ez['same_indices']} ({ez['index_mismatch_rows']} rows differ; max |distance difference| "
                  f"{ez['max_abs_distance_diff']:.2g}{exact})")
    if "error" not in full:
        verdict = "OK" if full["within_limit"] else "EXCEEDED"
        print(f"requirement m={full['m']}, n={full['n']}, d={full['d']} within {LIMIT_GIB:g} GiB peak: "
              f"{full['peak_MiB'] / 1024:.2f} GiB (lifetime max RSS {full['maxrss_MiB'] / 1024:.2f} GiB): {verdict}; "
              f"the naive distance matrix alone takes {full['naive_matrix_MiB'] / 1024:.2f} GiB")
    print(f"wall time {wall:.1f} s")
    return 0 if all("error" not in r for r in result) else 1


if __name__ == "__main__":
    sys.exit(main())
