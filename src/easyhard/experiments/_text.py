"""Plain-text tables for the lines an experiment prints after a run (its ``summary``)."""

from __future__ import annotations


def text_table(header: list[str], rows: list[list]) -> str:
    """Columns left-aligned to their widest cell, a dashed rule under the header."""
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]

    def line(cells: list) -> str:
        return "  ".join(str(c).ljust(w) for c, w in zip(cells, widths))

    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def fmt_num(x, spec: str = ".4g") -> str:
    """``x`` formatted with ``spec``; "-" for None."""
    return "-" if x is None else format(x, spec)
