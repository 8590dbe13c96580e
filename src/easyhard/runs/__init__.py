"""Run folders: atomic writes and the metadata that makes a run reproducible."""

from easyhard.runs.io import atomic_write_json, atomic_write_text, environment_info

__all__ = ["atomic_write_json", "atomic_write_text", "environment_info"]
