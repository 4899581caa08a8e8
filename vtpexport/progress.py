"""Progress of long work: a tqdm bar on a terminal; where stderr is a pipe or a log (CI,
`| tee`, nohup), a plain line every few seconds with done / total, rate and ETA, since a bar's
carriage returns there are one unreadable line or nothing at all.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TextIO, TypeVar

T = TypeVar("T")

LINE_EVERY_S = 5.0


class LineProgress:
    """tqdm's `update` / `set_postfix` / context-manager interface, written as plain lines: one
    at the start, then at most one every `every` seconds, and a last one when closed."""

    def __init__(self, desc: str, total: int | None, unit: str, stream: TextIO, every: float = LINE_EVERY_S):
        self.desc, self.total, self.unit, self.stream, self.every = desc, total, unit, stream, every
        self.done = 0
        self.postfix = ""
        self.start = time.monotonic()
        self.closed = False
        self._write(self.start)  # at once: the first step of a big model may take minutes

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def set_postfix(self, refresh: bool = True, **values) -> None:
        self.postfix = ", ".join(f"{key}={value}" for key, value in values.items())

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if self.last_line is None or now - self.last_line >= self.every:
            self._write(now)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._write(time.monotonic(), final=True)

    def _write(self, now: float, final: bool = False) -> None:
        self.last_line = now
        elapsed = now - self.start
        count = f"{self.done}/{self.total}" if self.total else f"{self.done}"
        parts = [f"{self.desc}: {count} {self.unit}", f"{elapsed:.0f} s"]
        if final:
            parts[-1] = f"done in {elapsed:.1f} s"
        elif self.total and self.done:
            parts.append(f"ETA {elapsed / self.done * (self.total - self.done):.0f} s")
        if self.postfix:
            parts.append(self.postfix)
        print(", ".join(parts), file=self.stream, flush=True)


def progress_bar(desc: str, total: int | None = None, unit: str = "it", enabled: bool = True, stream=None):
    """A bar on a terminal, plain lines elsewhere, nothing when not `enabled`."""
    from tqdm import tqdm

    stream = stream or sys.stderr
    if not enabled:
        return tqdm(total=total, disable=True)
    if stream.isatty():
        return tqdm(desc=desc, total=total, unit=unit, file=stream)
    return LineProgress(desc, total, unit, stream)


def track(
    items: Iterable[T], desc: str, total: int | None = None, unit: str = "it", enabled: bool = True
) -> Iterator[T]:
    """`items`, reporting each one taken as a step of `progress_bar`."""
    with progress_bar(desc, total, unit, enabled) as bar:
        for item in items:
            yield item
            bar.update()


def step_log(stream: TextIO | None = None):
    """A `report(message)` for work in a few long steps (an export, an engine build): each step
    on its own line with the seconds since the first, flushed, terminal or not."""
    start = time.monotonic()

    def report(message: str) -> None:
        print(f"[{time.monotonic() - start:6.1f}s] {message}", file=stream or sys.stderr, flush=True)

    return report
