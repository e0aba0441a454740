"""Client timestamps and durations are checked once, at the edge, and named when wrong."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from services.common.errors import InvalidArgument
from services.common.timeutil import from_duration, from_timestamp, to_timestamp


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
