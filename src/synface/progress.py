"""Progress of long stages: a tqdm bar on a terminal, one plain line every N steps elsewhere.

A stage's output usually goes to a rule's ``log:`` file or to SLURM's output file, where a
redrawn bar becomes thousands of carriage-return fragments. So the bar is drawn only when
stderr is a terminal; otherwise the same object logs one concise line every ``every`` steps
(and one at the end), with the rate and, when the total is known, the ETA:

    pack-tfrecords: 3000/12000 images (25%), 512 images/s, elapsed 0:00:06, ETA 0:00:18

Usage mirrors tqdm: iterate over ``progress(items, ...)``, or call ``.update(n)`` on
``progress(total, ...)`` inside a ``with`` block.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import IO, Generic, TypeVar

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

T = TypeVar("T")

log = logging.getLogger("synface.progress")


def is_terminal(stream: IO[str]) -> bool:
    """Whether ``stream`` is an interactive terminal (a file or a pipe is not)."""
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def _clock(seconds: float) -> str:
    """``H:MM:SS``, the way tqdm prints elapsed time."""
    whole = int(seconds)
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


class Progress(Generic[T]):
    """Counts the steps of one long loop and reports them (a bar or plain lines).

    Iterating over it yields the wrapped items and counts one step each; ``update(n)`` counts
    ``n`` steps done in other ways (a batch of images). ``close`` (or leaving the ``with``
    block, or the end of the iteration) reports the final count.
    """

    def __init__(
        self,
        items: Iterable[T] | None,
        total: int | None,
        desc: str,
        every: int,
        unit: str,
        initial: int,
        stream: IO[str],
        disable: bool = False,
    ) -> None:
        if every < 1:
            raise ValueError(f"progress every must be >= 1, got {every}")
        self.items, self.total, self.desc, self.unit = items, total, desc, unit
        self.every, self.n, self.initial = every, initial, initial
        self._started = time.monotonic()
        self._next_line = (initial // every + 1) * every
        self._reported = initial
        self._closed = disable
        self._bar: tqdm | None = None
        self._redirect = contextlib.ExitStack()
        if is_terminal(stream) and not disable:
            self._bar = tqdm(
                total=total, desc=desc, unit=unit, initial=initial, file=stream, dynamic_ncols=True
            )
            # Log lines printed while the bar is drawn go above it, not through it.
            self._redirect.enter_context(logging_redirect_tqdm())

    def __iter__(self) -> Iterator[T]:
        if self.items is None:
            raise TypeError("progress(total) counts with update(n); give it items to iterate")
        try:
            for item in self.items:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> Progress[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, steps: int = 1) -> None:
        """Count ``steps`` more; a plain line each time the count passes a multiple of every."""
        self.n += steps
        if self._bar is not None:
            self._bar.update(steps)
        elif self.n >= self._next_line and not self._closed:
            self._report()
            self._next_line = (self.n // self.every + 1) * self.every

    def _report(self) -> None:
        log.info("%s", self.line())
        self._reported = self.n

    def line(self) -> str:
        """The plain report: count (of total), rate and elapsed time, ETA when it is known."""
        elapsed = time.monotonic() - self._started
        rate = (self.n - self.initial) / elapsed if elapsed > 0 else 0.0
        count = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        parts = [f"{self.desc}: {count} {self.unit}"]
        if self.total:
            parts[0] += f" ({100 * self.n / self.total:.0f}%)"
        figure = f"{rate:.0f}" if rate >= 100 else f"{rate:.3g}"
        parts += [f"{figure} {self.unit}/s", f"elapsed {_clock(elapsed)}"]
        if self.total and rate > 0 and self.n < self.total:
            parts.append(f"ETA {_clock(max(self.total - self.n, 0) / rate)}")
        return ", ".join(parts)

    def close(self) -> None:
        """Report the final count once (a plain line unless one was just written for it)."""
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
            self._redirect.close()
        elif self.n != self._reported:
            self._report()


def progress(
    items: Iterable[T] | int | None,
    desc: str,
    every: int = 100,
    total: int | None = None,
    unit: str = "it",
    initial: int = 0,
    stream: IO[str] | None = None,
    disable: bool = False,
) -> Progress[T]:
    """Report the progress of a long loop: a bar on a terminal, a line every ``every`` steps.

    ``items`` is what the loop iterates over (its ``len`` is the total when it has one), or
    the total number of steps (an ``int``) for a loop that counts with ``update(n)``; ``None``
    for an unknown total. ``initial`` is where a resumed loop starts (rate and ETA count only
    the steps done here). ``stream`` defaults to stderr, where the stages log. ``disable``
    counts without reporting (the other processes of a multi-GPU job).
    """
    if isinstance(items, int):
        items, total = None, items
    elif total is None and items is not None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    return Progress(items, total, desc, every, unit, initial, stream or sys.stderr, disable)
