"""Progress lines for long downloads and copies: a bar redrawn in place on a terminal, a line
every 10% elsewhere (logs and CI stay short)."""

from __future__ import annotations

import sys
import time


def human(size: float) -> str:
    """A byte count as a short string (1.2 MB)."""
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"


class Progress:
    """Bytes done out of a total for one file; `update` as bytes arrive, `close` when done."""

    def __init__(self, label: str, total: int | None, *, done: int = 0, stream=None) -> None:
        self.label, self.total, self.done = label, total, done
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.started = time.monotonic()
        self._last_decile = -1
        self._last_draw = 0.0

    def update(self, count: int) -> None:
        """Count `count` more bytes."""
        self.done += count
        if self.tty:
            now = time.monotonic()
            if now - self._last_draw >= 0.1:
                self._last_draw = now
                self.stream.write("\r" + self._line())
                self.stream.flush()
        elif self.total and self.total >= 8_000_000:  # small files: just the closing line
            decile = int(10 * self.done / self.total)
            if decile > self._last_decile and decile < 10:
                self._last_decile = decile
                self.stream.write(self._line() + "\n")

    def close(self) -> None:
        """Finish the line with the size and the rate."""
        elapsed = max(time.monotonic() - self.started, 1e-6)
        end = f"  {self.label}  {human(self.done)} in {elapsed:.1f}s ({human(self.done / elapsed)}/s)"
        self.stream.write(("\r" + end.ljust(78) if self.tty else end) + "\n")
        self.stream.flush()

    def _line(self) -> str:
        if not self.total:
            return f"  {self.label}  {human(self.done)}"
        fraction = min(self.done / self.total, 1.0)
        bar = "#" * int(24 * fraction)
        return f"  {self.label}  [{bar:<24}] {100 * fraction:3.0f}%  {human(self.done)} / {human(self.total)}"
