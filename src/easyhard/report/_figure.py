"""Helpers shared by the report modules: saving a figure, formatting an optional number."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def save_figure(fig, path: Path) -> Path:
    """Lay out, write as a 120-dpi PNG, close; returns ``path``."""
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def fmt(x, spec: str = ".3g") -> str:
    """``x`` formatted with ``spec``, or "-" for None."""
    return "-" if x is None else format(x, spec)
