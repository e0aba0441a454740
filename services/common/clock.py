"""The clock's rules: all storage is UTC; calendar days and statistics follow Asia/Shanghai."""

from __future__ import annotations

from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

CHINA = ZoneInfo("Asia/Shanghai")


def to_utc(value: datetime) -> datetime:
    """Naive datetimes coming back from SQLite are UTC by our convention."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def china_date(value: datetime) -> date:
    return to_utc(value).astimezone(CHINA).date()
