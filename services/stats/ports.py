"""The stats handlers' ports: which cases a figure is about (``Slice``) and the unit of work they
read and write through (``StatsUnitOfWork``), so the handlers know no SQL.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from services.common.regions import Tier
from services.stats.domain import Aggregates, CaseEvent, CaseFact


@dataclass(frozen=True)
class Slice:
    """Which cases a figure is about. ``months`` (statistical months) wins over [start, end)."""

    region_code: str
    tier: Tier
    unit_id: str = ""
    category: str = ""
    channel: str = ""
    months: Sequence[str] = field(default_factory=tuple)
    start: datetime | None = None
    end: datetime | None = None


class StatsUnitOfWork(Protocol):
    """What the handlers read and write; ``store.SqlWarehouse`` on SQLite and PostgreSQL, an
    in-memory fake in tests (tests/support/stats.py)."""

    def record_event(self, events: Sequence[CaseEvent], *, source: str, body: bytes) -> bool:
        """Keep the body of ``events`` (one event, or a folded placement's creation and steps); False
        when (case_id, version, kind) was already there: the body's envelope's, i.e. the first
        event's case and kind with the last one's version."""

    def events_of(self, case_id: str) -> list[CaseEvent]: ...

    def save_fact(self, fact: CaseFact) -> None: ...

    def save_text(self, case_id: str, text: str) -> None: ...

    def aggregate(
        self, where: Slice, *, as_of: datetime, group_by: str | None, metrics: Sequence[str] | None = None
    ) -> dict[str, Aggregates]:
        """Counts per group ("" when ``group_by`` is None); group_by: child, unit, category, channel.

        With ``metrics``, only ``received`` and what those metrics read (``METRIC_COUNTERS``) need
        be filled; the other counters may be left at 0."""
        ...

    def case_ids(self, where: Slice, *, predicate: str, as_of: datetime, limit: int) -> list[str]: ...

    def hotspot_counts(
        self, where: Slice, *, baseline_start: datetime, window_start: datetime, end: datetime
    ) -> tuple[dict[tuple[str, str], int], dict[tuple[str, str], int]]:
        """Cases per (region, category) in [window_start, end) and in [baseline_start, window_start)."""
        ...

    def window_cases(
        self, *, region_code: str, tier: Tier, category: str, start: datetime, end: datetime
    ) -> list[tuple[str, datetime, str]]:
        """(case id, submitted_at, unit id) of the cases of one (region, category) submitted in [start, end)."""
        ...

    def texts(self, case_ids: Sequence[str]) -> dict[str, str]: ...

    def late_assisting_units(self, where: Slice) -> dict[str, int]:
        """协办超期: per assisting unit, the slice's cases in which it was late (answered after its
        deadline or chased for it)."""
        ...
