"""Offline mode: find the checkpoints a training run saved in a folder, load them safely, and read its scheduler.

Recognised entries of a checkpoints folder DIR (the step is the last integer in the entry's name, so
``checkpoint-500``, ``step_000500``, ``500``, ``model_500.pt``, ``ema_ep3_500.safetensors`` are all step 500):

    kind "diffusers"    a folder with a diffusers UNet saved by ``save_pretrained``: config.json with
                        diffusion_pytorch_model.safetensors (or .bin) in the folder itself or in its ``unet/``
                        (a pipeline folder: model_index.json, unet/, scheduler/; accelerate hooks saving unet/);
    kind "safetensors"  a folder with model.safetensors or diffusion_pytorch_model.safetensors and no config.json
                        (accelerate's ``save_state``), or a file ``*.safetensors``: a state dict;
    kind "state_dict"   a file ``*.pt``, ``*.pth`` or ``*.ckpt``: a state dict, possibly wrapped in a dict.

Entries without a step number and hidden entries (a leading dot) are ignored. Loading never executes code:
safetensors files are read with ``safetensors.torch.load_file`` and pickles only with
``torch.load(weights_only=True)``, which refuses any pickled object other than tensors and plain containers;
an unreadable or refused file raises ConfigError naming it. diffusers (the "unet" extra) and safetensors are
imported only when needed, and building a model leaves torch's global RNG untouched.
"""

from __future__ import annotations

import json
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from easyhard._validate import ConfigError
from easyhard.models.unet import MISSING_EXTRA

KINDS = ("diffusers", "safetensors", "state_dict")
#: file suffixes of state-dict checkpoints read with torch.load(weights_only=True)
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt")
#: weights files of a diffusers save_pretrained folder, in order of preference
DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
#: state-dict files of an accelerate-style step folder, in order of preference
FOLDER_STATE_DICTS = ("model.safetensors", "diffusion_pytorch_model.safetensors")
#: keys under which a checkpoint dict may wrap its state dict; the first whose value is a dict of tensors is used
WRAPPER_KEYS = ("state_dict", "model", "ema", "unet")
#: key prefixes added by DistributedDataParallel and torch.compile, removed when the model's keys lack them
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
ACCEPTED = ("step folders (checkpoint-500, step_000500, 500, ...) holding a diffusers save_pretrained UNet "
            "(config.json + diffusion_pytorch_model.safetensors or .bin, in the folder or in unet/) or "
            "model.safetensors, or files with a step number: *.safetensors, *.pt, *.pth, *.ckpt")
_SHOWN_KEYS = 5


@dataclass(frozen=True)
class Checkpoint:
    """One saved checkpoint: its training step, the entry of the checkpoints folder (a folder or a file) and its
    kind: "diffusers", "safetensors" or "state_dict" (module docstring)."""

    step: int
    path: Path
    kind: str


# --------------------------------------------------------------------------------------------------- discovery
def _step(name: str) -> int | None:
    """The last integer in ``name`` (None if it has none)."""
    numbers = re.findall(r"\d+", name)
    return int(numbers[-1]) if numbers else None


def _unet_folder(folder: Path) -> Path | None:
    """The diffusers UNet folder of a step folder: ``unet/`` or the folder itself, when it holds config.json and
    a weights file of DIFFUSERS_WEIGHTS; None otherwise."""
    for candidate in (folder / "unet", folder):
        if (candidate / "config.json").is_file() and any((candidate / w).is_file() for w in DIFFUSERS_WEIGHTS):
            return candidate
    return None


def _folder_kind(folder: Path) -> str | None:
    """The kind of a step folder: "diffusers", "safetensors" (a state-dict file of FOLDER_STATE_DICTS), or None."""
    if _unet_folder(folder) is not None:
        return "diffusers"
    if any((folder / name).is_file() for name in FOLDER_STATE_DICTS):
        return "safetensors"
    return None


def _file_kind(path: Path) -> str | None:
    """The kind of a checkpoint file by its suffix: "safetensors", "state_dict", or None."""
    if path.suffix == ".safetensors":
        return "safetensors"
    return "state_dict" if path.suffix in PICKLE_SUFFIXES else None


def _scan(folder: Path) -> list[Checkpoint]:
    """The checkpoints of ``folder`` sorted by step; ConfigError if two share a step."""
    found: dict[int, Checkpoint] = {}
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        kind = _folder_kind(entry) if entry.is_dir() else _file_kind(entry)
        step = _step(entry.stem if entry.is_file() else entry.name)
        if kind is None or step is None:
            continue
        if step in found:
            raise ConfigError(f"two checkpoints at step {step}: {found[step].path} and {entry} (keep one)")
        found[step] = Checkpoint(step, entry, kind)
    return [found[step] for step in sorted(found)]


