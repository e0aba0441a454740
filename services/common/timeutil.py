"""Times on the wire: protobuf Timestamp and Duration to and from UTC datetimes, range-checked."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

# The clock itself is in services.common.clock, which rule modules import without protobuf;
# importing it here keeps `from services.common.timeutil import china_date` working for adapters.
from services.common.clock import CHINA, china_date, to_utc
from services.common.errors import InvalidArgument

__all__ = ["CHINA", "EARLIEST", "LATEST", "china_date", "from_duration", "from_timestamp", "to_timestamp", "to_utc"]


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_timestamp(value: datetime | None) -> Timestamp:
    """What ``Timestamp.FromDatetime`` gives, from a timedelta: FromDatetime's pure-Python calendar
    arithmetic (timegm) was ~15 % of a case page's work order list (issue 17). A timedelta is
    normalised as a Timestamp is (whole seconds floored, microseconds in [0, 10**6)), before 1970 too."""
    if value is None:
        return Timestamp()
    delta = to_utc(value) - _EPOCH
    return Timestamp(seconds=delta.days * 86_400 + delta.seconds, nanos=delta.microseconds * 1000)


# Times a petition platform can meaningfully be asked about. Checking here, once, keeps absurd
# client values (year 9999, negative nanos) from overflowing date arithmetic deeper down.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(2200, 1, 1, tzinfo=UTC)


def from_timestamp(ts: Timestamp, field: str = "timestamp") -> datetime | None:
    """None for an unset (zero) timestamp, so optional times stay optional.

    A timestamp outside 1970..2199 or with nanos outside [0, 1e9) is the caller's mistake:
    ``InvalidArgument`` naming ``field``.
    """
    if ts.seconds == 0 and ts.nanos == 0:
        return None
    if not 0 <= ts.nanos < 1_000_000_000:
        raise InvalidArgument(field, f"nanos must be in [0, 999999999], got {ts.nanos}")
    if not EARLIEST.timestamp() <= ts.seconds < LATEST.timestamp():
        raise InvalidArgument(field, f"must be between {EARLIEST:%Y-%m-%d} and {LATEST:%Y-%m-%d}")
    return ts.ToDatetime(tzinfo=UTC)


def from_duration(value: Duration, field: str, *, maximum: timedelta = timedelta(days=3660)) -> timedelta | None:
    """None for an unset duration; negative, malformed or absurdly long ones are ``InvalidArgument``."""
    if value.seconds == 0 and value.nanos == 0:
        return None
    if value.seconds < 0 or value.nanos < 0 or value.nanos >= 1_000_000_000:
        raise InvalidArgument(field, "must be a positive duration")
    if value.seconds > maximum.total_seconds():
        raise InvalidArgument(field, f"must be at most {maximum.days} days")
    return timedelta(seconds=value.seconds, microseconds=value.nanos // 1000)
