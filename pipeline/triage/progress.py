"""Progress of a long run on a terminal: patients n/N, slices/s, ETA. Silent when not a TTY.

One status line rewritten in place on stderr (logs and pipes get nothing: the run's own log lines
already say how it went).
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def progress_line(done: int, total: int, slices: int, total_slices: int, seconds: float) -> str:
    """`patients 3/10 · 41.2 slices/s · ETA 0:12` (ETA from slices left at the current rate)."""
    rate = slices / seconds if seconds > 0 else 0.0
    left = max(total_slices - slices, 0)
    eta = "—" if rate <= 0 else f"{int(left / rate) // 60}:{int(left / rate) % 60:02d}"
    return f"patients {done}/{total} · {rate:.1f} slices/s · ETA {eta}"


class Progress:
    """Counts finished patients and rewrites one line on `stream` when it is a terminal."""

    def __init__(self, total: int, total_slices: int, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = bool(getattr(self.stream, "isatty", lambda: False)())
        self.total, self.total_slices = total, total_slices
        self.done = self.slices = 0
        self.start = time.perf_counter()

    def update(self, slices: int) -> None:
        """One patient finished; its `slices` count toward the rate."""
        self.done += 1
        self.slices += int(slices)
        if self.enabled:
            line = progress_line(
                self.done, self.total, self.slices, self.total_slices,
                time.perf_counter() - self.start,
            )  # fmt: skip
            # Cursor back to column 0: a log line printed meanwhile overwrites the status line
            # instead of running on after it.
            self.stream.write(f"\r{line}\033[K\r")
            self.stream.flush()

    def close(self) -> None:
        """End the status line (nothing when disabled)."""
        if self.enabled and self.done:
            self.stream.write("\n")
            self.stream.flush()
