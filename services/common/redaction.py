"""Personal data in responses: a ``Person`` masked (138****5678, 510102********1234, 张*) or cleared,
and phone and ID number fields anywhere in a message. ``security.redact`` decides who sees what.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.message import Message

from services.common.logs import mask_id_number, mask_name, mask_phone

_PERSON = "lianxin.common.v1.Person"


def _mask_person(person: Message, hide: bool) -> None:
    if hide:
        person.Clear()
        return
    for name, masker in (("name", mask_name), ("id_number", mask_id_number), ("phone", mask_phone)):
        value = getattr(person, name, "")
        if value:
            setattr(person, name, masker(value))
    if getattr(person, "address", ""):
        person.address = ""  # type: ignore[attr-defined]


def _repeated(fd: Any) -> bool:
    # protobuf 6+ has ``is_repeated``; ``label`` is gone from the upb descriptors of 7.x.
    is_repeated = getattr(fd, "is_repeated", None)
    return bool(is_repeated) if is_repeated is not None else bool(fd.label == fd.LABEL_REPEATED)


def redact_fields(message: Message, hide: bool) -> None:
    """Mask (or, ``hide``, clear) the personal fields of ``message`` and of every message in it."""
    if message.DESCRIPTOR.full_name == _PERSON:
        _mask_person(message, hide)
        return
    for fd, value in message.ListFields():
        if fd.message_type is not None:
            if fd.message_type.GetOptions().map_entry:
                continue
            items = value if _repeated(fd) else [value]
            for item in items:
                redact_fields(item, hide)
        elif fd.type == fd.TYPE_STRING and not _repeated(fd):
            lowered = fd.name.lower()
            if "phone" in lowered and "last4" not in lowered:
                setattr(message, fd.name, "" if hide else mask_phone(value))
            elif "id_number" in lowered:
                setattr(message, fd.name, "" if hide else mask_id_number(value))
