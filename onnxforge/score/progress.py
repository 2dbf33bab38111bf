"""The scoring progress bar: rows done of the total, rows/s and the time left (hidden without a console)."""

from __future__ import annotations

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text


class _RowsPerSecond(ProgressColumn):
    def render(self, task) -> Text:
        return Text(f"{task.speed:,.0f} rows/s" if task.speed else "", style="progress.data.speed")


def bar(console, what: str = "scoring") -> Progress:
    return Progress(TextColumn(f"[bold]{what}[/bold] {{task.description}}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("rows"), _RowsPerSecond(), TimeRemainingColumn(), console=console, transient=True,
                    disable=console is None)
