"""Client timestamps and durations are checked once, at the edge, and named when wrong."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from services.common.errors import InvalidArgument
from services.common.timeutil import CHINA, from_duration, from_timestamp, to_timestamp


def test_unset_timestamp_is_none_and_a_set_one_round_trips() -> None:
    assert from_timestamp(Timestamp()) is None
    moment = datetime(2026, 11, 22, 8, 30, tzinfo=UTC)
    assert from_timestamp(to_timestamp(moment)) == moment


@pytest.mark.parametrize(
    "ts",
    [Timestamp(seconds=253402300800), Timestamp(seconds=-62135596801), Timestamp(seconds=1, nanos=1_000_000_000)],
)
def test_impossible_timestamps_are_invalid_argument_naming_the_field(ts: Timestamp) -> None:
    with pytest.raises(InvalidArgument) as caught:
        from_timestamp(ts, "period_start")
    assert caught.value.message.startswith("period_start: ")


def test_durations_must_be_positive_and_bounded() -> None:
    assert from_duration(Duration(), "window") is None
    assert from_duration(Duration(seconds=3600), "window") == timedelta(hours=1)
    for bad in (Duration(seconds=-1), Duration(seconds=9223372036854775807)):
        with pytest.raises(InvalidArgument, match=r"^window: "):
            from_duration(bad, "window")


def test_to_timestamp_gives_what_from_datetime_gives() -> None:
    """to_timestamp computes from a timedelta (issue 17); FromDatetime is the reference, before 1970 too."""
    moments = [
        datetime(2026, 12, 6, 19, 30, 1, 123456, tzinfo=UTC),
        datetime(2026, 12, 7, 3, 30, tzinfo=CHINA),
        datetime(1970, 1, 1, tzinfo=UTC),
        datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(1900, 3, 1, 0, 0, 0, 1, tzinfo=UTC),
        datetime(2199, 12, 31, 23, 59, 59, 500000, tzinfo=UTC),
    ]
    moments += [moments[0] + timedelta(microseconds=n * 37_777) for n in range(1, 40)]
    for moment in moments:
        expected = Timestamp()
        expected.FromDatetime(moment.astimezone(UTC))
        assert to_timestamp(moment) == expected, moment
    assert to_timestamp(None) == Timestamp()
