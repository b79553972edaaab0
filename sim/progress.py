"""The progress display: one line refreshed in place on a terminal, plain lines otherwise."""

from __future__ import annotations

import shutil
import time
from collections.abc import Mapping
from typing import TextIO

from execution_engine.states import ALL_STATE_VALUES

TTY_INTERVAL = 0.5
PLAIN_INTERVAL = 5.0


class Progress:
    """Shows jobs submitted, per-state counts and rates.

    On a terminal the line is redrawn every ``interval`` seconds (0.5 by default); when the output
    is a file or a pipe, a plain line is printed every ``interval`` seconds (5 by default), so that
    logs stay readable.
    """

    def __init__(self, stream: TextIO, total: int, *, interval: float | None = None,
                 enabled: bool = True) -> None:
        self.stream = stream
        self.total = total
        self.tty = stream.isatty()
        self.interval = interval if interval is not None else (
            TTY_INTERVAL if self.tty else PLAIN_INTERVAL)
        self.enabled = enabled
        self.started = time.monotonic()
        self._next = 0.0
        self._last: tuple[float, int] | None = None
        self._drawn = False

    def due(self) -> bool:
        return self.enabled and time.monotonic() >= self._next

    def show(self, submitted: int, counts: Mapping[str, int], done: int) -> None:
        """Draw the current figures; ``counts`` are jobs per state, ``done`` ended and
        notified."""
        if not self.enabled:
            return
        now = time.monotonic()
        self._next = now + self.interval
        line = self.line(submitted, counts, done, now)
        if self.tty:
            width = shutil.get_terminal_size((120, 20)).columns
            self.stream.write("\r\x1b[2K" + line[: width - 1])
            self._drawn = True
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def line(self, submitted: int, counts: Mapping[str, int], done: int, now: float) -> str:
        elapsed = now - self.started
        ended = sum(counts.get(s, 0) for s in ("finished", "error", "killed"))
        rate = ""
        if self._last is not None and now > self._last[0]:
            rate = f" ({(ended - self._last[1]) / (now - self._last[0]):.1f}/s)"
        self._last = (now, ended)
        states = ", ".join(f"{s} {counts[s]}" for s in _ordered(counts) if counts[s])
        return (f"{elapsed:7.1f}s  submitted {submitted}/{self.total} "
                f"({submitted / elapsed if elapsed > 0 else 0:.1f}/s)  ended {ended}{rate}  "
                f"done {done} | {states or 'no job yet'}")

    def finish(self) -> None:
        """End the refreshed line (call before printing anything else)."""
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False


def _ordered(counts: Mapping[str, int]) -> list[str]:
    known = [s for s in ALL_STATE_VALUES if s in counts]
    return known + sorted(s for s in counts if s not in ALL_STATE_VALUES)