def find_checkpoints(folder: str | Path) -> list[Checkpoint]:
    """The checkpoints saved in ``folder``, sorted by step (the last integer in each entry's name; recognised
    entries in the module docstring). ConfigError if the folder is missing, holds nothing loadable, or holds two
    checkpoints at one step."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"checkpoint folder {folder} does not exist or is not a folder")
    checkpoints = _scan(folder)
    if not checkpoints:
        raise ConfigError(f"no loadable checkpoint in {folder} (expected {ACCEPTED})")
    return checkpoints


# ----------------------------------------------------------------------------------------------------- reading
def _summary(err: BaseException) -> str:
    """``ExceptionType: message`` on one line (whitespace collapsed), at most 300 characters of message."""
    return f"{type(err).__name__}: {' '.join(str(err).split())[:300]}"


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    """``safetensors.torch.load_file`` on the CPU; ConfigError naming the file when it cannot be read."""
    try:
        from safetensors import SafetensorError
        from safetensors.torch import load_file
    except ImportError:
        raise ConfigError(f"reading {path} needs the safetensors package: pip install safetensors") from None

    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError) as err:
        raise ConfigError(f"checkpoint {path} cannot be read as safetensors ({_summary(err)})") from None


def _read_pickle(path: Path) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)``; ConfigError naming the file when it is
    unreadable or holds pickled objects other than tensors and plain containers (never executed)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        reason = _summary(err)
        if "Weights only load failed" in str(err):
            reason = "it holds pickled objects other than tensors, refused by torch.load(weights_only=True)"
        raise ConfigError(f"checkpoint {path} cannot be loaded safely: {reason}") from None
    except (RuntimeError, EOFError, OSError) as err:
        raise ConfigError(f"checkpoint {path} is unreadable or truncated ({_summary(err)})") from None


def _is_state_dict(value: Any) -> bool:
    return isinstance(value, Mapping) and bool(value) and all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in value.items())


def _unwrap(blob: Any, path: Path) -> Mapping[str, Tensor]:
    """The state dict in a loaded checkpoint: the blob itself if it maps names to tensors, else the value of the
    first of WRAPPER_KEYS ("state_dict", "model", "ema", "unet") that does."""
    if _is_state_dict(blob):
        return blob
    if isinstance(blob, Mapping):
        for key in WRAPPER_KEYS:
            if _is_state_dict(blob.get(key)):
                return blob[key]
    what = f"a dict with keys {_shown(sorted(map(str, blob)))}" if isinstance(blob, Mapping) else type(blob).__name__
    raise ConfigError(f"checkpoint {path} holds no state dict (got {what}; expected a dict of tensors or one "
                      f"under {', '.join(WRAPPER_KEYS)})")


def _weights_location(ckpt: Checkpoint) -> Path:
    """The weights of a checkpoint: the file itself, a diffusers folder's UNet folder, or a step folder's
    state-dict file; ConfigError if a folder holds none."""
    if ckpt.path.is_file():
        return ckpt.path
    if ckpt.kind == "diffusers":
        location = _unet_folder(ckpt.path)
    else:
        location = next((ckpt.path / n for n in FOLDER_STATE_DICTS if (ckpt.path / n).is_file()), None)
    if location is None:
        raise ConfigError(f"checkpoint {ckpt.path} holds no {ckpt.kind} weights (expected {ACCEPTED})")
    return location


def _state_dict_file(ckpt: Checkpoint) -> Path:
    """The file holding the weights of a checkpoint (a diffusers folder: its first file of DIFFUSERS_WEIGHTS)."""
    location = _weights_location(ckpt)
    if location.is_file():
        return location
    return next(location / w for w in DIFFUSERS_WEIGHTS if (location / w).is_file())


def read_state_dict(ckpt: Checkpoint) -> Mapping[str, Tensor]:
    """The state dict of a checkpoint, on the CPU: safetensors files via ``safetensors.torch.load_file``, other
    files via ``torch.load(weights_only=True)`` unwrapped by :data:`WRAPPER_KEYS` (first match wins)."""
    path = _state_dict_file(ckpt)
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    return _unwrap(_read_pickle(path), path)


# ----------------------------------------------------------------------------------------------------- loading
def _shown(keys: list[str]) -> str:
    """``[k1, ..., k5] (+N more)``: at most _SHOWN_KEYS keys of a list."""
    more = f" (+{len(keys) - _SHOWN_KEYS} more)" if len(keys) > _SHOWN_KEYS else ""
    return f"[{', '.join(keys[:_SHOWN_KEYS])}]{more}"


def _strip_wrapper_prefix(state: Mapping[str, Tensor], expected: set[str]) -> Mapping[str, Tensor]:
    """``state`` without a WRAPPER_PREFIXES prefix carried by every key but by none of the model's keys."""
    for prefix in WRAPPER_PREFIXES:
        if all(k.startswith(prefix) for k in state) and not any(k.startswith(prefix) for k in expected):
            return {k[len(prefix):]: v for k, v in state.items()}
    return state


