"""Parameter validation shared by configs, library functions and the CLI.

Every check raises :class:`ConfigError` with a one-line message that names the offending
parameter and its allowed range; the CLI turns it into exit code 2.
"""

from __future__ import annotations

import math
from collections.abc import Iterable


class ConfigError(ValueError):
    """Invalid parameter value. ``str(err)`` is a single line naming the parameter."""


def check_finite(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number (got {value})")
    return value


def check_nonnegative(name: str, value: float) -> float:
    value = check_finite(name, value)
    if value < 0:
        raise ConfigError(f"{name} must be >= 0 (got {value:g})")
    return value


def check_positive(name: str, value: float) -> float:
    value = check_finite(name, value)
    if value <= 0:
        raise ConfigError(f"{name} must be > 0 (got {value:g})")
    return value


#: the largest learning rate accepted: beyond it every optimiser of the package diverges or overflows
MAX_LR = 10.0


def check_lr(name: str, value: float) -> float:
    """A learning rate in (0, 10]."""
    value = check_positive(name, value)
    if value > MAX_LR:
        raise ConfigError(f"{name} must lie in (0, {MAX_LR:g}] (got {value:g})")
    return value


#: the most diffusion steps T a schedule may have (the DDPM standard is 1000)
MAX_T = 100_000


def check_schedule_length(name: str, value: int, low: int = 1) -> int:
    """A number of diffusion steps T in [low, 100000]."""
    return check_int_in(name, value, low, MAX_T)


def check_open_unit(name: str, value: float) -> float:
    """0 < value < 1."""
    value = check_finite(name, value)
    if not 0 < value < 1:
        raise ConfigError(f"{name} must lie in (0, 1) (got {value:g})")
    return value


def check_unit_interval(name: str, value: float) -> float:
    """0 <= value <= 1."""
    value = check_finite(name, value)
    if not 0 <= value <= 1:
        raise ConfigError(f"{name} must lie in [0, 1] (got {value:g})")
    return value


def check_int_at_least(name: str, value: int, low: int) -> int:
    if isinstance(value, bool) or int(value) != value:
        raise ConfigError(f"{name} must be an integer >= {low} (got {value!r})")
    if int(value) < low:
        raise ConfigError(f"{name} must be an integer >= {low} (got {value})")
    return int(value)


def check_int_in(name: str, value: int, low: int, high: int, high_text: str | None = None, reason: str = "") -> int:
    """An integer in [low, high]; above ``high`` the message shows ``high_text`` (default: the number) and
    ``reason`` (why the bound is there), below ``low`` it is :func:`check_int_at_least`'s."""
    value = check_int_at_least(name, value, low)
    if value > high:
        why = f"{reason}; " if reason else ""
        raise ConfigError(f"{name} must be an integer in [{low}, {high if high_text is None else high_text}] "
                          f"({why}got {value})")
    return value


#: the largest seed accepted anywhere (NumPy's and torch's generators take seeds in [0, 2^63))
MAX_SEED = 2**63 - 1


def check_seed(name: str, value: int) -> int:
    """A seed: an integer in [0, 2^63 - 1]."""
    return check_int_in(name, value, 0, MAX_SEED, "2^63 - 1")


def check_distinct(name: str, values: Iterable) -> tuple:
    """The values, refused if one repeats (the same cell would run twice)."""
    values = tuple(values)
    repeated = sorted({v for v in values if values.count(v) > 1}, key=str)
    if repeated:
        raise ConfigError(f"{name} must not repeat a value (got {', '.join(map(str, repeated))} more than once)")
    return values


#: the most bootstrap resamples accepted: beyond 10^6 the Monte-Carlo error of a 95% percentile interval
#: (about 0.1% of its width at 10^6) is far below the sampling error it describes
MAX_BOOT = 10**6


def check_n_boot(name: str, value: int, low: int = 10) -> int:
    """A bootstrap resample count in [low, 10^6]."""
    return check_int_in(name, value, low, MAX_BOOT)


def check_workers(name: str, value: int) -> int:
    """A number of worker processes in [1, 4 x the CPU count]."""
    import os

    return check_int_in(name, value, 1, 4 * (os.cpu_count() or 1), reason=f"4 x the {os.cpu_count()} CPUs")


def check_choice(name: str, value: str, choices: Iterable[str]) -> str:
    choices = tuple(choices)
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)} (got {value!r})")
    return value


def check_device(name: str, value: str, allow_auto: bool = True) -> str:
    """A torch device name: "cpu", "cuda" or "cuda:N" (and "auto": CUDA when available, else the CPU)."""
    import re

    allowed = ("auto, " if allow_auto else "") + "cpu, cuda or cuda:N"
    if not isinstance(value, str) or not (re.fullmatch(r"cpu|cuda(:\d+)?", value) or (allow_auto and value == "auto")):
        raise ConfigError(f"{name} must be {allowed} (got {value!r})")
    return value


def check_device_available(name: str, value: str) -> str:
    """A resolved device that this machine has: "cpu", or "cuda"/"cuda:N" when torch sees that GPU."""
    check_device(name, value, allow_auto=False)
    if value == "cpu":
        return value
    import torch

    if not torch.cuda.is_available():
        why = "torch was built without CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
        raise ConfigError(f"{name} {value}: this machine has no CUDA device ({why}); use cpu or auto")
    index = int(value.partition(":")[2] or 0)
    count = torch.cuda.device_count()
    if index >= count:
        raise ConfigError(f"{name} must be cpu, cuda or cuda:N with N in [0, {count - 1}] on this machine "
                          f"(got {value!r})")
    return value


def check_out_dir(name: str, path):
    """An output folder that exists and is writable, or can be created (its nearest existing ancestor is a
    writable folder). Nothing is created here: the run creates it when it starts writing."""
    import os
    from pathlib import Path

    if path is None or not str(path).strip():
        raise ConfigError(f"{name} must name a folder (got {'' if path is None else str(path)!r})")
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{name} {path} exists and is not a folder")
    existing = folder if folder.exists() else next(p for p in folder.absolute().parents if p.exists())
    if not existing.is_dir():
        raise ConfigError(f"{name} {path} cannot be created: {existing} is a file, not a folder")
    import tempfile

    try:  # os.access is not enough: root passes it on read-only mounts and in /proc
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".easyhard-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise ConfigError(f"{name} {path}: {existing} is not writable ({err.strerror or err})") from None
    return folder


def resolve_device(value: str) -> str:
    """"auto" -> "cuda" when torch sees a GPU, else "cpu"; other names unchanged."""
    if value != "auto":
        return value
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
