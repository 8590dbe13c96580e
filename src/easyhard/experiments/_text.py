"""Plain text of the command line: tables for the lines an experiment prints after a run (its ``summary``),
and the parsing of comma-separated dimensions."""

from __future__ import annotations

from easyhard._validate import ConfigError


def text_table(header: list[str], rows: list[list]) -> str:
    """Columns left-aligned to their widest cell, a dashed rule under the header."""
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]

    def line(cells: list) -> str:
        return "  ".join(str(c).ljust(w) for c, w in zip(cells, widths))

    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def fmt_num(x, spec: str = ".4g") -> str:
    """``x`` formatted with ``spec``; "-" for None."""
    return "-" if x is None else format(x, spec)


def parse_dims(text: str) -> tuple[int, ...]:
    """``"64,128"`` -> (64, 128); ConfigError naming ``--dims`` for anything else (the range is checked by
    the config)."""
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise ConfigError(f"--dims must be comma-separated integers >= 8 (got {text!r})") from None
