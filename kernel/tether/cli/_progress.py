"""Progress for what a person waits on for more than a second: a live spinner (or a bar, when
the amount of work is known) on a terminal, plain lines otherwise.

rich draws the live display, and is imported only when one is shown: a command that shows
none (``tether version``, anything whose standard error is a pipe or a file) starts as fast as
before (``tests/test_progress.py`` checks it). The display goes to standard error, so what a
command prints on standard output stays as scripts read it.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from typing import Any, TextIO

__all__ = ["Progress", "progress"]


class Progress:
    """One operation's progress: its current step and, for a bar, how much is done."""

    def __init__(self, title: str, stream: TextIO, plain: bool) -> None:
        self._title = title
        self._stream = stream
        self._plain = plain
        self._started = time.monotonic()
        self._live: Any = None  # rich.progress.Progress while shown on a terminal
        self._task: Any = None

    def step(self, text: str) -> None:
        """Start the next step: the spinner's text on a terminal, else a line ``text...``."""
        if self._live is not None:
            self._live.update(self._task, description=text)
        elif self._plain:
            self._write(f"{text}...")

    def advance(self, amount: int = 1) -> None:
        """Count ``amount`` more units of work done (a bar's ``total``)."""
        if self._live is not None:
            self._live.advance(self._task, amount)

    def done(self, text: str | None = None) -> None:
        """End the display (before the command prints its result); print ``text``, if given,
        as its last line, with the time taken on a terminal."""
        if self._live is not None:
            self._live.stop()
            self._live = None
            if text:
                self._write(f"{text} ({time.monotonic() - self._started:.1f}s)")
        elif text and self._plain:
            self._write(text)

    def _write(self, line: str) -> None:
        self._stream.write(line + "\n")
        self._stream.flush()

    def _show(self, total: int | None) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )
        from rich.progress import Progress as Live

        columns: list[Any] = [SpinnerColumn(), TextColumn("{task.description}")]
        if total is not None:
            columns += [BarColumn(), MofNCompleteColumn()]
        columns.append(TimeElapsedColumn())
        # transient: the display leaves no trace once done; what the command prints stays
        self._live = Live(*columns, console=Console(file=self._stream), transient=True)
        self._task = self._live.add_task(self._title, total=total)
        self._live.start()


def _is_terminal(stream: TextIO) -> bool:
    return stream.isatty() and os.environ.get("TERM") != "dumb"


@contextlib.contextmanager
def progress(
    title: str,
    *,
    total: int | None = None,
    plain: bool = True,
    stream: TextIO | None = None,
) -> Iterator[Progress]:
    """Show ``title`` with a spinner (a bar when ``total`` is given) while the block runs.

    On a terminal (standard error by default) rich draws it; elsewhere ``title...`` and each
    step print as plain lines, or nothing with ``plain=False`` (for a command whose output
    already says what it does).
    """
    out = stream if stream is not None else sys.stderr
    shown = Progress(title, out, plain)
    if _is_terminal(out):
        shown._show(total)
    elif plain:
        shown._write(f"{title}...")
    try:
        yield shown
    finally:
        if shown._live is not None:
            shown._live.stop()
