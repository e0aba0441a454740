"""Personal data masked by a plan per message type (services/common/redaction.py) exactly as the
field-by-field walk did: every message type of the API, filled with phone numbers, ID numbers and
names at every depth, comes out the same both ways, for the masked and the hidden view."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterator
from typing import Any

import lianxin
import pytest
from google.protobuf.message import Message

from services.common import redaction

PHONE = "13812345678"
ID_NUMBER = "110105199001010021"


def _modules() -> Iterator[Any]:
    for info in pkgutil.walk_packages(lianxin.__path__, "lianxin."):
        if info.name.endswith("_pb2"):
            yield importlib.import_module(info.name)


def _types(descriptor: Any) -> Iterator[Any]:
    yield descriptor
    for nested in descriptor.nested_types:
        yield from _types(nested)


def message_types() -> list[Any]:
    found = {}
    for module in _modules():
        for descriptor in module.DESCRIPTOR.message_types_by_name.values():
            for each in _types(descriptor):
                if not each.GetOptions().map_entry:
                    found[each.full_name] = each
    return [found[name] for name in sorted(found)]


def _fill(message: Message, depth: int = 0) -> None:
    """Every singular string a phone, an ID number or a name; every message field set, repeated ones twice."""
    for fd in message.DESCRIPTOR.fields:
        repeated = redaction._repeated(fd)
        if fd.message_type is not None:
            if fd.message_type.GetOptions().map_entry or depth > 3 or fd.message_type.full_name.startswith("google."):
                continue
            if repeated:
                for _ in range(2):
                    _fill(getattr(message, fd.name).add(), depth + 1)
            else:
                _fill(getattr(message, fd.name), depth + 1)
                if not message.HasField(fd.name):
                    getattr(message, fd.name).SetInParent()
        elif fd.type == fd.TYPE_STRING:
            value = ID_NUMBER if "id" in fd.name else PHONE if depth % 2 == 0 else f"张三 {PHONE}"
            if repeated:
                getattr(message, fd.name).extend([value, value])
            else:
                setattr(message, fd.name, value)


TYPES = message_types()


@pytest.mark.parametrize("hide", [False, True])
def test_every_api_message_is_masked_as_the_field_walk_masked_it(hide: bool) -> None:
    changed = 0
    for descriptor in TYPES:
        cls: Any = importlib.import_module(descriptor.file.name.replace("/", ".").removesuffix(".proto") + "_pb2")
        for part in descriptor.full_name.removeprefix(descriptor.file.package + ".").split("."):
            cls = getattr(cls, part)
        original = cls()
        _fill(original)
        planned, walked = cls(), cls()
        planned.CopyFrom(original)
        walked.CopyFrom(original)
        redaction.redact_fields(planned, hide)
        redaction._walk(walked, hide)
        assert planned == walked, descriptor.full_name
        changed += planned != original
    assert len(TYPES) > 250 and changed >= 20, (len(TYPES), changed)  # the API's types, really filled and masked


def test_a_person_and_a_nested_phone_are_masked_and_a_type_without_personal_data_is_left_alone() -> None:
    from lianxin.common.v1 import common_pb2
    from lianxin.intake.v1 import intake_service_pb2 as intake_pb2

    person = common_pb2.Person(name="张三", phone=PHONE, id_number=ID_NUMBER, address="某街 1 号")
    redaction.redact_fields(person, False)
    assert (person.name, person.phone, person.id_number, person.address) == (
        "张*",
        "138****5678",
        "110105********0021",
        "",
    )
    request = intake_pb2.TrackCaseRequest(tracking_code="ABC", phone_last4="5678")
    redaction.redact_fields(request, True)
    assert request.phone_last4 == "5678"  # the last four digits are not a phone number
