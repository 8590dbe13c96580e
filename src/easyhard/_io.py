"""Atomic file writes and safe tensor files: the one base-level I/O helper of the package.

Every result, checkpoint and training state is written here (temporary file, fsync, rename), and tensor
files are read back with ``torch.load(weights_only=True)`` only. Library layers that must persist state
(the training engines) call these functions; nothing else in the library touches the file system."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch

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


def save_tensors(path: str | Path, tensors: dict, meta: dict) -> Path:
    """Atomically write a dict of tensors (and lists of tensors) with JSON-able ``meta`` (torch format).

    Read it back with :func:`load_tensors`, which never unpickles arbitrary objects.
    """
    import io

    buffer = io.BytesIO()
    torch.save({"meta": json.dumps(meta, sort_keys=True), "tensors": tensors}, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def load_tensors(path: str | Path) -> tuple[dict, dict]:
    """(tensors, meta) from :func:`save_tensors`, loaded with ``torch.load(weights_only=True)``.

    A file that cannot be read this way raises ConfigError naming the path (never a silent restart).
    """
    try:
        blob = torch.load(Path(path), map_location="cpu", weights_only=True)
        return blob["tensors"], json.loads(blob["meta"])
    except Exception as err:  # truncated, corrupted or foreign file
        raise ConfigError(f"checkpoint {path} cannot be read ({type(err).__name__}: "
                         f"{' '.join(str(err).split())[:200]}); delete it to start over") from None
