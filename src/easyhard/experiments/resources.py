"""What a run would take: rough memory and time estimates, checked against stated bounds before any work.

An experiment may declare ``resources(config) -> Resources``; ``easyhard reproduce`` (and
:func:`check_resources` from Python) refuses a configuration whose estimate exceeds

- memory: :data:`MEMORY_FRACTION` of this machine's physical memory, or
- time: :data:`TIME_BOUND_S` (24 hours) on the configured device,

unless forced (``--force``), and says what it would take. The estimates are cost models with constants
measured on a 2-core CPU (``benchmarks/resource_estimates.py`` prints estimate / measured for the smoke
profiles); they are meant to be right within a factor of a few, which is enough to stop a mistyped size
(``--seeds 99999999999``) before it fills the memory or runs for years, not to predict a run's duration.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from easyhard._validate import ConfigError

#: refuse estimates above this fraction of the machine's physical memory (without force)
MEMORY_FRACTION = 0.8
#: refuse estimates above this many seconds (without force)
TIME_BOUND_S = 24 * 3600.0

#: resident memory of a Python process with torch and easyhard imported (bytes, measured: 0.7-0.8 GB)
BASE_MEMORY = 0.8e9
#: dense float32 throughput of torch on the CPU (flop/s, measured on 2 cores: MLP training steps)
CPU_FLOPS = 2e10
#: assumed speed-up of a GPU over the CPU for the same work (rough, deliberately modest)
GPU_SPEEDUP = 20.0
#: online SGD: seconds per member, per step and per dimension (numba and torch engines on the CPU)
SGD_SECONDS_PER_MEMBER_STEP_DIM = 3e-8
#: online SGD: bytes kept per member and per step (the staircase records every step: overlaps and loss)
SGD_BYTES_PER_MEMBER_STEP = 18.0


@dataclass(frozen=True)
class Resources:
    """A rough estimate: peak memory (bytes) and wall time (seconds) on the configured device."""

    memory_bytes: float
    seconds: float

    def __add__(self, other: Resources) -> Resources:
        return Resources(self.memory_bytes + other.memory_bytes, self.seconds + other.seconds)

    def describe(self) -> str:
        return f"about {format_bytes(self.memory_bytes)} of memory and {format_seconds(self.seconds)}"


def format_bytes(n: float) -> str:
    for unit, size in (("TiB", 2.0**40), ("GiB", 2.0**30), ("MiB", 2.0**20)):
        if n >= size:
            return f"{n / size:.3g} {unit}" if n / size < 1e4 else f"{n / 2.0 ** 40:.2e} TiB"
    return f"{n / 2.0 ** 20:.0f} MiB"


def format_seconds(s: float) -> str:
    for unit, size in (("years", 365.25 * 86400), ("days", 2 * 86400.0), ("h", 3600.0), ("min", 60.0)):
        if s >= size:
            value = s / size * (2 if unit == "days" else 1)
            return f"{value:.3g} {unit}" if value < 1e4 else f"{s / (365.25 * 86400):.2e} years"
    return f"{s:.2g} s"


def machine_memory() -> float:
    """Physical memory of this machine in bytes (inf where the OS does not say)."""
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, OSError, ValueError):
        return math.inf


def on_device(seconds_on_cpu: float, device: str | None) -> float:
    """Seconds on ``device``: the CPU estimate, divided by :data:`GPU_SPEEDUP` on a GPU."""
    return seconds_on_cpu / GPU_SPEEDUP if device is not None and device.startswith("cuda") else seconds_on_cpu


def online_sgd(members: float, steps: float, d: float, records_per_step: bool = True,
               device: str | None = "cpu") -> Resources:
    """Online SGD of ``members`` single neurons for ``steps`` steps in dimension ``d``: time ~ members steps d;
    memory: weights and batches (members d floats) plus the records (every step, or a fixed number of logs)."""
    kept = members * steps * SGD_BYTES_PER_MEMBER_STEP if records_per_step else members * 60 * 48.0
    return Resources(members * d * 64.0 + kept,
                     on_device(members * steps * d * SGD_SECONDS_PER_MEMBER_STEP_DIM, device))


def dense_training(params: float, batch: float, steps: float, members: float = 1, device: str | None = "cpu"
                   ) -> Resources:
    """Training ``members`` dense networks of ``params`` weights for ``steps`` steps of ``batch`` inputs: about
    6 flops per weight and input (forward and backward); memory: weights, gradients and two Adam moments."""
    flops = 6.0 * params * batch * steps * members
    return Resources(16.0 * params * members, on_device(flops / CPU_FLOPS, device))


def mlp_params(d_in: int, width: int, depth: int, time_dim: int = 0) -> float:
    """Weights of an MLP with ``depth`` hidden layers of ``width`` on inputs of ``d_in`` (+ a time embedding)."""
    return (d_in + time_dim) * width + (depth - 1) * width * width + width * d_in + depth * width


def check_resources(what: str, estimate: Resources, force: bool = False) -> Resources:
    """``estimate``, or ConfigError (one line: what it would take and the bounds) when it exceeds a bound and
    ``force`` is false."""
    memory_bound = MEMORY_FRACTION * machine_memory()
    total = Resources(BASE_MEMORY + estimate.memory_bytes, estimate.seconds)
    if force or (total.memory_bytes <= memory_bound and total.seconds <= TIME_BOUND_S):
        return total
    raise ConfigError(f"{what}: this configuration needs {total.describe()} (bounds: {format_bytes(memory_bound)}, "
                      f"{MEMORY_FRACTION:.0%} of this machine's memory, and {format_seconds(TIME_BOUND_S)}); "
                      "reduce the sizes, or pass --force to run it anyway")
