"""A rich progress bar for long stage work; a no-op without a console (library use, tests)."""

from __future__ import annotations

from contextlib import contextmanager


class _Bar:
    def __init__(self, progress=None, task=None):
        self._p, self._t = progress, task

    def advance(self, n: int = 1) -> None:
        if self._p is not None:
            self._p.advance(self._t, n)

    def __call__(self) -> None:
        self.advance()

    def grow(self, n: int) -> None:
        """More steps than first planned (e.g. a fallback loop)."""
        if self._p is not None:
            task = self._p.tasks[[t.id for t in self._p.tasks].index(self._t)]
            self._p.update(self._t, total=(task.total or 0) + n)

    def describe(self, text: str) -> None:
        if self._p is not None:
            self._p.update(self._t, description=text)


@contextmanager
def progress_bar(console, description: str, total: int):
    if console is None:
        yield _Bar()
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as p:
        yield _Bar(p, p.add_task(description, total=total))
