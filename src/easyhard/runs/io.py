"""Run folders: environment metadata recorded with every run; the atomic writers live in :mod:`easyhard._io`."""

from __future__ import annotations

import platform
import sys
from importlib import metadata

import torch

from easyhard._io import atomic_write_bytes, atomic_write_json, atomic_write_text, load_tensors, save_tensors

__all__ = ["atomic_write_bytes", "atomic_write_json", "atomic_write_text", "environment_info", "load_tensors",
           "save_tensors"]


def environment_info() -> dict:
    """Package versions, Python, platform and compute device, recorded with every run."""
    packages = {}
    for name in ("easyhard", "torch", "numpy", "scipy", "click", "matplotlib"):
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = None
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({platform.processor() or platform.machine()})"
    return {"python": sys.version.split()[0], "platform": platform.platform(), "packages": packages, "device": device}
