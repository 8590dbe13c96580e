"""Run folders: environment metadata recorded with every run; the atomic writers live in :mod:`easyhard._io`."""

from __future__ import annotations

from easyhard._io import (atomic_write_bytes, atomic_write_json, atomic_write_text, environment_info, load_tensors,
                          save_tensors)

__all__ = ["atomic_write_bytes", "atomic_write_json", "atomic_write_text", "environment_info", "load_tensors",
           "save_tensors"]
