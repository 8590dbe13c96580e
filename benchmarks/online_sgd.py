"""Throughput of ``easyhard.train.run_online_sgd`` against a plain per-sample NumPy loop.

What is compared
----------------
Both sides run the same online SGD (docs/theory/mcm.md sections 4.4 and 8.1) of the tied single tanh
neuron ``Committee(d=d)`` (skip c_t = e^-t, a_out = 1) on ``MixedCumulantModel.create(d, 5, 5)``
(Rademacher nu, independent latents, u = e_1, v = e_2), at t = 0.5 with eta = 0.5 / d, one fresh
sample per step and a spherical step:

    x0 = z + sqrt(beta_u) lambda u + (sqrt(beta_v) nu (1 - k) - k v.z) v,   k = 1 - 1/sqrt(1 + beta_v)
    x_t = a x0 + s xi,  h = w.x_t,  r = x0 - c x_t - w tanh(h)
    g = -2 [tanh(h) r + (w.r)(1 - tanh(h)^2) x_t],  w <- (w - eta g_perp) / ||w - eta g_perp||

* ``reference``: one seed at a time, one sample per step, ``numpy.random.default_rng(seed)``, NumPy
  vectorised over the d coordinates only (float64, NumPy's default). It does not depend on E, so it
  is timed once per d; its rate is steps / second.
* ``engine``: ``run_online_sgd`` with E members (seeds 0..E-1), float32, after a warm-up call (so
  numba compilation / cache loading and CUDA start-up are not timed). Its rate is E * steps / second
  of the whole call (set-up, latent draws and the log records included).

* ``reduced`` rows: the exact reduced simulator (``engine="reduced"``, the overlaps as a Markov chain,
  d-independent cost per step) against the full numba kernel at the same (d, E): the ``reference``
  column of these rows is the full engine's rate, and the ratio is the speed-up of simulating the
  chain instead of the d-dimensional weights (they agree in law: tests/train/test_reduced.py). With CUDA,
  the torch implementation of the reduced simulator runs large ensembles on the GPU (reference: the
  CPU rate at the same d).

Rates are "member-steps/s": SGD steps of one member per second. Every timing is the best of
``--repeats`` (default 3) runs, and step counts are calibrated from a pilot run so that one timing
takes about ``--target`` seconds (default 0.8 s).

How to read the ratio
---------------------
``ratio = engine / reference`` is the speed-up of running E members with the engine over running E
seeds one after the other with the NumPy loop on the same machine. At E = 1 it measures the per-step
cost of the fused kernel against NumPy's per-call overhead (which dominates at d ~ 100); at E = 64 it
adds the parallelism over members (numba threads on CPU). On CUDA the torch engine runs one step of
all E members per kernel sequence, so the ratio grows with E until the GPU is busy; for those rows
``traffic_fraction`` = rate * 12 d bytes / measured copy bandwidth says how close one member-step is
to the memory-traffic limit (12 d bytes ~ read and write w and write x in float32), and ``us_per_step``
= 1e6 E / rate is the wall time of one step of the whole ensemble (issue 5's targets: <= 40 us per step
for E d <= 1e6, >= 50% of the traffic limit at E d = 1e7). The torch engine captures blocks of steps
in CUDA graphs on CUDA.

Timings need an otherwise idle machine: numba's parallel regions (one per log record) wait for every
worker thread, so a single busy core from another process can slow the engine down many times over
(the script warns when CPUs were busy just before it started; ``busy_cpus_before`` in the rows).

A sanity check runs both sides for 40 d steps at d = 128 and compares the mean final |w.u| (both
should be ~0.8; they use different random streams, so the comparison is statistical and loose).

Usage::

    python benchmarks/online_sgd.py            # table + sanity check
    python benchmarks/online_sgd.py --json     # JSON list of row objects on stdout
    python benchmarks/online_sgd.py --quick    # smoke test (tiny step counts, one repeat)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

BETA_U = 5.0
BETA_V = 5.0
T = 0.5
DELTA = 0.5
CPU_DIMS = (128, 1024)
CPU_ENSEMBLES = (1, 64)
REDUCED_E = 64
CUDA_REDUCED_ENSEMBLES = (4096, 65536)
CUDA_DIMS = (1000, 1024)
CUDA_ENSEMBLES = (64, 1000, 10_000)  # E d from 6.4e4 (latency-bound) to 1e7 (bandwidth-bound)
CUDA_DEVICE = "cuda"
SANITY_D = 128
SANITY_STEPS_PER_D = 40
Row = dict[str, Any]


# ----- the reference: a straightforward per-sample NumPy loop --------------------------------------------------
def reference_run(d: int, steps: int, seed: int, beta_u: float = BETA_U, beta_v: float = BETA_V,
                  t: float = T, delta: float = DELTA) -> np.ndarray:
    """Online spherical SGD of the tied tanh neuron for ``steps`` steps; returns the final unit w (d,)."""
    rng = np.random.default_rng(seed)
    u = np.zeros(d)
    u[0] = 1.0
    v = np.zeros(d)
    v[1] = 1.0
    sqrt_bu, sqrt_bv = math.sqrt(beta_u), math.sqrt(beta_v)
    k = 1.0 - 1.0 / math.sqrt(1.0 + beta_v)
    a = math.exp(-t)
    s = math.sqrt(1.0 - math.exp(-2.0 * t))
    c = a
    eta = delta / d
    w = rng.standard_normal(d)
    w /= np.linalg.norm(w)
    for _ in range(steps):
        lam = rng.standard_normal()
        nu = 1.0 if rng.random() < 0.5 else -1.0
        z, xi = rng.standard_normal((2, d))
        x0 = z + (sqrt_bu * lam) * u + (sqrt_bv * nu * (1.0 - k) - k * (v @ z)) * v
        xt = a * x0 + s * xi
        th = math.tanh(w @ xt)
        r = x0 - c * xt - th * w
        g = -2.0 * (th * r + (w @ r) * (1.0 - th * th) * xt)
        g -= (g @ w) * w
        w = w - eta * g
        w /= np.linalg.norm(w)
    return w


# ----- timing helpers ------------------------------------------------------------------------------------------
def best_time(fn: Callable[[], object], repeats: int) -> float:
    """Smallest wall time in seconds of ``repeats`` calls of ``fn``."""
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def calibrate(make: Callable[[int], Callable[[], object]], start: int, target_s: float, hi: int) -> int:
    """Steps for which one call of ``make(steps)`` takes about ``target_s`` (at most ``hi``).

    Pilot runs grow 4x from ``start`` until one takes a quarter of the target (so a fixed per-call
    overhead does not inflate the estimate), then the count is scaled linearly.
    """
    steps = min(start, hi)
    while True:
        secs = best_time(make(steps), 1)
        if secs >= target_s / 4 or steps >= hi:
            break
        steps = min(hi, steps * 4)
    return int(min(max(steps * target_s / max(secs, 1e-9), 1), hi))


def engine_call(d: int, E: int, steps: int, engine: str, device: str, n_logs: int) -> Callable[[], object]:
    """A closure running ``run_online_sgd`` once (and waiting for the device)."""
    import torch

    from easyhard.data import MixedCumulantModel
    from easyhard.models import Committee
    from easyhard.train import OnlineSGDConfig, run_online_sgd

    model = Committee(d=d)
    data = MixedCumulantModel.create(d=d, beta_u=BETA_U, beta_v=BETA_V)
    config = OnlineSGDConfig(steps=steps, delta=DELTA, p=1.0, t=T, engine=engine, device=device,
                             dtype="float32", n_logs=n_logs)
    seeds = list(range(E))

    def call():
        res = run_online_sgd(model, data, config, seeds)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return res

    return call


def timed(make: Callable[[int], Callable[[], object]], steps: int, args: argparse.Namespace,
          hi: int) -> tuple[int, float]:
    """(steps, best time of ``args.repeats`` calls); once re-calibrated if the best call was far below the target.

    A pilot slowed down by another process makes the calibrated run too short; the second attempt fixes that.
    """
    secs = best_time(make(steps), args.repeats)
    if not args.quick and secs < args.target / 3 and steps < hi:
        steps = int(min(hi, steps * args.target / max(secs, 1e-9)))
        secs = best_time(make(steps), args.repeats)
    return steps, secs


# ----- measurements --------------------------------------------------------------------------------------------
def time_reference(d: int, args: argparse.Namespace) -> dict[str, float]:
    """Reference member-steps/s at dimension d (seed 0), with a calibrated step count."""
    def make(steps: int) -> Callable[[], object]:
        return lambda: reference_run(d, steps, 0)

    steps = 200 if args.quick else calibrate(make, 1000, args.target, 5_000_000)
    steps, secs = timed(make, steps, args, 5_000_000)
    return {"reference": steps / secs, "reference_steps": steps, "reference_s": secs}


def time_engine(d: int, E: int, args: argparse.Namespace, engine: str, device: str,
                max_steps: int) -> dict[str, float]:
    """Engine member-steps/s for (d, E): warm-up, pilot, calibrated best-of-``repeats`` timing."""
    def make(steps: int) -> Callable[[], object]:
        return engine_call(d, E, steps, engine, device, args.n_logs)

    make(2)()  # warm-up: numba compilation or cache load, CUDA context and kernels
    if args.quick:
        steps = min(64, max_steps)
    else:
        steps = calibrate(make, max(16, 4096 // E), args.target, max_steps)
    steps, secs = timed(make, steps, args, max_steps)
    return {"engine": E * steps / secs, "steps": steps, "engine_s": secs}


def sanity_check(args: argparse.Namespace) -> dict[str, float]:
    """Mean final |w.u| after 40 d steps at d = 128: engine (64 seeds) and reference (a few seeds)."""
    d = SANITY_D
    steps = (5 if args.quick else SANITY_STEPS_PER_D) * d
    n_ref = 2 if args.quick else 6
    ref = np.array([abs(reference_run(d, steps, 1000 + i)[0]) for i in range(n_ref)])
    res = engine_call(d, 64, steps, "numba", "cpu", args.n_logs)()
    eng = np.abs(res.overlaps[-1, :, 0, 0])
    out = {"sanity_steps": steps,
           "sanity_engine_abs_wu": float(eng.mean()), "sanity_engine_sem": float(eng.std(ddof=1) / math.sqrt(eng.size)),
           "sanity_reference_abs_wu": float(ref.mean()),
           "sanity_reference_sem": float(ref.std(ddof=1) / math.sqrt(ref.size))}
    diff = abs(out["sanity_engine_abs_wu"] - out["sanity_reference_abs_wu"])
    tol = max(0.1, 4.0 * math.hypot(out["sanity_engine_sem"], out["sanity_reference_sem"]))
    out["sanity_ok"] = bool(diff <= tol) if not args.quick else True
    return out


def cuda_bandwidth(nbytes: int = 1 << 30, reps: int = 10) -> float:
    """Device-to-device copy bandwidth in bytes/s (``dst.copy_(src)`` of ``nbytes``, counted as 2 nbytes moved)."""
    import torch

    src = torch.ones(nbytes // 4, dtype=torch.float32, device="cuda")
    dst = torch.empty_like(src)
    dst.copy_(src)
    torch.cuda.synchronize()
    best_ms = math.inf
    for _ in range(3):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            dst.copy_(src)
        end.record()
        end.synchronize()
        best_ms = min(best_ms, start.elapsed_time(end) / reps)
    del src, dst
    torch.cuda.empty_cache()
    return 2 * nbytes / (best_ms * 1e-3)


def cuda_max_steps(d: int, E: int) -> int:
    """Steps that keep the torch engine's noise block (E, steps, 2, d) float32 within a quarter of the GPU.

    The engine draws the Gaussians of a whole chunk (at most ``CHUNK`` steps) at once and allocates the next
    block while the previous one is alive, so runs stay within one chunk.
    """
    import torch

    from easyhard.train import CHUNK

    total = torch.cuda.get_device_properties(0).total_memory
    return int(max(16, min(CHUNK, total // 4 // (E * 2 * d * 4))))


# ----- environment ---------------------------------------------------------------------------------------------
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
        return sum(fields), fields[3] + fields[4]  # total, idle + iowait

    try:
        total0, idle0 = sample()
        time.sleep(interval)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return float("nan")
    ncpu = os.cpu_count() or 1
    return ncpu * (1.0 - (idle1 - idle0) / max(total1 - total0, 1))


def environment() -> dict[str, Any]:
    """Versions and thread counts recorded in every row (call after a numba parallel kernel ran)."""
    import numba
    import torch

    try:
        layer = numba.threading_layer()
    except ValueError:  # no parallel kernel has run yet
        layer = "unknown"
    return {"numba": numba.__version__, "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version(), "numba_threads": numba.get_num_threads(),
            "numba_threading_layer": layer, "torch_threads": torch.get_num_threads(),
            "cpu_count": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "")}


# ----- driver --------------------------------------------------------------------------------------------------
def run(args: argparse.Namespace, log: Callable[[str], None]) -> tuple[list[Row], dict[str, Any]]:
    """All rows (CPU, then CUDA when available) and the sanity-check summary."""
    import torch

    cpu = cpu_name()
    rows: list[Row] = []
    refs: dict[int, dict[str, float]] = {}
    for d in CPU_DIMS:
        refs[d] = time_reference(d, args)
        log(f"reference d={d}: {refs[d]['reference']:.4g} member-steps/s")
        for E in CPU_ENSEMBLES:
            eng = time_engine(d, E, args, "numba", "cpu", max_steps=50_000_000)
            rows.append({"d": d, "E": E, "engine": eng["engine"], "reference": refs[d]["reference"],
                         "ratio": eng["engine"] / refs[d]["reference"], "device": f"cpu ({cpu})",
                         "engine_name": "numba", **eng, **{k: v for k, v in refs[d].items() if k != "reference"}})
            log(f"engine numba d={d} E={E}: {eng['engine']:.4g} member-steps/s")
    for d in CPU_DIMS:  # the exact reduced simulator against the full d-dimensional kernel (same E, same setting)
        full = next(r for r in rows if r["d"] == d and r["E"] == REDUCED_E and r["engine_name"] == "numba")
        red = time_engine(d, REDUCED_E, args, "reduced", "cpu", max_steps=50_000_000)
        rows.append({"d": d, "E": REDUCED_E, "engine": red["engine"], "reference": full["engine"],
                     "ratio": red["engine"] / full["engine"], "device": f"cpu ({cpu})", "engine_name": "reduced",
                     "reference_name": "numba (full d)", **red})
        log(f"engine reduced d={d} E={REDUCED_E}: {red['engine']:.4g} member-steps/s")
    sanity = sanity_check(args)
    env = environment()
    for row in rows:
        row.update(env)

    if args.cuda and torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(0)
        bandwidth = cuda_bandwidth()
        log(f"cuda copy bandwidth: {bandwidth / 1e9:.4g} GB/s")
        for d in CUDA_DIMS:
            if d not in refs:
                refs[d] = time_reference(d, args)
            for E in CUDA_ENSEMBLES:
                row: Row = {"d": d, "E": E, "device": f"cuda ({gpu})", "engine_name": "torch",
                            "bandwidth_GBps": bandwidth / 1e9, **env}
                try:
                    eng = time_engine(d, E, args, "torch", CUDA_DEVICE, max_steps=cuda_max_steps(d, E))
                except RuntimeError as exc:  # e.g. torch.cuda.OutOfMemoryError: report it, keep the other rows
                    torch.cuda.empty_cache()
                    msg = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"
                    row.update({"engine": None, "reference": refs[d]["reference"], "ratio": None,
                                "traffic_fraction": None, "error": msg})
                    rows.append(row)
                    log(f"engine torch/cuda d={d} E={E}: failed ({msg})")
                    continue
                row.update({"engine": eng["engine"], "reference": refs[d]["reference"],
                            "ratio": eng["engine"] / refs[d]["reference"],
                            "traffic_fraction": eng["engine"] * 12 * d / bandwidth,
                            "us_per_step": 1e6 * E / eng["engine"], **eng,
                            **{k: v for k, v in refs[d].items() if k != "reference"}})
                rows.append(row)
                log(f"engine torch/cuda d={d} E={E}: {eng['engine']:.4g} member-steps/s")
                torch.cuda.empty_cache()
        for E in CUDA_REDUCED_ENSEMBLES:  # the reduced simulator on the GPU (torch, all members at once)
            d = CPU_DIMS[-1]
            red = time_engine(d, E, args, "reduced", CUDA_DEVICE, max_steps=1_000_000)
            cpu_red = next(r for r in rows if r["engine_name"] == "reduced" and r["d"] == d)
            rows.append({"d": d, "E": E, "device": f"cuda ({gpu})", "engine_name": "reduced", **env,
                         "engine": red["engine"], "reference": cpu_red["engine"],
                         "ratio": red["engine"] / cpu_red["engine"], "reference_name": "reduced (CPU numba)",
                         "us_per_step": 1e6 * E / red["engine"], **red})
            log(f"engine reduced/cuda d={d} E={E}: {red['engine']:.4g} member-steps/s")
    return rows, sanity


def format_table(rows: Sequence[Row]) -> str:
    def num(x: float | None, fmt: str) -> str:
        width = int(fmt.split(".")[0])
        return f"{'-':>{width}}" if x is None else format(x, fmt)

    head = (f"{'device':<6} {'engine':<8} {'d':>5} {'E':>5} {'rate':>12} {'reference':>12} {'ratio':>8} "
            f"{'steps':>9}")
    cuda = any(r["engine_name"] == "torch" for r in rows)
    if cuda:
        head += f" {'traffic':>8} {'us/step':>8}"
    lines = [head, "-" * len(head)]
    for r in rows:
        line = (f"{r['device'].split()[0]:<6} {r['engine_name']:<8} {r['d']:>5} {r['E']:>5} {num(r['engine'], '12.4g')} "
                f"{num(r['reference'], '12.4g')} {num(r['ratio'], '8.1f')} {r.get('steps', '-'):>9}")
        if cuda:
            frac = r.get("traffic_fraction")
            line += f" {'-' if frac is None else f'{100 * frac:.3g}%':>8}"
            line += f" {num(r.get('us_per_step'), '8.1f')}"
        if r.get("error"):
            line += f"  {r['error']}"
        lines.append(line)
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print the rows as a JSON list on stdout")
    parser.add_argument("--quick", action="store_true", help="tiny step counts and one repeat (smoke test)")
    parser.add_argument("--repeats", type=int, default=3, help="timings per row; the best is kept (default 3)")
    parser.add_argument("--target", type=float, default=0.8, help="seconds one timing should take (default 0.8)")
    parser.add_argument("--n-logs", type=int, default=120, help="record points of each engine run (default 120)")
    parser.add_argument("--no-cuda", dest="cuda", action="store_false", help="skip the CUDA rows")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats = 1

    def log(msg: str) -> None:  # progress goes to stderr so that --json keeps stdout clean
        print(msg, file=sys.stderr, flush=True)

    load_before = busy_cpus()
    t0 = time.perf_counter()
    rows, sanity = run(args, log)
    wall = time.perf_counter() - t0
    for row in rows:
        row["busy_cpus_before"] = load_before
    if load_before > 0.3:
        log(f"warning: {load_before:.2f} CPUs were busy just before the run; another process may be using the "
            "CPU, and numba's parallel regions slow down a lot when a core is taken (best-of-repeats helps only "
            "if the load comes and goes)")
    verdict = "OK" if sanity["sanity_ok"] else "MISMATCH"
    sanity_line = (f"sanity ({sanity['sanity_steps']} steps at d={SANITY_D}): mean final |w.u| engine "
                   f"{sanity['sanity_engine_abs_wu']:.3f} +- {sanity['sanity_engine_sem']:.3f} (64 seeds), reference "
                   f"{sanity['sanity_reference_abs_wu']:.3f} +- {sanity['sanity_reference_sem']:.3f}: {verdict}")
    if args.json:
        for row in rows:
            row.update(sanity)
        log(sanity_line)
        print(json.dumps(rows, indent=1))
        print(f"wall time {wall:.1f} s", file=sys.stderr)
        return 0
    env = {k: v for k, v in rows[0].items() if k in ("numba", "torch", "numpy", "python", "numba_threads",
                                                      "numba_threading_layer", "torch_threads", "cpu_count")}
    print(f"online SGD, tied tanh neuron, beta_u = beta_v = {BETA_U:g}, t = {T:g}, eta = {DELTA:g}/d; "
          f"rates in member-steps/s, best of {args.repeats}; steps = engine steps per member in one timing")
    print(f"host: {rows[0]['device']}")
    if any(r["engine_name"] == "torch" for r in rows):
        cuda_row = next(r for r in rows if r["engine_name"] == "torch")
        print(f"gpu: {cuda_row['device']}, copy bandwidth {cuda_row['bandwidth_GBps']:.4g} GB/s")
    print("env: " + ", ".join(f"{k}={v}" for k, v in env.items()))
    print()
    print(format_table(rows))
    print()
    print(sanity_line)
    print(f"wall time {wall:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
