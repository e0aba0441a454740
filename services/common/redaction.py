"""Personal data in responses: a ``Person`` masked (138****5678, 510102********1234, 张*) or cleared,
and phone and ID number fields anywhere in a message. ``security.redact`` decides who sees what.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
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


@dataclass(frozen=True)
class _Plan:
    """Where personal data can sit in one message type: worked out once per type, not per response.

    The walk over every set field of every response (``ListFields``, a descriptor option read per
    field) was about a quarter of what a GetCase cost the node after the interceptors were merged
    (issue 17); most of a response's types can hold no personal data at all and are now skipped.
    """

    person: bool
    phones: tuple[str, ...]  # singular string fields masked as phones
    id_numbers: tuple[str, ...]  # singular string fields masked as ID numbers
    singular: tuple[tuple[str, _Plan], ...]  # message fields (presence checked) that can hold some
    repeated: tuple[tuple[str, _Plan], ...]  # repeated message fields that can hold some


_PLANS: dict[str, _Plan | None] = {}
_PLANS_LOCK = threading.Lock()


def _plan(descriptor: Any) -> _Plan | None:
    """The plan of a message type, or None when it (and all it contains) can hold no personal data."""
    try:
        return _PLANS[descriptor.full_name]
    except KeyError:
        pass
    with _PLANS_LOCK:
        return _plan_of(descriptor, set())


def _plan_of(descriptor: Any, visiting: set[str]) -> _Plan | None:
    name = descriptor.full_name
    if name in _PLANS:
        return _PLANS[name]
    if name == _PERSON:
        plan: _Plan | None = _Plan(True, (), (), (), ())
        _PLANS[name] = plan
        return plan
    if name in visiting:
        # A type that contains itself: walked as the generic code did, field by field at run time.
        return _RECURSIVE
    visiting.add(name)
    phones: list[str] = []
    id_numbers: list[str] = []
    singular: list[tuple[str, _Plan]] = []
    repeated: list[tuple[str, _Plan]] = []
    for fd in descriptor.fields:
        if fd.message_type is not None:
            if fd.message_type.GetOptions().map_entry:
                continue
            inner = _plan_of(fd.message_type, visiting)
            if inner is not None:
                (repeated if _repeated(fd) else singular).append((fd.name, inner))
        elif fd.type == fd.TYPE_STRING and not _repeated(fd):
            lowered = fd.name.lower()
            if "phone" in lowered and "last4" not in lowered:
                phones.append(fd.name)
            elif "id_number" in lowered:
                id_numbers.append(fd.name)
    visiting.discard(name)
    plan = _Plan(False, tuple(phones), tuple(id_numbers), tuple(singular), tuple(repeated))
    if not (phones or id_numbers or singular or repeated):
        plan = None
    _PLANS[name] = plan
    return plan


# Marks a field whose type is still being planned (a recursive type): redacted by the generic walk.
_RECURSIVE = _Plan(False, (), (), (), ())


def redact_fields(message: Message, hide: bool) -> None:
    """Mask (or, ``hide``, clear) the personal fields of ``message`` and of every message in it."""
    plan = _plan(message.DESCRIPTOR)
    if plan is not None:
        _apply(message, plan, hide)


def _apply(message: Message, plan: _Plan, hide: bool) -> None:
    if plan is _RECURSIVE:
        _walk(message, hide)
        return
    if plan.person:
        _mask_person(message, hide)
        return
    for name in plan.phones:
        value = getattr(message, name)
        if value:
            setattr(message, name, "" if hide else mask_phone(value))
    for name in plan.id_numbers:
        value = getattr(message, name)
        if value:
            setattr(message, name, "" if hide else mask_id_number(value))
    for name, inner in plan.singular:
        if message.HasField(name):
            _apply(getattr(message, name), inner, hide)
    for name, inner in plan.repeated:
        for item in getattr(message, name):
            _apply(item, inner, hide)


def _walk(message: Message, hide: bool) -> None:
    """Every set field at run time: for types that contain themselves (none of the API's today)."""
    if message.DESCRIPTOR.full_name == _PERSON:
        _mask_person(message, hide)
        return
    for fd, value in message.ListFields():
        if fd.message_type is not None:
            if fd.message_type.GetOptions().map_entry:
                continue
            items = value if _repeated(fd) else [value]
            for item in items:
                _walk(item, hide)
        elif fd.type == fd.TYPE_STRING and not _repeated(fd):
            lowered = fd.name.lower()
            if "phone" in lowered and "last4" not in lowered:
                setattr(message, fd.name, "" if hide else mask_phone(value))
            elif "id_number" in lowered:
                setattr(message, fd.name, "" if hide else mask_id_number(value))