def _load_into(model: nn.Module, state: Mapping[str, Tensor], path: Path) -> nn.Module:
    """``model.load_state_dict(state, strict=True)`` after checking keys and shapes; ConfigError (one line) on a
    mismatch."""
    expected = model.state_dict()
    state = _strip_wrapper_prefix(state, set(expected))
    missing, unexpected = sorted(expected.keys() - state.keys()), sorted(state.keys() - expected.keys())
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
              if k in state and state[k].shape != v.shape]
    problems = [f"{name} {_shown(keys)}" for name, keys in
                (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatch", shapes)) if keys]
    if problems:
        raise ConfigError(f"checkpoint {path} does not match the model: {'; '.join(problems)}")
    model.load_state_dict(state, strict=True)
    return model


def _unet_class() -> Any:
    try:
        from diffusers import UNet2DModel
    except ImportError:
        raise ConfigError(MISSING_EXTRA) from None
    return UNet2DModel


def _pretrained_unet(folder: Path) -> nn.Module:
    """``UNet2DModel.from_pretrained(folder)`` (weights_only loading in diffusers); ConfigError naming the folder."""
    unet_class = _unet_class()
    from safetensors import SafetensorError  # a dependency of diffusers

    try:
        with torch.random.fork_rng(devices=[]):
            return unet_class.from_pretrained(folder, low_cpu_mem_usage=False)
    except (OSError, ValueError, RuntimeError, SafetensorError) as err:
        raise ConfigError(f"cannot load the diffusers UNet in {folder} ({_summary(err)})") from None


def _read_json_object(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``; ConfigError naming the file when it is unreadable or not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"{path} is not a readable JSON file ({_summary(err)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a JSON object (got {type(data).__name__})")
    return data


def _unet_from_root_config(ckpt: Checkpoint) -> nn.Module:
    """The (randomly initialised) UNet2DModel described by config.json in the checkpoints folder."""
    root = ckpt.path.parent
    path = root / "config.json"
    if not path.is_file():
        raise ConfigError(f"state-dict checkpoints need the architecture: put the UNet's config.json in {root} "
                          f"or pass a model")
    config = _read_json_object(path)
    if config.get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise ConfigError(f"{path} must be a UNet2DModel config (got {config['_class_name']})")
    unet_class = _unet_class()
    try:
        with torch.random.fork_rng(devices=[]):
            return unet_class.from_config(config)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{path} does not describe a UNet2DModel ({_summary(err)})") from None


def load_checkpoint(ckpt: Checkpoint, model: nn.Module | None = None) -> nn.Module:
    """The network of a checkpoint with its weights.

    With ``model`` (the architecture), its weights are replaced in place by the checkpoint's state dict
    (:func:`read_state_dict`, strict: every key and shape must match, else ConfigError listing the missing,
    unexpected and mismatched keys; DDP's "module." and torch.compile's "_orig_mod." prefixes are removed) and it
    is returned. Without ``model``: a diffusers folder gives ``UNet2DModel.from_pretrained`` of its UNet folder;
    a state dict is loaded into the UNet2DModel built from config.json in the checkpoints folder (ckpt.path's
    parent), ConfigError if there is none.
    """
    if ckpt.kind not in KINDS:
        raise ConfigError(f"ckpt.kind must be one of {', '.join(KINDS)} (got {ckpt.kind!r})")
    if model is None and ckpt.kind == "diffusers":
        return _pretrained_unet(_weights_location(ckpt))
    state = read_state_dict(ckpt)
    target = _unet_from_root_config(ckpt) if model is None else model
    return _load_into(target, state, _state_dict_file(ckpt))


# --------------------------------------------------------------------------------------------------- scheduler
def _scheduler_config(folder: Path) -> Path | None:
    """scheduler_config.json in ``folder`` or in ``folder/scheduler``; None if neither exists."""
    for path in (folder / "scheduler_config.json", folder / "scheduler" / "scheduler_config.json"):
        if path.is_file():
            return path
    return None


def load_scheduler(folder: str | Path) -> Any:
    """The diffusers scheduler saved with a run, or None: scheduler_config.json (or scheduler/scheduler_config.json)
    in ``folder``, else in the newest checkpoint folder that holds one. Built with ``DDIMScheduler.from_config``
    when the config names DDIMScheduler, else ``DDPMScheduler.from_config`` (the training schedule: betas,
    timesteps and prediction_type are the same keys in every DDPM-family scheduler). ConfigError for an
    unreadable file."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"checkpoint folder {folder} does not exist or is not a folder")
    candidates = [folder] + [c.path for c in reversed(_scan(folder)) if c.path.is_dir()]
    path = next((p for p in map(_scheduler_config, candidates) if p is not None), None)
    if path is None:
        return None
    config = _read_json_object(path)
    try:
        from diffusers import DDIMScheduler, DDPMScheduler
    except ImportError:
        raise ConfigError(MISSING_EXTRA) from None
    scheduler_class = DDIMScheduler if config.get("_class_name") == "DDIMScheduler" else DDPMScheduler
    try:
        return scheduler_class.from_config(config)
    except (TypeError, ValueError, NotImplementedError) as err:
        raise ConfigError(f"{path} is not a usable scheduler config ({_summary(err)})") from None
