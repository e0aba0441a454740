from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from services.common.errors import InvalidArgument
from services.common.identity import check_id_number, check_phone
from services.intake.validation import (
    ANONYMOUS_CHANNELS,
    CHANNELS,
    REQUIRED_BY_CHANNEL,
    Submission,
    check_text_lengths,
    validate_submission,
)

VALID_ID = "11010519491231002X"  # the GB 11643 standard's own example
LESHAN = frozenset({"511100", "511102", "511111"})


def _complete(channel: str) -> Submission:
    return Submission(
        channel=channel,
        title="嘉州大道噪音扰民",
        body="晚上十点以后还在施工。",
        channel_ref="NT-2026-0001",
        region_code="511102",
        address="乐山市市中区嘉州大道1号",
        name="张三",
        id_number=VALID_ID.lower(),
        phone="138 0013 8000",
        hotline_operator_id="op-7",
    )


def _error(submission: Submission) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as caught:
        validate_submission(submission, allowed_regions=LESHAN)
    return caught.value


def test_id_number_check_digit_is_normalised_to_upper_case_x() -> None:
    assert check_id_number(" 11010519491231002x ") == VALID_ID


def test_id_number_with_wrong_check_digit_names_the_right_one() -> None:
    with pytest.raises(InvalidArgument) as caught:
        check_id_number("110105194912310021")
    assert caught.value.field == "id_number"
    assert caught.value.reason == "check digit should be X"


@pytest.mark.parametrize("value", ["110105194902300021", "110105194913010021", "110105219912310021"])
def test_id_number_with_impossible_birth_date_is_refused(value: str) -> None:
    with pytest.raises(InvalidArgument, match="birth date"):
        check_id_number(value)


@pytest.mark.parametrize("value", ["11010519491231002", "11010519491231002X1", ""])
def test_id_number_of_wrong_length_is_refused(value: str) -> None:
    with pytest.raises(InvalidArgument, match="must be 18 characters"):
        check_id_number(value)


def test_id_number_with_letters_or_zero_region_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="17 digits"):
        check_id_number("1101051949123100AX")
    with pytest.raises(InvalidArgument, match="region prefix"):
        check_id_number("010105194912310026")


def test_mobile_numbers_are_normalised() -> None:
    assert check_phone("+86 138-0013-8000") == "13800138000"
    assert check_phone("19912345678") == "19912345678"


