"""A small progress bar on stderr: phase name, done/total, rate and ETA.

It redraws in place only when the stream is a terminal; otherwise (CI logs, pipes) it prints one
line per finished phase, so logs stay readable.
"""

from __future__ import annotations

import sys
import threading
import time
from types import TracebackType
from typing import TextIO

REDRAW_EVERY_S = 0.1
BAR_WIDTH = 24


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f}s"
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes}m{rest:02d}s"


class Phase:
    """One phase of work. ``total`` counts units of work; ``seconds`` bounds a timed phase instead.

    Thread-safe: gRPC callbacks and client threads call ``advance`` concurrently.
    """

    def __init__(
        self, bar: Progress, name: str, *, total: int | None = None, seconds: float | None = None, unit: str = ""
    ) -> None:
        self._bar = bar
        self.name = name
        self.total = total
        self.seconds = seconds
        self.unit = unit
        self.done = 0
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self._drawn_at = 0.0

    def advance(self, n: int = 1) -> None:
        with self._lock:
            self.done += n
            now = time.monotonic()
            if now - self._drawn_at < REDRAW_EVERY_S:
                return
            self._drawn_at = now
        self._bar.draw(self)

    def set(self, done: int) -> None:
        with self._lock:
            self.done = done
        self._bar.draw(self)

    def fraction(self, now: float) -> float | None:
        if self.total:
            return min(1.0, self.done / self.total)
        if self.seconds:
            return min(1.0, (now - self.started) / self.seconds)
        return None

    def line(self, now: float, *, final: bool = False) -> str:
        """The phase as one line; ``final`` shows the time it took instead of an ETA."""
        elapsed = max(now - self.started, 1e-9)
        rate = self.done / elapsed
        fraction = self.fraction(now)
        bar = ""
        if fraction is not None:
            filled = int(fraction * BAR_WIDTH)
            bar = "[" + "#" * filled + "." * (BAR_WIDTH - filled) + "] "
        total = f"/{self.total:,}" if self.total else ""
        if final:
            eta = _duration(elapsed)
        elif self.total and rate > 0:
            eta = f"ETA {_duration((self.total - self.done) / rate)}"
        elif self.seconds:
            eta = f"ETA {_duration(self.seconds - elapsed)}"
        else:
            eta = f"{_duration(elapsed)}"
        unit = f" {self.unit}" if self.unit else ""
        if not self.total and not self.seconds and not self.done:
            return f"{self.name:<34} {eta}"  # a phase that only waits: just the time
        return f"{self.name:<34} {bar}{self.done:,}{total}{unit}  {rate:,.0f}/s  {eta}"

    def __enter__(self) -> Phase:
        self._bar.draw(self)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._bar.finish(self, failed=exc_type is not None)


class Progress:
    """Phases one after the other; ``enabled=False`` keeps it silent (tests of the plain functions)."""

    def __init__(self, stream: TextIO | None = None, *, enabled: bool = True) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.tty = enabled and self.stream.isatty()
        self._lock = threading.Lock()

    def phase(self, name: str, *, total: int | None = None, seconds: float | None = None, unit: str = "") -> Phase:
        return Phase(self, name, total=total, seconds=seconds, unit=unit)

    def draw(self, phase: Phase) -> None:
        if not self.tty:
            return
        with self._lock:
            self.stream.write("\r\x1b[2K" + phase.line(time.monotonic()))
            self.stream.flush()

    def finish(self, phase: Phase, *, failed: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        text = phase.line(now, final=True) + (" FAILED" if failed else "")
        with self._lock:
            if self.tty:
                self.stream.write("\r\x1b[2K" + text + "\n")
            else:
                self.stream.write(text + "\n")
            self.stream.flush()

    def note(self, text: str) -> None:
        """A one-off line (what is being started, where the JSON went)."""
        if not self.enabled:
            return
        with self._lock:
            self.stream.write(("\r\x1b[2K" if self.tty else "") + text + "\n")
            self.stream.flush()
