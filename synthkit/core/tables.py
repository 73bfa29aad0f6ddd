"""A table's columns declared once (header, alignment, cell of an item), rendered as Markdown lines for files and the
report, or as a rich table for the terminal: so that a result's module owns its columns and every place that shows
them renders the same ones."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Column:
    """One column: `key` to pick it by, its header, the text of its cell for an item, and whether it is numeric
    (right-aligned)."""

    key: str
    header: str
    cell: Callable[[Any], str]
    right: bool = False


def pick(columns: Sequence[Column], keys: Iterable[str]) -> list[Column]:
    """The columns of these keys, in the order given; an unknown key is a programming error."""
    by_key = {c.key: c for c in columns}
    return [by_key[key] for key in keys]


def markdown_lines(columns: Sequence[Column], items: Iterable[Any]) -> list[str]:
    """A Markdown table: the header, the alignment rule, and a line per item."""
    lines = [
        "| " + " | ".join(c.header for c in columns) + " |",
        "|" + "".join("---:|" if c.right else "---|" for c in columns),
    ]
    return lines + ["| " + " | ".join(c.cell(item) for c in columns) + " |" for item in items]


def rich_table(columns: Sequence[Column], items: Iterable[Any], title: str) -> Any:
    """The same table as a rich Table, for the terminal."""
    from rich.table import Table

    table = Table(title=title)
    for c in columns:
        table.add_column(c.header, justify="right" if c.right else "left")
    for item in items:
        table.add_row(*(c.cell(item) for c in columns))
    return table
