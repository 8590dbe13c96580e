"""The experiment interface and the one registry of named experiments.

An :class:`Experiment` bundles

- ``config_cls``: a frozen dataclass whose ``__post_init__`` validates its fields (raising ``ConfigError``);
- ``run(config, ctx) -> dict``: runs one configuration and returns JSON-able results. ``ctx`` is a
  :class:`RunContext` (working folder for resumable state, a progress callback, and the runner of
  independent cells); it may be None, e.g. for a quick call from Python;
- ``profiles``: named configurations (``smoke``: seconds, every code path; ``quick``: the CPU demonstration;
  ``full``: the GPU-sized run), each a function returning a config;
- ``report``: the report section built from the saved results only, ``report(results, out_dir) ->
  (figure file names, Markdown)``, so ``easyhard report OUT`` rebuilds a report from ``results.json``;
- ``options``: command-line aliases (:class:`Option`, e.g. ``--dims 64,128`` for the field ``dims``), and
  ``summary``/``total``: the lines printed after a run and the length of its progress bar;
- ``resources(config) -> Resources``: a rough memory and time estimate, checked against the bounds of
  :mod:`easyhard.experiments.resources` before any work (``--force`` overrides).

The command line is generated from these fields (``easyhard reproduce NAME``, ``easyhard sweep``,
``easyhard report``): adding an experiment is one new module and one line in :data:`REGISTRY`. Nothing
is imported here beyond the standard library: the module behind an entry is imported by
:func:`get_experiment` only when that experiment is requested, so registering an experiment never costs
an import (or requires its optional dependencies) until it is used.

Besides the registered names, :func:`get_experiment` accepts ``"package.module:ATTRIBUTE"`` and
``"path/to/file.py:ATTRIBUTE"`` for an experiment defined outside easyhard (importable also by a sweep's
worker processes), and :func:`register` adds a name at run time.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import json
import math
import re
import sys
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from easyhard._io import canonical_json  # noqa: F401  (re-exported: sweeps hash configs with it)
from easyhard._validate import ConfigError

#: experiment name -> "module:attribute" of its :class:`Experiment`; resolved lazily
REGISTRY: dict[str, str] = {
    "theory": "easyhard.experiments.theory_report:THEORY",
    "staircase": "easyhard.experiments.staircase:STAIRCASE",
    "staircase_cell": "easyhard.experiments.staircase:STAIRCASE_CELL",
    "scaling": "easyhard.experiments.scaling:SCALING",
    "images": "easyhard.experiments.images:IMAGES",
    "memorization": "easyhard.experiments.memorization:MEMORIZATION",
    "grammar": "easyhard.experiments.grammar:GRAMMAR",
    "diagnose": "easyhard.experiments.diagnose:DIAGNOSE",
    "exponents": "easyhard.experiments.sweepable:EXPONENTS",
    "recovery": "easyhard.experiments.scaling:RECOVERY",
}

#: the registered experiment names (at import time; :func:`names` includes later registrations)
EXPERIMENTS: tuple[str, ...] = tuple(REGISTRY)

#: the experiments of the main job, ``easyhard reproduce`` without a name, in report order
MAIN_JOB: tuple[str, ...] = ("theory", "staircase", "scaling")

#: the profile names every experiment may define
PROFILE_NAMES: tuple[str, ...] = ("smoke", "quick", "full")


class Progress(Protocol):
    """Progress callback: ``advance`` units of the experiment's ``total`` are done; ``label`` says what."""

    def __call__(self, advance: int = 1, label: str | None = None) -> None: ...


class CellRunner(Protocol):
    """Runs independent cells, each a config of a registered experiment, and returns their results by label.

    Finished cells are read back from ``cache_dir`` (one JSON per cell, :class:`CellCache`) when given.
    """

    def __call__(self, experiment: str, cells: Sequence[tuple[str, Any]], cache_dir: Path | None,
                 progress: Progress | None = None) -> dict[str, dict]: ...


def _no_progress(advance: int = 1, label: str | None = None) -> None:
    return None