@pytest.mark.parametrize("value", ["12800138000", "1380013800", "138001380001", "0833-1234567", "abc"])
def test_bad_mobile_numbers_are_refused(value: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        check_phone(value)
    assert caught.value.field == "phone"


def test_landlines_are_accepted_only_when_asked() -> None:
    assert check_phone("0833-1234567", landline=True) == "0833-1234567"
    assert check_phone("010 12345678", landline=True) == "01012345678"
    with pytest.raises(InvalidArgument):
        check_phone("833-1234567", landline=True)


def test_text_lengths() -> None:
    assert check_text_lengths(" 标题 ", " 正文 ") == ("标题", "正文")
    with pytest.raises(InvalidArgument) as caught:
        check_text_lengths("题" * 123, "正文")
    assert (caught.value.field, caught.value.reason) == ("title", "must be at most 100 characters, got 123")
    assert check_text_lengths("题" * 100, "文" * 4000)
    with pytest.raises(InvalidArgument) as caught:
        check_text_lengths("标题", "文" * 4001)
    assert (caught.value.field, caught.value.reason) == ("body", "must be at most 4000 characters, got 4001")
    with pytest.raises(InvalidArgument) as caught:
        check_text_lengths("标题", "  \n ")
    assert (caught.value.field, caught.value.reason) == ("body", "must not be empty")
    with pytest.raises(InvalidArgument) as caught:
        check_text_lengths("", "正文")
    assert caught.value.field == "title"


@pytest.mark.parametrize("channel", sorted(CHANNELS))
def test_a_complete_submission_is_valid_on_every_channel(channel: str) -> None:
    clean = validate_submission(_complete(channel), allowed_regions=LESHAN)
    assert clean.id_number == VALID_ID
    assert clean.phone == "13800138000"


@pytest.mark.parametrize(
    ("channel", "field"),
    [(channel, field) for channel, fields in REQUIRED_BY_CHANNEL.items() for field in fields],
)
def test_each_channel_requires_its_fields(channel: str, field: str) -> None:
    blanked: dict[str, Any] = {field: "  "}
    error = _error(dataclasses.replace(_complete(channel), **blanked))
    # The complainant's address is named as the request names it (the request's own is the place).
    assert error.field == ("complainant.address" if field == "address" else field)
    assert error.reason == f"is required for channel {channel}"


@pytest.mark.parametrize("channel", sorted(CHANNELS - set(REQUIRED_BY_CHANNEL)))
def test_online_channels_need_only_a_way_to_reach_a_named_citizen(channel: str) -> None:
    minimal = Submission(channel=channel, title="标题", body="正文", phone="13800138000")
    assert validate_submission(minimal, allowed_regions=LESHAN).phone == "13800138000"


def test_minimal_valid_submission_for_channels_with_requirements() -> None:
    minimal = {
        "hotline": Submission("hotline", "标题", "正文", phone="0833-1234567", hotline_operator_id="op-1"),
        "letter": Submission("letter", "标题", "正文", name="李四", address="乐山市", phone="13800138000"),
        "walk_in": Submission("walk_in", "标题", "正文", name="李四", id_number=VALID_ID),
        "video": Submission("video", "标题", "正文", name="李四", id_number=VALID_ID),
        "national_transfer": Submission("national_transfer", "标题", "正文", channel_ref="GJ-1", phone="13800138000"),
    }
    assert set(minimal) == set(REQUIRED_BY_CHANNEL)
    for submission in minimal.values():
        validate_submission(submission, allowed_regions=LESHAN)


def test_hotline_accepts_a_landline_but_web_does_not() -> None:
    hotline = dataclasses.replace(_complete("hotline"), phone="0833-1234567")
    assert validate_submission(hotline, allowed_regions=LESHAN).phone == "0833-1234567"
    assert _error(dataclasses.replace(_complete("web"), phone="0833-1234567")).field == "phone"


@pytest.mark.parametrize("channel", sorted(CHANNELS))
def test_anonymous_is_allowed_only_on_online_boards(channel: str) -> None:
    anonymous = Submission(channel=channel, title="标题", body="正文", anonymous=True)
    if channel in ANONYMOUS_CHANNELS:
        assert validate_submission(anonymous, allowed_regions=LESHAN).anonymous
    else:
        error = _error(anonymous)
        assert error.field == "anonymous"
        assert error.reason == f"channel {channel} does not accept anonymous submissions"


def test_named_submission_needs_a_phone_or_an_id_number() -> None:
    named = Submission(channel="web", title="标题", body="正文", name="王五")
    assert _error(named).field == "phone"
    assert validate_submission(dataclasses.replace(named, id_number=VALID_ID), allowed_regions=LESHAN)


def test_bad_id_number_and_phone_inside_a_submission_name_their_field() -> None:
    error = _error(dataclasses.replace(_complete("web"), id_number="110105194912310021"))
    assert (error.field, error.reason) == ("id_number", "check digit should be X")
    assert _error(dataclasses.replace(_complete("web"), phone="12345")).field == "phone"


def test_region_must_lie_inside_the_node_subtree() -> None:
    error = _error(dataclasses.replace(_complete("web"), region_code="510104"))
    assert error.field == "region_code"
    assert "outside" in error.reason
    assert _error(dataclasses.replace(_complete("web"), region_code="5111")).field == "region_code"
    no_region = dataclasses.replace(_complete("web"), region_code="")
    assert validate_submission(no_region, allowed_regions=LESHAN).region_code is None


def test_unknown_channel_and_overlong_fields_are_refused() -> None:
    assert _error(dataclasses.replace(_complete("web"), channel="fax")).field == "channel"
    assert _error(dataclasses.replace(_complete("web"), title="题" * 101)).field == "title"
    assert _error(dataclasses.replace(_complete("web"), body="")).field == "body"
    assert _error(dataclasses.replace(_complete("letter"), address="址" * 201)).field == "complainant.address"
