"""Hypothesis strategies that build any protobuf request from its descriptor, biased towards bad input.

Used by the RPC fuzz tests (tests/integration/test_fuzz_rpcs.py): every field may be unset, empty,
very long, unicode, control characters, look like an ID number or a phone, or be an integer at the
edge of its range, an enum number nobody declared, or a Timestamp outside the range protobuf allows.
Known strings (ids of real cases and work orders) are mixed in so some requests get past lookups.

``wild=False`` keeps Timestamps inside 1970-2100, Durations between one second and ten years, and
enums to declared numbers: for
methods whose handling of those is a known, separately pinned bug, so the rest is still fuzzed.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Any

from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import strategies as st

MAX_DEPTH = 2
LONG = 5_000

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# Timestamp's legal range is 0001-01-01 .. 9999-12-31; the values just outside it, and far beyond,
# are what a converting servicer has to refuse rather than crash on.
TS_MIN, TS_MAX = -62_135_596_800, 253_402_300_799
DURATION_MAX = 315_576_000_000

SPECIAL_STRINGS: tuple[str, ...] = (
    "",
    " ",
    "x" * LONG,
    "长" * LONG,
    "\x00",
    "\x00\x01\x07\x1b[31m\x7f",
    "\r\n\t",
    "\u202e\u200b\ufeff",
    "🙂" * 10,
    "乐山市市中区嘉州大道",
    "环境保护",
    "110101199003077777",  # looks like an ID number
    "11010119900307777X",
    "13812345678",  # looks like a mobile phone
    "1381234567",
    "5678",
    "511102",
    "511100",
    "510000",
    "999999",
    "000000",
    "５１１１０２",  # full-width digits: str.isdigit() says yes, int() agrees, a region table does not
    "٥١١١٠٢",
    "0",
    "-1",
    "99999999999999999999999",
    "1e309",
    "NaN",
    "2027-02-30T25:61:00Z",
    "' OR 1=1 --",
    "%s%n%x",
    "../../../../etc/passwd",
    "${jndi:ldap://x}",
    "None",
    "null",
)

CONTROL_CHARS = st.characters(min_codepoint=0, max_codepoint=0x1F)
CJK = st.characters(min_codepoint=0x4E00, max_codepoint=0x9FFF)


def string_values(known: Sequence[str] = ()) -> st.SearchStrategy[str]:
    """Strings a careless or hostile client might send."""
    choices: list[st.SearchStrategy[str]] = [
        st.sampled_from(SPECIAL_STRINGS),
        st.text(max_size=30),
        st.text(alphabet=CJK, min_size=1, max_size=40),
        st.text(alphabet=CONTROL_CHARS, min_size=1, max_size=8),
        st.from_regex(r"[0-9]{1,20}", fullmatch=True),
        st.from_regex(r"[0-9]{6}-[0-9]{8}-[0-9]{1,8}", fullmatch=True),  # case-id shaped
    ]
    if known:
        # Twice: real ids are what lets a request get past "not found" into the handler's rules.
        choices += [st.sampled_from(tuple(known))] * 2
    return st.one_of(choices)


def _int_values(lo: int, hi: int) -> st.SearchStrategy[int]:
    edges = sorted({v for v in (0, 1, -1, 2, 7, 30, 31, 100, 1000, 10**6, lo, lo + 1, hi - 1, hi) if lo <= v <= hi})
    return st.one_of(st.sampled_from(edges), st.integers(lo, hi))


def _enum_values(field: FieldDescriptor, wild: bool) -> st.SearchStrategy[int]:
    assert field.enum_type is not None
    declared = [v.number for v in field.enum_type.values]
    if not wild:
        return st.sampled_from(declared)
    # proto3 enums are open: a newer client may send numbers this server has never heard of.
    undeclared = [-1, max(declared) + 1, 99, INT32_MAX, INT32_MIN]
    return st.sampled_from(declared + undeclared)


SANE_SECONDS = 4_102_444_800  # 2100-01-01


def _timestamp_parts(wild: bool) -> st.SearchStrategy[tuple[int, int]]:
    if not wild:
        return st.tuples(st.integers(0, SANE_SECONDS), st.integers(0, 10**9 - 1))
    seconds = st.one_of(
        st.sampled_from((0, -1, TS_MIN, TS_MAX, TS_MIN - 1, TS_MAX + 1, 2**62, -(2**62), INT64_MAX, INT64_MIN)),
        st.integers(1_600_000_000, 1_900_000_000),  # around now: the likely-valid case
        st.integers(TS_MIN, TS_MAX),
    )
    nanos = st.one_of(
        st.sampled_from((0, 999_999_999, 1_000_000_000, -1, INT32_MAX, INT32_MIN)), st.integers(0, 10**9 - 1)
    )
    return st.tuples(seconds, nanos)


def _duration_parts(wild: bool) -> st.SearchStrategy[tuple[int, int]]:
    if not wild:
        return st.tuples(st.integers(1, 10 * 366 * 86_400), st.integers(0, 10**9 - 1))
    seconds = st.one_of(
        st.sampled_from(
            (0, 1, -1, 3600, 86_400, 30 * 86_400, DURATION_MAX, DURATION_MAX + 1, -DURATION_MAX - 1, INT64_MAX)
        ),
        st.integers(-(10**9), 10**9),
    )
    nanos = st.sampled_from((0, 1, -1, 999_999_999, 1_000_000_000, INT32_MIN))
    return st.tuples(seconds, nanos)


def _build_well_known(descriptor: Descriptor, parts: tuple[int, int]) -> Message:
    msg: Message = message_factory.GetMessageClass(descriptor)()
    seconds, nanos = parts
    msg.seconds = seconds  # type: ignore[attr-defined]
    msg.nanos = nanos  # type: ignore[attr-defined]
    return msg


def _single_value(field: FieldDescriptor, known: tuple[str, ...], depth: int, wild: bool) -> st.SearchStrategy[Any]:
    t = field.type
    if t == FieldDescriptor.TYPE_STRING:
        return string_values(known)
    if t == FieldDescriptor.TYPE_BYTES:
        return st.one_of(st.just(b""), st.binary(max_size=64), st.just(b"\x00" * LONG), st.just(b"\xff\xfe{"))
    if t == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if t == FieldDescriptor.TYPE_ENUM:
        return _enum_values(field, wild)
    if t in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SFIXED32):
        return _int_values(INT32_MIN, INT32_MAX)
    if t in (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64, FieldDescriptor.TYPE_SFIXED64):
        return _int_values(INT64_MIN, INT64_MAX)
    if t in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32):
        return _int_values(0, 2**32 - 1)
    if t in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64):
        return _int_values(0, 2**64 - 1)
    if t in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        return st.one_of(st.sampled_from((0.0, -1.0, float("nan"), float("inf"), float("-inf"), 1e308)), st.floats())
    if t == FieldDescriptor.TYPE_MESSAGE:
        return message_strategy(field.message_type, known=known, depth=depth + 1, wild=wild)
    raise NotImplementedError(f"no strategy for field type {t} ({field.full_name})")


def field_values(
    field: FieldDescriptor, known: tuple[str, ...] = (), depth: int = 0, *, wild: bool = True
) -> st.SearchStrategy[Any]:
    """Values for one field: a single value, or a list of 0-3 values for a repeated field."""
    single = _single_value(field, known, depth, wild)
    if _is_repeated(field):
        return st.lists(single, max_size=3)
    return single


def _is_repeated(field: FieldDescriptor) -> bool:
    return bool(field.is_repeated)


def assign(msg: Message, field: FieldDescriptor, value: Any) -> None:
    """Set ``field`` of ``msg`` to ``value`` as drawn from :func:`field_values`."""
    if _is_repeated(field):
        target = getattr(msg, field.name)
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            for item in value:
                target.add().CopyFrom(item)
        else:
            target.extend(value)
    elif field.type == FieldDescriptor.TYPE_MESSAGE:
        getattr(msg, field.name).CopyFrom(value)
    else:
        setattr(msg, field.name, value)


def build_message(descriptor: Descriptor, values: dict[str, Any]) -> Message:
    """A message of ``descriptor``'s type with the drawn ``values`` set (unset fields stay default)."""
    msg: Message = message_factory.GetMessageClass(descriptor)()
    for name, value in values.items():
        assign(msg, descriptor.fields_by_name[name], value)
    return msg


@cache
def message_strategy(
    descriptor: Descriptor, *, known: tuple[str, ...] = (), depth: int = 0, wild: bool = True
) -> st.SearchStrategy[Message]:
    """Any message of ``descriptor``'s type: each field unset or set to an awkward value.

    Nested messages are filled down to ``MAX_DEPTH`` levels; deeper ones are left empty.
    """
    if descriptor.full_name == "google.protobuf.Timestamp":
        return _timestamp_parts(wild).map(lambda parts: _build_well_known(descriptor, parts))
    if descriptor.full_name == "google.protobuf.Duration":
        return _duration_parts(wild).map(lambda parts: _build_well_known(descriptor, parts))
    empty: Message = message_factory.GetMessageClass(descriptor)()
    if depth > MAX_DEPTH:
        return st.just(empty)
    optional = {f.name: field_values(f, known, depth, wild=wild) for f in descriptor.fields}
    return st.fixed_dictionaries({}, optional=optional).map(lambda values: build_message(descriptor, values))