@dataclass(frozen=True)
class RunContext:
    """What a run may use besides its config: ``out_dir`` for resumable state (None: keep nothing),
    ``progress`` and ``cells`` (the runner of independent cells; default: in this process, one by one).
    ``restart``: discard saved training state that cannot be used (corrupted, from another config) and start
    over, instead of stopping with an error that names the file."""

    out_dir: Path | None = None
    progress: Progress = _no_progress
    cells: CellRunner | None = None
    checkpoint: Path | None = None  # where a single resumable computation keeps its state
    restart: bool = False

    def run_cells(self, experiment: str, cells: Sequence[tuple[str, Any]], subdir: str = "cells") -> dict[str, dict]:
        """Results of ``cells`` (label, config of ``experiment``), cached under ``out_dir/subdir``."""
        runner = self.cells or run_cells_inline
        cache = None if self.out_dir is None else Path(self.out_dir) / subdir
        return runner(experiment, cells, cache, self.progress)


@dataclass(frozen=True)
class Option:
    """A command-line alias of a config field: ``--flag VALUE`` sets ``field`` (dotted for nested configs) to
    ``parse(VALUE)`` (default: the field's own parsing, as for ``--set``)."""

    flag: str
    field: str
    help: str = ""
    parse: Callable[[str], Any] | None = None
    is_flag: bool = False


@dataclass(frozen=True)
class Experiment:
    """A named experiment (module docstring)."""

    name: str
    config_cls: type
    run: Callable[[Any, RunContext | None], dict]
    description: str = ""
    profiles: Mapping[str, Callable[[], Any]] = field(default_factory=dict)  # -> config or dict of fields
    report: Callable[[dict, Path], tuple[list[str], str]] | None = None
    options: tuple[Option, ...] = ()
    summary: Callable[[dict], list[str]] | None = None
    total: Callable[[Any], int] | None = None
    resources: Callable[[Any], Any] | None = None  # config -> easyhard.experiments.resources.Resources


def register(name: str, target: str) -> None:
    """Register ``target`` ("module:attribute" or "path/to/file.py:attribute") under ``name``; later lookups
    (CLI, sweeps and their worker processes, reports) find it like a built-in experiment."""
    if not isinstance(target, str) or ":" not in target:
        raise ConfigError(f"target must be 'module:attribute' or 'file.py:attribute' (got {target!r})")
    REGISTRY[name] = target


def names() -> tuple[str, ...]:
    """Every registered name, built-in first."""
    return tuple(REGISTRY)


def resolve_target(name: str) -> str:
    """The "module:attribute" (or "file.py:attribute") behind ``name``; worker processes import by it."""
    return REGISTRY.get(name, name)


