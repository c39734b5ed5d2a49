"""Tables of the `kdgate` commands that stay whole in an 80-column terminal.

The short fields of each row go in a table whose cells fold rather than end in `…`; each long field (a job's reason,
a version's path or notes) goes whole on its own lines below the table, where it can be read and copied. Cells are
plain text, never rich markup, so a `[` in a reason is shown as written.
"""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

MISSING = "—"  # a figure not measured yet


def table(*columns: str, title: str | None = None) -> Table:
    made = Table(title=title)
    for column in columns:
        made.add_column(column, overflow="fold")
    return made


def add_row(into: Table, *cells: str) -> None:
    into.add_row(*(Text(cell) for cell in cells))


def show(rows: Table, details: list[tuple[str, ...]]) -> None:
    """Print `rows`, then each detail (tuples of one length) as aligned fields whose last one wraps at spaces,
    never cut."""
    console = Console()
    console.print(rows)
    if not details:
        return
    lines = Table.grid(padding=(0, 2))
    for _ in details[0][:-1]:
        lines.add_column(no_wrap=True)
    lines.add_column(overflow="fold")
    for detail in details:
        lines.add_row(*(Text(part) for part in detail))
    console.print(lines)


def figure(value: float | None, spec: str) -> str:
    """`value` formatted, or `—` when it was not measured."""
    return MISSING if value is None else format(value, spec)
