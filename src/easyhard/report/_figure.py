"""Helpers shared by the report modules: saving a figure, formatting an optional number."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from easyhard._io import atomic_write_bytes  # noqa: E402


def figure_png(fig, rect: tuple[float, float, float, float] | None = None) -> bytes:
    """Lay out (within ``rect`` of the figure, leaving room for a figure legend), render as a 120-dpi PNG, close;
    returns the PNG's bytes."""
    fig.tight_layout(rect=rect)
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=120, format="png")
    plt.close(fig)
    return buffer.getvalue()


def save_figure(fig, path: Path, rect: tuple[float, float, float, float] | None = None) -> Path:
    """:func:`figure_png` written to ``path`` atomically (a reader never sees half a file); returns ``path``."""
    return atomic_write_bytes(path, figure_png(fig, rect))


def fmt(x, spec: str = ".3g") -> str:
    """``x`` formatted with ``spec``, or "-" for None."""
    return "-" if x is None else format(x, spec)
