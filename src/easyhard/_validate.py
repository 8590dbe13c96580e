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


def resolve_device(value: str) -> str:
    """"auto" -> "cuda" when torch sees a GPU, else "cpu"; other names unchanged."""
    if value != "auto":
        return value
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
