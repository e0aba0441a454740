"""Time helpers: all storage is UTC; calendar days and statistics follow Asia/Shanghai."""

from __future__ import annotations

from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

from google.protobuf.timestamp_pb2 import Timestamp

CHINA = ZoneInfo("Asia/Shanghai")


def to_utc(value: datetime) -> datetime:
    """Naive datetimes coming back from SQLite are UTC by our convention."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def china_date(value: datetime) -> date:
    return to_utc(value).astimezone(CHINA).date()


def to_timestamp(value: datetime | None) -> Timestamp:
    ts = Timestamp()
    if value is not None:
        ts.FromDatetime(to_utc(value))
    return ts


def from_timestamp(ts: Timestamp) -> datetime | None:
    """None for an unset (zero) timestamp, so optional times stay optional."""
    if ts.seconds == 0 and ts.nanos == 0:
        return None
    return ts.ToDatetime(tzinfo=UTC)
