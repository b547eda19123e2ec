"""Text for people: plain-text tables for the terminal, and cells for a spreadsheet.

Much of what the tools print comes from students: their folder names, the names of classes and files in
their notebooks, error messages. Before such text reaches a terminal or a CSV file, `printable` shows its
control characters (terminal escape sequences, carriage returns, bidirectional overrides) escaped, so a
class name cannot erase a line of the integrity report, and `cell` keeps a CSV cell from starting a formula
when the file is opened in a spreadsheet.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Sequence

FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "'")  # "'" too, so that `uncell` can undo `cell` exactly


def printable(text: object) -> str:
    """`text` with every control or format character (Unicode Cc, Cf) shown as a Python escape: ESC -> \\x1b."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(ch if unicodedata.category(ch) not in ("Cc", "Cf") else ch.encode("unicode_escape").decode()
                   for ch in text)


def cell(value: object) -> object:
    """A CSV cell that is safe to open in a spreadsheet: numbers as they are; text printable, and with a leading
    apostrophe if it would start a formula."""
    if not isinstance(value, str):
        return value
    text = printable(value)
    return "'" + text if text.startswith(FORMULA_START) else text


def uncell(text: str) -> str:
    """The text that `cell` wrote (its control characters stay escaped)."""
    return text[1:] if text.startswith("'") else text


def row(values: Iterable[object]) -> list[object]:
    return [cell(v) for v in values]


def render(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[printable(h) for h in header]] + [[printable(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:g}"
