"""Progress of long work, on a terminal and in a log file alike.

`progress(total=..., desc=...)` is the one progress bar of the library: a tqdm bar when standard error is a
terminal, and otherwise (output sent to a file by nohup, sbatch or a pipe) a plain line on the `aigi` logger every
`every_s` seconds or every `every_fraction` of the work, plus one at the end, so a log file shows the work moving:

    extract clip-l14: 1,200/40,000 img (3.0%), 41.7 img/s, 15m30s left

Library code reports through it and through `logging.getLogger(__name__)`; it never prints. The command line decides
where the lines go (`aigi.cli`), and `quiet=True` (or the logger's level) silences them. `delay_s` (as tqdm's
`delay`) keeps work shorter than that silent: a command done in a moment prints its result, not its progress.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")
LOG = logging.getLogger("aigi.progress")
EVERY_S = 10.0
EVERY_FRACTION = 0.05
SHORT_WORK_S = 1.0  # the `delay_s` of the stages: work done within a second shows no progress


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class Progress(Generic[T]):
    """A counter of done work that shows itself; use as a context manager or by iterating over it."""

    def __init__(
        self,
        iterable: Iterable[T] | None = None,
        *,
        total: int | None = None,
        desc: str,
        unit: str = "it",
        quiet: bool = False,
        every_s: float = EVERY_S,
        every_fraction: float = EVERY_FRACTION,
        terminal: bool | None = None,
        delay_s: float = 0.0,
    ) -> None:
        self.iterable, self.desc, self.unit = iterable, desc, unit
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.total, self.n, self.quiet = total, 0, quiet
        self.every_s, self.every_fraction, self.delay_s = every_s, every_fraction, delay_s
        self.start = self._last_time = time.perf_counter()
        self._last_n = 0
        self._bar: Any = None
        self._closed = False
        quiet = self.quiet = quiet or not LOG.isEnabledFor(logging.INFO)  # `aigi --quiet` silences the bar too
        tty = sys.stderr.isatty() if terminal is None else terminal
        if tty and not quiet:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, file=sys.stderr, delay=delay_s)

    def __enter__(self) -> Progress[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[T]:
        if self.iterable is None:
            raise TypeError("Progress was made without an iterable; call update(n) instead")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def set_postfix(self, text: str) -> None:
        """A short note shown after the counts on the terminal bar (ignored in plain lines)."""
        if self._bar is not None:
            self._bar.set_postfix_str(text, refresh=False)

    def update(self, n: int = 1) -> None:
        """Count `n` more units done."""
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
            return
        if self.quiet:
            return
        now = time.perf_counter()
        if now - self.start < self.delay_s:
            return
        step = self.every_fraction * self.total if self.total else None
        if now - self._last_time >= self.every_s or (step and self.n - self._last_n >= step):
            self._line(now)

    def line(self, now: float | None = None) -> str:
        """The plain progress line: done/total, share, rate and time left."""
        now = time.perf_counter() if now is None else now
        elapsed = max(now - self.start, 1e-9)
        rate = self.n / elapsed
        text = f"{self.desc}: {self.n:,}" + (f"/{self.total:,}" if self.total else "") + f" {self.unit}"
        if self.total:
            text += f" ({100 * self.n / self.total:.1f}%)"
        text += f", {rate:.1f} {self.unit}/s"
        if self.total and rate > 0 and self.n < self.total:
            text += f", {_duration((self.total - self.n) / rate)} left"
        elif self.n and (not self.total or self.n >= self.total):
            text += f", {_duration(elapsed)}"
        return text

    def _line(self, now: float) -> None:
        LOG.info(self.line(now))
        self._last_time, self._last_n = now, self.n

    def close(self) -> None:
        """End the bar; in plain mode, one last line when anything moved since the previous one."""
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif not self.quiet and self.n != self._last_n and time.perf_counter() - self.start >= self.delay_s:
            self._line(time.perf_counter())


def progress(iterable: Iterable[T] | None = None, **kwargs: Any) -> Progress[T]:
    """A `Progress` over `iterable` (or over `total` units counted with `update`); see the module doc."""
    return Progress(iterable, **kwargs)
