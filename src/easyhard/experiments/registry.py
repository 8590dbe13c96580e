"""Named experiments that sweeps can run: a table from name to ``"module:attribute"``, imported on first use.

An experiment is any object with

- ``config_cls``: a frozen dataclass whose ``__post_init__`` validates its fields (raising ``ConfigError``);
- ``run(config) -> dict``: runs one configuration and returns JSON-able metrics. Scalars (numbers, strings,
  booleans, None) become columns of a sweep's results table; lists and dicts stay in the run's metrics.json.

:class:`Experiment` bundles the two. Nothing is imported here beyond the standard library: the module behind
an entry is imported by :func:`get_experiment` only when that experiment is requested, so registering an
experiment never costs an import (or requires its optional dependencies) until it is used.

Besides the registered names, :func:`get_experiment` accepts ``"package.module:ATTRIBUTE"`` for an experiment
defined outside easyhard (it must be importable, also by the sweep's worker processes).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from easyhard._validate import ConfigError

#: experiment name -> "module:attribute" of its :class:`Experiment`; resolved lazily
REGISTRY: dict[str, str] = {
    "exponents": "easyhard.experiments.sweepable:EXPONENTS",
    "recovery": "easyhard.experiments.scaling:RECOVERY",
}

#: the registered experiment names
EXPERIMENTS: tuple[str, ...] = tuple(REGISTRY)


@dataclass(frozen=True)
class Experiment:
    """A named experiment: its config dataclass and the function that runs one config to a metrics dict."""

    name: str
    config_cls: type
    run: Callable[[Any], dict]
    description: str = ""


def get_experiment(name: str):
    """The experiment registered as ``name`` (or the object at ``"module:attribute"``), imported now.

    Raises ConfigError for an unknown name (listing the known ones), an entry that cannot be imported,
    or an object without a dataclass ``config_cls`` and a callable ``run``.
    """
    if not isinstance(name, str) or not name:
        raise ConfigError(f"experiment must be a non-empty string, one of {', '.join(EXPERIMENTS)} (got {name!r})")
    target = REGISTRY.get(name)
    if target is None:
        if ":" not in name:
            raise ConfigError(f"experiment must be one of {', '.join(EXPERIMENTS)} or 'module:attribute' "
                              f"(got {name!r})")
        target = name
    module_name, _, attribute = target.partition(":")
    try:
        obj = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"experiment {name!r} ({target}) could not be imported: "
                          f"{type(err).__name__}: {' '.join(str(err).split())}") from None
    config_cls = getattr(obj, "config_cls", None)
    if not (isinstance(config_cls, type) and dataclasses.is_dataclass(config_cls)) or not callable(
            getattr(obj, "run", None)):
        raise ConfigError(f"experiment {name!r} ({target}) needs a dataclass config_cls and a callable run")
    return obj


def config_fields(experiment) -> tuple[str, ...]:
    """Names of the experiment's config fields, in declaration order."""
    return tuple(f.name for f in dataclasses.fields(experiment.config_cls) if f.init)


_SIMPLE = (str, int, float, bool, type(None))
_TYPE_WORDS = {str: "a string", int: "an integer", float: "a number", bool: "true or false", type(None): "none"}


def _allowed_types(hint) -> tuple[type, ...] | None:
    """The scalar types a field hint admits (``float | None`` -> (float, NoneType)); None if not only scalars."""
    if hint in _SIMPLE:
        return (hint,)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if all(a in _SIMPLE for a in args):
            return tuple(args)
    return None


def _coerce(field: str, value: Any, hint) -> Any:
    """Check ``value`` against a scalar hint (ints widen to float; "none" -> None for optional numbers)."""
    if isinstance(value, list):
        value = tuple(_coerce(field, v, None) for v in value)
    allowed = _allowed_types(hint)
    if allowed is None:
        return value
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null") and str not in allowed):
        if type(None) in allowed:
            return None
    elif isinstance(value, bool):
        if bool in allowed:
            return value
    elif isinstance(value, int):
        if int in allowed:
            return value
        if float in allowed:
            return float(value)
    elif isinstance(value, float):
        if float in allowed:
            return value
    elif isinstance(value, str):
        if str in allowed:
            return value
    words = " or ".join(_TYPE_WORDS[t] for t in allowed)
    raise ConfigError(f"{field} must be {words} (got {value!r})")


def make_config(experiment, values: Mapping[str, Any], context: str = ""):
    """Build and validate the experiment's config from ``values`` (missing fields take their defaults).

    Unknown fields raise ConfigError naming the field and listing the allowed ones. Values are checked
    against the field types first: an integer given for a float field becomes a float (so ``beta = 5`` and
    ``beta = 5.0`` give the same config), lists become tuples, and the string "none" sets an optional
    number to None. Then the dataclass is constructed, so its own checks run. ``context`` (e.g. "run 3")
    prefixes error messages.
    """
    prefix = f"{context}: " if context else ""
    allowed = config_fields(experiment)
    for key in values:
        if key not in allowed:
            raise ConfigError(f"{prefix}unknown field {key!r} for experiment {getattr(experiment, 'name', '?')!r} "
                              f"(allowed: {', '.join(allowed)})")
    try:
        hints = typing.get_type_hints(experiment.config_cls)
    except Exception:  # unresolvable annotations: construct without the type pre-check
        hints = {}
    try:
        kwargs = {key: _coerce(key, value, hints.get(key)) for key, value in values.items()}
        return experiment.config_cls(**kwargs)
    except ConfigError as err:
        raise ConfigError(f"{prefix}{err}") from None
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{prefix}invalid config: {' '.join(str(err).split())}") from None


def _jsonable(name: str, value: Any) -> Any:
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigError(f"{name} must be finite to be recorded (got {value})")
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(name, v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(name, v) for k, v in value.items()}
    raise ConfigError(f"{name} has a value that cannot be recorded as JSON (got {type(value).__name__})")


def config_to_dict(config) -> dict[str, Any]:
    """The config as a JSON-able dict (tuples become lists), in field order: what config.json records."""
    return {f.name: _jsonable(f.name, getattr(config, f.name)) for f in dataclasses.fields(config) if f.init}


def canonical_json(data: Any) -> str:
    """Canonical JSON text (sorted keys, no spaces, exact float reprs) used to hash run configs."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
