"""Screening of submissions: a plain word list for abuse and slander, and in-memory attempt limits.

Held cases are never dropped: they wait in the moderation queue (state MODERATION) until an
operator releases or rejects them. The list lives in a file beside this module
(``moderation_terms.yaml``: reason → list of terms) so operators can read and change it without
touching code.
"""

from __future__ import annotations

import threading
import time
import unicodedata
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

from services.intake.dedup import normalise


@dataclass(frozen=True)
class Screen:
    """Terms by reason; ``reasons(text)`` names every reason whose term occurs in the text."""

    terms: tuple[tuple[str, str], ...]

    @classmethod
    def load(cls, path: Path | None = None) -> Screen:
        if path is None:
            text = (resources.files("services.intake") / "moderation_terms.yaml").read_text("utf-8")
        else:
            text = Path(path).read_text("utf-8")
        loaded = yaml.safe_load(text) or {}
        if not isinstance(loaded, dict):
            raise ValueError("moderation terms must map a reason to a list of terms")
        return cls(
            tuple((str(reason), normalise(str(term))) for reason, terms in loaded.items() for term in terms or ())
        )

    @classmethod
    def parse(cls, lines: Iterable[str]) -> Screen:
        terms: list[tuple[str, str]] = []
        for line in lines:
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            reason, _, term = line.partition("\t")
            if not term:
                reason, term = "abusive_language", reason
            terms.append((reason.strip(), normalise(term)))
        return cls(tuple(terms))

    def reasons(self, text: str) -> list[str]:
        # Normalised like the duplicate check: spaces or punctuation inside a word do not hide it.
        flat = normalise(unicodedata.normalize("NFKC", text))
        found: list[str] = []
        for reason, term in self.terms:
            if term and term in flat and reason not in found:
                found.append(reason)
        return found


class AttemptLimiter:
    """At most ``limit`` events per key in a sliding ``window_s``; in memory, per process.

    Used for failed tracking-code logins: an api replica counts its own failures, so a guesser
    spread over N replicas gets N times the attempts, still far too few against 2^50 codes.
    """

    def __init__(self, limit: int, window_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.window_s = window_s
        self._clock = clock
        self._events: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque[float]:
        events = self._events.setdefault(key, deque())
        while events and events[0] <= now - self.window_s:
            events.popleft()
        return events

    def blocked(self, key: str) -> bool:
        with self._lock:
            return len(self._recent(key, self._clock())) >= self.limit

    def record(self, key: str) -> None:
        with self._lock:
            now = self._clock()
            self._recent(key, now).append(now)
            if len(self._events) > 100_000:
                # Forget idle keys so a flood of random codes cannot grow memory without bound.
                for stale in [k for k, v in self._events.items() if not v or v[-1] <= now - self.window_s]:
                    del self._events[stale]
