"""Atomic file writes, checksummed saved state and safe tensor files: the one base-level I/O helper.

Every result, checkpoint and training state is written here (temporary file, fsync, rename), and tensor
files are read back with ``torch.load(weights_only=True)`` only. Library layers that must persist state
(the training engines) call these functions; nothing else in the library touches the file system.

Integrity (docs: README, "Errors and saved state"): a tensor file carries a SHA-256 of its meta and of every
tensor's dtype, shape and bytes, and a *checked JSON* file (:func:`write_checked_json`) wraps its data with
its kind, the hash of the config it belongs to and a SHA-256 of the data. On load, a parse error, a checksum
mismatch, a wrong kind or config, or a non-finite number raises :class:`CorruptedFile` (a ConfigError whose
one-line message names the file), so a caller either recomputes that piece or stops; nothing unverified is used.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

from easyhard._validate import ConfigError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temporary file in the same folder, fsync and an atomic rename.

    The file gets the usual permissions (0666 minus the umask), not mkstemp's private 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (:func:`atomic_write_bytes`)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, data) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


class CorruptedFile(ConfigError):
    """A saved file that cannot be used: unreadable, checksum mismatch, wrong kind/config/schema, non-finite.

    ``str(err)`` is one line naming the file; ``err.path`` is the file."""

    def __init__(self, path: str | Path, reason: str, hint: str = ""):
        self.path = Path(path)
        super().__init__(f"{path} is corrupted or not ours ({reason})" + (f"; {hint}" if hint else ""))


def _one_line(err: BaseException) -> str:
    return f"{type(err).__name__}: {' '.join(str(err).split())[:200]}"


def canonical_json(data: Any) -> str:
    """Canonical JSON text (sorted keys, no spaces, exact float reprs, NaN refused): what hashes are taken of."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def json_sha256(data: Any) -> str:
    """SHA-256 (hex) of the canonical JSON text of ``data`` (a config's hash, a file's content checksum)."""
    return hashlib.sha256(canonical_json(data).encode("ascii")).hexdigest()


def nonfinite_path(data: Any, where: str = "") -> str | None:
    """The JSON path of the first non-finite float in ``data`` (dicts, lists, numbers), or None if all are finite."""
    if isinstance(data, float):
        return None if math.isfinite(data) else (where or "value")
    if isinstance(data, dict):
        items = data.items()
    elif isinstance(data, (list, tuple)):
        items = enumerate(data)
    else:
        return None
    for key, value in items:
        found = nonfinite_path(value, f"{where}[{key!r}]" if isinstance(key, str) else f"{where}[{key}]")
        if found is not None:
            return found
    return None


def write_checked_json(path: str | Path, data: Any, kind: str, config_hash: str | None = None) -> Path:
    """Atomically write ``data`` wrapped as {"easyhard": kind, "config_sha256", "sha256", "data"}.

    ``sha256`` is :func:`json_sha256` of ``data``; non-finite numbers are refused (ValueError) before writing.
    Read it back with :func:`read_checked_json`.
    """
    checksum = json_sha256(data)
    return atomic_write_json(path, {"easyhard": kind, "config_sha256": config_hash, "sha256": checksum, "data": data})


def read_checked_json(path: str | Path, kind: str, config_hash: str | None = None, hint: str = "") -> Any:
    """The data of a file written by :func:`write_checked_json`, verified.

    Raises :class:`CorruptedFile` if the file cannot be read or parsed, is not a ``kind`` file, belongs to
    another config (when ``config_hash`` is given), fails its checksum or holds a non-finite number (its
    message ends with ``hint``, what to do); FileNotFoundError if it does not exist.
    """
    path = Path(path)
    try:
        blob = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as err:
        raise CorruptedFile(path, _one_line(err), hint) from None
    if not isinstance(blob, dict) or blob.get("easyhard") != kind or not {"sha256", "data"} <= set(blob):
        raise CorruptedFile(path, f"not an easyhard {kind} file", hint)
    if config_hash is not None and blob.get("config_sha256") != config_hash:
        raise CorruptedFile(path, "it belongs to another config", hint)
    bad = nonfinite_path(blob["data"])
    if bad is not None:
        raise CorruptedFile(path, f"non-finite value at {bad}", hint)
    if json_sha256(blob["data"]) != blob["sha256"]:
        raise CorruptedFile(path, "checksum mismatch", hint)
    return blob["data"]


def _tensor_digest(meta_text: str, tensors: dict) -> str:
    """SHA-256 over the meta text and, in key order, each tensor's name, dtype, shape and bytes (lists of
    tensors element by element)."""
    import torch

    digest = hashlib.sha256(meta_text.encode("utf-8"))

    def add(name: str, value: Any) -> None:
        digest.update(name.encode("utf-8"))
        if isinstance(value, torch.Tensor):
            t = value.detach().cpu().contiguous()
            digest.update(f"{t.dtype}{tuple(t.shape)}".encode("ascii"))
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                add(f"{name}[{i}]", item)
        elif isinstance(value, dict):
            for key in sorted(value):
                add(f"{name}.{key}", value[key])
        else:
            digest.update(repr(value).encode("utf-8"))

    for key in sorted(tensors):
        add(str(key), tensors[key])
    return digest.hexdigest()


def save_tensors(path: str | Path, tensors: dict, meta: dict) -> Path:
    """Atomically write a dict of tensors (and lists/dicts of tensors) with JSON-able ``meta`` (torch format),
    with a SHA-256 of both (:func:`_tensor_digest`).

    Read it back with :func:`load_tensors`, which never unpickles arbitrary objects and verifies the checksum.
    """
    import io

    import torch

    meta_text = json.dumps(meta, sort_keys=True)
    buffer = io.BytesIO()
    torch.save({"meta": meta_text, "tensors": tensors, "sha256": _tensor_digest(meta_text, tensors)}, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def load_tensors(path: str | Path, hint: str = "delete it to start over") -> tuple[dict, dict]:
    """(tensors, meta) from :func:`save_tensors`, loaded with ``torch.load(weights_only=True)`` and verified.

    A file that cannot be read this way, or whose checksum does not match its content, raises
    :class:`CorruptedFile` naming the path and ending with ``hint`` (never a silent restart).
    FileNotFoundError if it does not exist. Finiteness and shapes are the caller's schema to check.
    """
    import torch

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(path)
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        tensors, meta_text, checksum = blob["tensors"], blob["meta"], blob["sha256"]
        meta = json.loads(meta_text)
    except Exception as err:  # truncated, corrupted or foreign file
        raise CorruptedFile(path, _one_line(err), hint) from None
    if not isinstance(tensors, dict) or not isinstance(meta, dict) or _tensor_digest(meta_text, tensors) != checksum:
        raise CorruptedFile(path, "checksum mismatch", hint)
    return tensors, meta


def environment_info() -> dict:
    """Package versions, Python, platform and compute device, recorded with every run."""
    import torch

    packages = {}
    for name in ("easyhard", "torch", "numpy", "scipy", "click", "matplotlib"):
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = None
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({platform.processor() or platform.machine()})"
    return {"python": sys.version.split()[0], "platform": platform.platform(), "packages": packages, "device": device}
