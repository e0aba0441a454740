"""The contract's input rules, checked once for every request at the gRPC edge: string lengths and characters.

The rules live in the proto files (``lianxin.common.v1.max_chars`` / ``multiline`` field options,
described in common.proto) and are read from the generated descriptors, so a field added to the
contract is covered without touching this module. A string without options is an identifier or a
code: one line, at most ``DEFAULT_MAX_CHARS``. No string may carry control characters: NUL made
PostgreSQL fail where SQLite stored it, and escape sequences end up in operators' terminals and logs.

``RequestRulesInterceptor`` applies the rules to every business RPC after authentication, masks the
personal data in an operator's free text (``mask_free_text``), and refuses a citizen's (public)
request larger than ``PUBLIC_MAX_BYTES`` before it is even parsed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from typing import Any

import grpc
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from lianxin.common.v1 import common_pb2

from services.common import personal_text
from services.common.errors import InvalidArgument, ResourceExhausted
from services.common.server_calls import MethodInterceptor

DEFAULT_MAX_CHARS = 64
# A citizen's largest legitimate request (SubmitCase: 4,000 characters of body at 3 bytes each, a
# title, an address and a person) is under 16 KiB; node-to-node batches keep the server's 16 MiB.
PUBLIC_MAX_BYTES = 64 * 1024

# Request streams whose servicer answers every row, a bad one with its field and reason.
ROW_ANSWERED: frozenset[str] = frozenset({"lianxin.intake.v1.IntakeService/ImportCases"})

# Methods whose free text is only analysed and answered, never stored: their text is not masked.
ANALYSED_ONLY: frozenset[str] = frozenset(
    {"lianxin.intake.v1.IntakeService/ClassifyText", "lianxin.intake.v1.IntakeService/LocateText"}
)

# C0 controls, DEL and C1 controls; a multiline field keeps tab, line feed and carriage return.
_ONE_LINE_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_MULTILINE_FORBIDDEN = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


@dataclass(frozen=True)
class StringRule:
    """What one string field accepts."""

    max_chars: int
    multiline: bool

    def problem(self, value: str) -> str | None:
        """Why ``value`` breaks the rule (never quoting it: it may be personal data), or None."""
        if len(value) > self.max_chars:
            return f"must be at most {self.max_chars} characters, got {len(value)}"
        forbidden = (_MULTILINE_FORBIDDEN if self.multiline else _ONE_LINE_FORBIDDEN).search(value)
        if forbidden is not None:
            what = "control characters" if self.multiline else "control characters or line breaks"
            return f"must not contain {what} (U+{ord(forbidden.group()):04X} at position {forbidden.start()})"
        return None


DEFAULT_RULE = StringRule(DEFAULT_MAX_CHARS, multiline=False)


@cache
def string_rule(field: FieldDescriptor) -> StringRule:
    """The rule the contract gives ``field`` (a string field)."""
    options = field.GetOptions()
    max_chars = options.Extensions[common_pb2.max_chars] if options.HasExtension(common_pb2.max_chars) else 0
    multiline = bool(options.Extensions[common_pb2.multiline])
    return StringRule(int(max_chars) or DEFAULT_MAX_CHARS, multiline)


_INTEGER_TYPES = frozenset(
    {
        FieldDescriptor.CPPTYPE_INT32,
        FieldDescriptor.CPPTYPE_INT64,
        FieldDescriptor.CPPTYPE_UINT32,
        FieldDescriptor.CPPTYPE_UINT64,
    }
)


@cache
def min_value(field: FieldDescriptor) -> int | None:
    """The smallest value the contract lets an integer ``field`` take, or None for any."""
    options = field.GetOptions()
    return int(options.Extensions[common_pb2.min_value]) if options.HasExtension(common_pb2.min_value) else None


def _check_string(path: str, value: str, rule: StringRule) -> None:
    problem = rule.problem(value)
    if problem is not None:
        raise InvalidArgument(path, problem)


def check_request(message: Message, prefix: str = "") -> None:
    """Raise ``InvalidArgument(field path, reason)`` for the first string in ``message`` breaking its rule.

    Only set fields are visited, so an empty request costs nothing.
    """
    for field, value in message.ListFields():
        path = f"{prefix}{field.name}"
        if field.type == FieldDescriptor.TYPE_STRING:
            rule = string_rule(field)
            if field.is_repeated:
                for index, item in enumerate(value):
                    _check_string(f"{path}[{index}]", item, rule)
            else:
                _check_string(path, value, rule)
        elif field.cpp_type in _INTEGER_TYPES:
            minimum = min_value(field)
            if minimum is not None:
                for index, number in enumerate(value if field.is_repeated else [value]):
                    if number < minimum:
                        where = f"{path}[{index}]" if field.is_repeated else path
                        raise InvalidArgument(where, f"must be at least {minimum}, got {number}")
        elif field.message_type is not None:
            if field.message_type.GetOptions().map_entry:
                _check_map(path, value)
            elif field.is_repeated:
                for index, item in enumerate(value):
                    check_request(item, f"{path}[{index}].")
            else:
                check_request(value, f"{path}.")


def mask_free_text(message: Message) -> None:
    """Mask the personal data in every free-text (multiline) field of an operator's request, in place.

    Operators copy what citizens tell them into notes, replies, 督办 demands and video minutes
    ("联系人赵大海，电话13700137000"). The handler, and so every table, event, replica, log and span
    after it, only ever sees the masked text (services.common.personal_text: 赵**, *******7000);
    the complainant's data stays where it belongs, sealed with the case.
    """
    for field, value in message.ListFields():
        if field.type == FieldDescriptor.TYPE_STRING and string_rule(field).multiline:
            if field.is_repeated:
                value[:] = [personal_text.mask(item).text for item in value]
            else:
                masked = personal_text.mask(value)
                if masked.changed:
                    setattr(message, field.name, masked.text)
        elif field.message_type is not None and not field.message_type.GetOptions().map_entry:
            for item in value if field.is_repeated else [value]:
                mask_free_text(item)


def _check_map(path: str, entries: Any) -> None:
    for key, item in entries.items():
        if isinstance(key, str):
            _check_string(f"{path}.key", key, DEFAULT_RULE)
        if isinstance(item, str):
            _check_string(f"{path}[{key}]", item, DEFAULT_RULE)
        elif isinstance(item, Message):
            check_request(item, f"{path}[{key}].")


# --------------------------------------------------------------------------- the interceptor

Behavior = Callable[[Any, grpc.ServicerContext], Any]


class _Oversized:
    """Stands in for a public request too large to parse; the handler wrapper refuses it."""

    def __init__(self, size: int) -> None:
        self.size = size


def _refuse_oversized(request: Any) -> None:
    if isinstance(request, _Oversized):
        raise ResourceExhausted(
            f"request is {request.size} bytes; public methods accept at most {PUBLIC_MAX_BYTES} bytes"
        )


def _checked(request: Any) -> Any:
    _refuse_oversized(request)
    if isinstance(request, Message):
        check_request(request)
    return request


def _checked_and_masked(request: Any) -> Any:
    checked = _checked(request)
    if isinstance(checked, Message):
        mask_free_text(checked)
    return checked


def _checked_stream(requests: Iterable[Any]) -> Iterator[Any]:
    for request in requests:
        yield _checked(request)


def _unchecked_stream(requests: Iterable[Any]) -> Iterator[Any]:
    for request in requests:
        _refuse_oversized(request)
        yield request


def _limited(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None
    parse = deserializer

    def deserialize(data: bytes) -> Any:
        # Raising here would answer INTERNAL; the sentinel becomes RESOURCE_EXHAUSTED in the handler.
        return _Oversized(len(data)) if len(data) > PUBLIC_MAX_BYTES else parse(data)

    return deserialize


class RequestRulesInterceptor(MethodInterceptor):
    """Checks every request of the ``lianxin.*`` services against the contract before its handler.

    Innermost in the chain: the caller is authenticated (and rate limited) first, and a refusal
    raises ``InvalidArgument`` into the error interceptor like any handler's refusal would.
    """

    def __init__(self, public_methods: Collection[str], row_answered: Collection[str] = ROW_ANSWERED) -> None:
        self._public = frozenset(public_methods)
        self._row_answered = frozenset(row_answered)

    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        full = method.lstrip("/")
        if not full.startswith("lianxin."):
            return handler
        deserializer = handler.request_deserializer
        if full in self._public:
            deserializer = _limited(deserializer)
        # The servicer of a row-answered stream checks each row itself (check_request) and answers
        # a bad row in the stream, so one bad row of an import does not end the import.
        rows = _checked_stream if full not in self._row_answered else _unchecked_stream
        kind = f"{_arity(handler.request_streaming)}_{_arity(handler.response_streaming)}"
        inner = getattr(handler, kind)
        # An operator's free text is masked here; a citizen's is sealed and masked by intake itself,
        # and text that is only analysed (ClassifyText, LocateText) is stored nowhere.
        one = _checked if full in self._public or full in ANALYSED_ONLY else _checked_and_masked
        check: Callable[[Any], Any] = rows if handler.request_streaming else one
        make_handler = getattr(grpc, f"{kind}_rpc_method_handler")
        rebuilt: grpc.RpcMethodHandler = make_handler(
            lambda request, context: inner(check(request), context),
            request_deserializer=deserializer,
            response_serializer=handler.response_serializer,
        )
        return rebuilt


def _arity(streaming: bool) -> str:
    return "stream" if streaming else "unary"
