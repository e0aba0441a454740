"""A sampling profiler of this process's Python threads (``sys._current_frames``), for where time goes.

    with Sampler(interval_s=0.002) as sampler:
        ...
    print(sampler.report())

Each sample notes, per thread that is running Python code (not blocked in a wait), the function on
top of its stack and every function on it. A thread waiting in ``select``, a lock or a condition is
counted under that wait, so ``--idle`` figures count wake-ups, not waiting. Only threads that hold
or want the GIL appear; gRPC's C threads do not (read /proc for them, ``bench.idle_profile``).
"""

from __future__ import annotations

import collections
import sys
import threading
import time
from types import FrameType, TracebackType

_WAITS = {"wait", "select", "poll", "_wait_for_tstate_lock", "acquire", "sleep", "get", "accept", "recv"}


def _where(frame: FrameType) -> str:
    code = frame.f_code
    file = code.co_filename.rsplit("site-packages/", 1)[-1].rsplit("/work/", 1)[-1]
    return f"{file}:{code.co_name}"


class Sampler:
    def __init__(self, interval_s: float = 0.002, depth: int = 40) -> None:
        self.interval_s = interval_s
        self.depth = depth
        self.samples = 0
        self.cpu_s = 0.0  # the sampler thread's own CPU, for callers that take it out of a process's figure
        self.top: collections.Counter[tuple[str, str]] = collections.Counter()
        self.inclusive: collections.Counter[tuple[str, str]] = collections.Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        try:
            self._sample()
        finally:
            self.cpu_s = time.thread_time()

    def _sample(self) -> None:
        me = threading.get_ident()
        while not self._stop.wait(self.interval_s):
            names = {t.ident: t.name.rstrip("0123456789_-") for t in threading.enumerate()}
            self.samples += 1
            for ident, frame in sys._current_frames().items():
                if ident == me or frame.f_code.co_name in _WAITS:
                    continue
                thread = names.get(ident, "?")
                self.top[(thread, _where(frame))] += 1
                seen: set[str] = set()
                f: FrameType | None = frame
                for _ in range(self.depth):
                    if f is None:
                        break
                    where = _where(f)
                    if where not in seen:
                        seen.add(where)
                        self.inclusive[(thread, where)] += 1
                    f = f.f_back

    def report(self, limit: int = 25) -> str:
        seconds = self.samples * self.interval_s
        lines = [f"{self.samples} samples over ~{seconds:.1f} s (share of samples a thread ran this code)"]
        for title, counter in (("on top of the stack", self.top), ("anywhere on the stack", self.inclusive)):
            lines.append(f"-- {title}")
            for (thread, where), n in counter.most_common(limit):
                lines.append(f"{n / max(self.samples, 1) * 100:6.1f}%  {thread:24s} {where}")
        return "\n".join(lines)