def _import_file(path: str):
    key = "_easyhard_file_" + hashlib.sha256(str(Path(path).resolve()).encode()).hexdigest()[:12]
    if key in sys.modules:
        return sys.modules[key]
    spec = importlib.util.spec_from_file_location(key, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[key]
        raise
    return module


def get_experiment(name: str) -> Experiment:
    """The experiment registered as ``name`` (or the object at ``"module:attribute"``), imported now.

    Raises ConfigError for an unknown name (listing the known ones), an entry that cannot be imported,
    or an object without a dataclass ``config_cls`` and a callable ``run``.
    """
    known = ", ".join(names())
    if not isinstance(name, str) or not name:
        raise ConfigError(f"experiment must be a non-empty string, one of {known} (got {name!r})")
    target = REGISTRY.get(name)
    if target is None:
        if ":" not in name:
            raise ConfigError(f"experiment must be one of {known} or 'module:attribute' (got {name!r})")
        target = name
    module_name, _, attribute = target.rpartition(":")
    try:
        module = _import_file(module_name) if module_name.endswith(".py") else importlib.import_module(module_name)
        obj = getattr(module, attribute)
    except (ImportError, AttributeError, OSError) as err:
        raise ConfigError(f"experiment {name!r} ({target}) could not be imported: "
                          f"{type(err).__name__}: {' '.join(str(err).split())}") from None
    config_cls = getattr(obj, "config_cls", None)
    if not (isinstance(config_cls, type) and dataclasses.is_dataclass(config_cls)) or not callable(
            getattr(obj, "run", None)):
        raise ConfigError(f"experiment {name!r} ({target}) needs a dataclass config_cls and a callable run")
    return obj


def config_fields(experiment) -> tuple[str, ...]:
    """Names of the experiment's config fields, in declaration order (groups of settings by their group name)."""
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


def _settable(hint) -> bool:
    """Whether a field of this type can be set from a command line or a sweep file (scalars, tuples of
    scalars, and dicts of plain values); nested dataclasses are set field by field (dotted names)."""
    if _allowed_types(hint) is not None or hint is Any:
        return True
    origin = typing.get_origin(hint)
    if origin in (tuple, list):
        return all(a is Ellipsis or _allowed_types(a) is not None for a in typing.get_args(hint))
    return origin is dict or hint is dict


def _coerce(field_name: str, value: Any, hint) -> Any:
    """Check ``value`` against a scalar hint (ints widen to float; "none" -> None for optional numbers)."""
    if typing.get_origin(hint) in (tuple, list) and not isinstance(value, (list, tuple)):
        raise ConfigError(f"{field_name} must be a list, e.g. {field_name}=[1, 2] (got {value!r})")
    if isinstance(value, (list, tuple)):
        args = [a for a in typing.get_args(hint) if a is not Ellipsis] if hint is not None else []
        inner = args[0] if len(args) == 1 or (len(args) > 1 and all(a == args[0] for a in args)) else None
        value = tuple(_coerce(field_name, v, inner) for v in value)
        return value
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
            if abs(value) > 1.7976931348623157e308:
                raise ConfigError(f"{field_name} must be a finite number (got {value})")
            return float(value)
    elif isinstance(value, float):
        if float in allowed:
            if not math.isfinite(value):  # no field of any experiment takes NaN or infinity
                raise ConfigError(f"{field_name} must be a finite number (got {value})")
            return value
    elif isinstance(value, str):
        if str in allowed:
            return value
    words = " or ".join(_TYPE_WORDS[t] for t in allowed)
    raise ConfigError(f"{field_name} must be {words} (got {value!r})")


def _hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # unresolvable annotations: no type pre-check
        return {}


def _nested(hints: Mapping[str, Any]) -> dict[str, type]:
    """The fields of a config that are groups of settings (nested dataclasses), by name."""
    return {name: hint for name, hint in hints.items() if isinstance(hint, type) and dataclasses.is_dataclass(hint)}


def _qualify(cls: type, key: str, hints: Mapping[str, Any] | None = None) -> str:
    """``key`` itself, or "group.key" when ``key`` is not a field of ``cls`` but a field of exactly one of its
    groups of settings (so ``beta_v`` names ``mcm.beta_v``)."""
    hints = _hints(cls) if hints is None else hints
    head = key.partition(".")[0]
    if head in hints:
        return key
    owners = [name for name, sub in _nested(hints).items() if head in {f.name for f in dataclasses.fields(sub)}]
    return f"{owners[0]}.{key}" if len(owners) == 1 else key


def field_types(experiment, key: str) -> tuple[type, ...]:
    """The scalar types the field ``key`` admits (dotted, or a sub-field by its own name); () when the field is
    unknown or not a scalar (make_config then names the problem)."""
    cls = experiment.config_cls
    hint = None
    for part in qualified_field(experiment, key).split("."):
        hint = _hints(cls).get(part)
        if hint is None:
            return ()
        cls = hint
    return _allowed_types(hint) or ()


def qualified_field(experiment, key: str) -> str:
    """The dotted name that ``key`` sets in the experiment's config (``beta_v`` -> ``mcm.beta_v``)."""
    return _qualify(experiment.config_cls, key)


def settable_fields(cls: type) -> list[str]:
    """The names a config of ``cls`` accepts: its fields, with each group of settings spelled out as its
    sub-fields (by their own name where that is unambiguous, else ``group.field``)."""
    hints = _hints(cls)
    groups = _nested(hints)
    names: list[str] = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        if f.name in groups:
            names += [key if _qualify(cls, key, hints) == f"{f.name}.{key}" else f"{f.name}.{key}"
                      for key in (g.name for g in dataclasses.fields(groups[f.name]))]
        else:
            names.append(f.name)
    return names


def _apply(cls: type, base: Any, values: Mapping[str, Any], prefix: str, exp_name: str) -> Any:
    """A config of ``cls`` from ``base`` (None: defaults) with ``values`` set, dotted names into nested dataclasses."""
    fields_ = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = _hints(cls)
    direct: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for key, value in values.items():
        key = _qualify(cls, key, hints)
        head, dot, rest = key.partition(".")
        full = prefix + head
        if head not in fields_:
            raise ConfigError(f"unknown field {prefix + key!r} for experiment {exp_name!r} "
                              f"(allowed: {', '.join(prefix + f for f in settable_fields(cls))})")
        hint = hints.get(head)
        sub_cls = _nested(hints).get(head)
        if dot:
            if sub_cls is None:
                raise ConfigError(f"field {full!r} has no sub-fields (got {prefix + key!r})")
            nested.setdefault(head, {})[rest] = value
        elif sub_cls is not None and not isinstance(value, dict):
            raise ConfigError(f"field {full!r} is a group of settings: set its fields as {full}.NAME=VALUE "
                              f"(allowed: {', '.join(f'{full}.{f.name}' for f in dataclasses.fields(sub_cls))})")
        elif sub_cls is not None:
            nested.setdefault(head, {}).update(value)
        elif hint is not None and not _settable(hint):
            raise ConfigError(f"field {full!r} cannot be set from a command line or a sweep file")
        else:
            direct[head] = _coerce(full, value, hint)
    for head, sub_values in nested.items():
        sub_cls = hints[head]
        sub_base = getattr(base, head) if base is not None else None
        if isinstance(sub_base, dict):
            sub_base = sub_cls(**sub_base)
        direct[head] = _apply(sub_cls, sub_base, sub_values, f"{prefix}{head}.", exp_name)
    return cls(**direct) if base is None else dataclasses.replace(base, **direct)


def make_config(experiment, values: Mapping[str, Any], context: str = "", base: Any = None):
    """Build and validate the experiment's config from ``values`` over ``base`` (None: the class defaults).

    Unknown fields raise ConfigError naming the field and listing the allowed ones. Nested settings are
    set with dotted names (``train.steps``). Values are checked against the field types first: an integer
    given for a float field becomes a float (so ``beta = 5`` and ``beta = 5.0`` give the same config),
    lists become tuples, the string "none" sets an optional number to None, and NaN or infinity is refused
    for every number. Then the dataclass is constructed, so its own checks run. ``context`` (e.g. "run 3")
    prefixes error messages.
    """
    prefix = f"{context}: " if context else ""
    try:
        return _apply(experiment.config_cls, base, values, "", getattr(experiment, "name", "?"))
    except ConfigError as err:
        raise ConfigError(f"{prefix}{err}") from None
    except (TypeError, ValueError, OverflowError) as err:
        raise ConfigError(f"{prefix}invalid config: {' '.join(str(err).split())}") from None


def build_config(experiment: Experiment, profile: str | None = None, values: Mapping[str, Any] | None = None,
                 resolve_auto: bool = True):
    """The config of ``profile`` with ``values`` set (dotted names for nested settings), validated once.

    A profile is a function returning a config or a dict of field values over the class defaults (for
    profiles that are only valid with more settings, such as a data folder). Without ``profile``: the
    ``quick`` profile if there is one, else the class defaults. With ``resolve_auto`` a top-level ``device``
    of "auto" becomes "cuda" when torch sees a GPU, else "cpu". ConfigError names an unknown profile or
    field and lists the allowed ones.
    """
    from easyhard._validate import resolve_device

    if profile is None:
        profile = "quick" if "quick" in experiment.profiles else None
    elif profile not in experiment.profiles:
        allowed = ", ".join(experiment.profiles) or "none (use --set)"
        raise ConfigError(f"profile must be one of {allowed} for experiment {experiment.name!r} (got {profile!r})")
    base = None if profile is None else experiment.profiles[profile]()
    values = dict(values or {})
    if isinstance(base, Mapping):
        config = make_config(experiment, {**base, **values})
    else:
        config = make_config(experiment, values, base=base)
    device = getattr(config, "device", None)
    if resolve_auto and device == "auto":
        config = dataclasses.replace(config, device=resolve_device(device))
    return config


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
    if dataclasses.is_dataclass(value):
        return config_to_dict(value)
    raise ConfigError(f"{name} has a value that cannot be recorded as JSON (got {type(value).__name__})")


def config_to_dict(config) -> dict[str, Any]:
    """The config as a JSON-able dict (tuples become lists), in field order: what config.json records."""
    return {f.name: _jsonable(f.name, getattr(config, f.name)) for f in dataclasses.fields(config) if f.init}


# ----- cells -----------------------------------------------------------------------------------------------

class CellsFailed(RuntimeError):
    """Some cells failed, or gave a result that cannot be used (the one-line message names them; finished
    cells are kept in the cache, so running the command again retries only these)."""


@dataclass(frozen=True)
class CellCache:
    """One checked JSON per finished cell under ``folder``, named after the cell's label.

    A cell file is written by :func:`easyhard._io.write_checked_json` (kind ``"cell"``, the config hash
    :func:`~easyhard._io.json_sha256` of the cell's config, data ``{"label", "config", "metrics"}``: the config
    stays readable). :meth:`load` gives a cell's metrics only if its file verifies; a missing, unreadable,
    corrupted, foreign or stale file, or one holding a non-finite number, gives None, so the cell is run
    again and its file rewritten: nothing unverified is used and no file error escapes. :meth:`checkpoint`
    names the resumable state of an unfinished cell by its config, so a changed cell starts afresh (stale
    checkpoints are removed). ConfigError (one line naming it) if ``folder`` exists and is not a folder.
    """

    folder: Path

    KIND = "cell"

    def __post_init__(self):
        if self.folder.exists() and not self.folder.is_dir():
            raise ConfigError(f"{self.folder} must be a folder (the cache of finished cells), not a file")

    def path(self, label: str) -> Path:
        return self.folder / (re.sub(r"[^A-Za-z0-9_.,+-]", "", label.replace(" ", "_")) + ".json")

    @staticmethod
    def problem(metrics: Any) -> str | None:
        """Why ``metrics`` cannot be a cell's (or a sweep run's) result: not a dict, or a non-finite number in it
        (named by its path, e.g. ``metric ['times'][3] is not finite``); None if it can."""
        from easyhard._io import nonfinite_path

        if not isinstance(metrics, dict):
            return f"the result is a {type(metrics).__name__}, not a dict of metrics"
        where = nonfinite_path(metrics)
        return None if where is None else f"metric {where} is not finite (NaN or infinity)"

    def load(self, label: str, config_dict: dict) -> dict | None:
        """The verified metrics of the cell ``label`` with this config, or None (not finished, or unusable)."""
        from easyhard._io import CorruptedFile, json_sha256, read_checked_json

        try:
            saved = read_checked_json(self.path(label), self.KIND, json_sha256(config_dict))
        except (FileNotFoundError, CorruptedFile):
            return None
        if not isinstance(saved, dict) or saved.get("config") != config_dict:
            return None
        metrics = saved.get("metrics")
        return metrics if self.problem(metrics) is None else None

    def save(self, label: str, config_dict: dict, metrics: dict) -> None:
        """Write the cell's file (``metrics`` must pass :meth:`problem`: ValueError otherwise, nothing written)."""
        from easyhard._io import json_sha256, write_checked_json

        problem = self.problem(metrics)
        if problem is not None:
            raise ValueError(f"cell {label!r} cannot be cached: {problem}")
        write_checked_json(self.path(label), {"label": label, "config": config_dict, "metrics": metrics},
                           self.KIND, json_sha256(config_dict))

    def checkpoint(self, label: str, config_dict: dict) -> Path:
        path = self.path(label)
        key = hashlib.sha256(json.dumps(config_dict, sort_keys=True).encode()).hexdigest()[:12]
        checkpoint = path.with_name(f"{path.stem}-{key}.ckpt")
        for stale in path.parent.glob(f"{path.stem}-*.ckpt"):
            if stale != checkpoint:
                stale.unlink()
        return checkpoint


def run_cells_inline(experiment: str, cells: Sequence[tuple[str, Any]], cache_dir: Path | None,
                     progress: Progress | None = None) -> dict[str, dict]:
    """The default :class:`CellRunner`: every cell in this process, in order, each resumable from its checkpoint.

    Cells whose cache file verifies (:meth:`CellCache.load`) are reused, every other cell is run again. A cell
    whose fresh result is not a dict of finite numbers raises :class:`CellsFailed` naming it (not cached).
    """
    exp = get_experiment(experiment)
    cache = None if cache_dir is None else CellCache(Path(cache_dir))
    out = {}
    for label, config in cells:
        config_dict = config_to_dict(config)
        metrics = None if cache is None else cache.load(label, config_dict)
        if metrics is None:
            checkpoint = None if cache is None else cache.checkpoint(label, config_dict)
            metrics = exp.run(config, RunContext(out_dir=cache_dir, checkpoint=checkpoint))
            problem = CellCache.problem(metrics)
            if problem is not None:
                raise CellsFailed(f"cell {label} of {experiment} failed: {problem}; run the command again to retry it")
            if cache is not None:
                cache.save(label, config_dict, metrics)
        out[label] = metrics
        if progress is not None:
            progress(1, label)
    return out
