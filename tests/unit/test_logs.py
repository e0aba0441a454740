"""Personal data is masked in logs and masked views; identifiers stay readable; logs carry trace ids."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import trace

from services.common.logs import (
    JsonFormatter,
    MaskingTextFormatter,
    configure_logging,
    mask_id_number,
    mask_name,
    mask_phone,
    mask_text,
    mask_value,
)
from services.common.telemetry import setup_tracing


def test_phone_keeps_first_three_and_last_four_digits() -> None:
    assert mask_phone("13812345678") == "138****5678"
    assert mask_phone("+8613812345678") == "+86138****5678"


def test_id_number_keeps_region_and_last_four() -> None:
    assert mask_id_number("510102199001011234") == "510102********1234"
    assert mask_id_number("51010219900101123X") == "510102********123X"
    assert mask_id_number("510102900101123") == "510102*****1123"


def test_name_keeps_only_the_family_name() -> None:
    assert mask_name("张三") == "张*"
    assert mask_name("欧阳娜娜") == "欧*"
    assert mask_name("") == ""


def test_phone_and_id_inside_chinese_text_are_masked() -> None:
    text = "市民王五（电话13812345678，身份证号510102199001011234）反映小区噪音，旧证510102900101123。"
    assert mask_text(text) == (
        "市民王五（电话138****5678，身份证号510102********1234）反映小区噪音，旧证510102*****1123。"
    )


def test_separated_and_prefixed_phones_are_masked() -> None:
    assert mask_text("联系 138-1234-5678 或 +86 139 8765 4321") == "联系 138-****-5678 或 +86 139 **** 4321"


@pytest.mark.parametrize(
    "identifier",
    [
        "511102-20261122-000123",  # case id
        "131102-20261122-000123",  # case id of a node whose code starts like a phone
        "K7M2Q-9XH4TR",  # tracking code (services.intake.tracking format)
        "23456-789782",  # tracking code that happens to be all digits
        "LX13812345678A",  # token containing 11 phone-like digits
        "WO-511102-13812345678",  # hyphen-joined identifier segment
        "202611221234567890",  # 18 digits that are not a date-bearing ID number
    ],
)
def test_identifiers_are_not_mangled(identifier: str) -> None:
    assert mask_text(f"案件 {identifier} 已办结") == f"案件 {identifier} 已办结"


def test_person_like_dict_masks_name_but_not_unit_names() -> None:
    person = {"name": "张三", "phone": "13812345678", "id_number": "510102199001011234"}
    assert mask_value(person) == {
        "name": "张*",
        "phone": "138****5678",
        "id_number": "510102********1234",
    }
    unit = {"name": "乐山市信访局", "code": "511100"}
    assert mask_value(unit) == unit
    assert mask_value({"citizen_name": "李四"}) == {"citizen_name": "李*"}


@pytest.fixture
def json_log() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("tests.logs.json")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield logger, stream
    logger.removeHandler(handler)


def _lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_record_masks_message_and_extras(json_log: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = json_log
    logger.info(
        "callback to %s requested",
        "13812345678",
        extra={"contact": "13912345678", "citizen": {"name": "张三", "phone": "13712345678"}, "count": 3},
    )
    (entry,) = _lines(stream)
    assert entry["level"] == "INFO"
    assert entry["logger"] == "tests.logs.json"
    assert entry["msg"] == "callback to 138****5678 requested"
    assert entry["contact"] == "139****5678"
    assert entry["citizen"] == {"name": "张*", "phone": "137****5678"}
    assert entry["count"] == 3
    assert "trace_id" not in entry
    assert "13812345678" not in stream.getvalue()


def test_json_record_has_trace_id_inside_a_span(json_log: tuple[logging.Logger, io.StringIO]) -> None:
    setup_tracing("test", "510000", "memory")
    logger, stream = json_log
    with trace.get_tracer(__name__).start_as_current_span("work") as span:
        logger.info("inside")
    (entry,) = _lines(stream)
    assert entry["trace_id"] == format(span.get_span_context().trace_id, "032x")
    assert entry["span_id"] == format(span.get_span_context().span_id, "016x")


def test_exception_text_is_masked(json_log: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = json_log
    try:
        raise ValueError("bad phone 13812345678")
    except ValueError:
        logger.exception("failed")
    (entry,) = _lines(stream)
    assert "138****5678" in entry["exc"]
    assert "13812345678" not in stream.getvalue()


def test_text_formatter_masks_too() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "id %s", ("510102199001011234",), None)
    assert "510102********1234" in MaskingTextFormatter().format(record)


def test_configure_logging_replaces_its_own_handler() -> None:
    root = logging.getLogger()
    before = list(root.handlers)
    level = root.level
    try:
        first = configure_logging("DEBUG", True)
        second = configure_logging("INFO", False)
        assert first not in root.handlers
        assert second in root.handlers
        assert isinstance(second.formatter, MaskingTextFormatter)
        assert root.level == logging.INFO
    finally:
        for handler in list(root.handlers):
            if handler not in before:
                root.removeHandler(handler)
        root.setLevel(level)
