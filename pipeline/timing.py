"""Where a command's wall time goes: seconds since the process started, and named stages in order."""

from __future__ import annotations

import os
import time

_IMPORTED = time.perf_counter()


def process_seconds() -> float:
    """Seconds since this process started (Linux: from /proc; elsewhere: since this module was imported)."""
    try:
        with open("/proc/self/stat", encoding="ascii") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime", encoding="ascii") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, AttributeError):
        return time.perf_counter() - _IMPORTED


class Stages:
    """Durations of consecutive stages: `mark("load")` closes the stage that began at the previous mark.

    The first stage, "start" (unless `start=False`), runs from the process start (interpreter, imports, argument
    parsing) to the construction of this object.
    """

    def __init__(self, *, start: bool = True) -> None:
        self.seconds: dict[str, float] = {"start": process_seconds()} if start else {}
        self._last = time.perf_counter()

    def mark(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = self.seconds.get(name, 0.0) + now - self._last
        self._last = now

    def line(self) -> str:
        """`start 1.62 s, open 0.05 s, ...; total 2.10 s`."""
        parts = ", ".join(f"{k} {v:.2f} s" for k, v in self.seconds.items())
        return f"{parts}; total {sum(self.seconds.values()):.2f} s"
