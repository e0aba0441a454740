"""Structured JSON logs with trace ids, and the personal-data masking shared by logs and masked API views."""

from __future__ import annotations

import json as jsonlib
import logging
import re
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from services.common.telemetry import current_span_id, current_trace_id

# Identifiers such as case ids (511102-20261122-000123) are digit groups joined by hyphens; a number
# that touches a letter, a digit or such a hyphen-joined group is part of an identifier, not a phone
# or ID number. Chinese characters around a number are ordinary text, so ``\w`` is not used.
_BEFORE = r"(?<![0-9A-Za-z])(?<![0-9A-Za-z]-)"
_AFTER = r"(?![0-9A-Za-z])(?!-[0-9A-Za-z])"

_MONTH = r"(?:0[1-9]|1[0-2])"
_DAY = r"(?:0[1-9]|[12]\d|3[01])"
# The birth date inside an ID number must look like a date, which keeps other 15/18-digit numbers
# (order numbers, timestamps) readable.
_ID18 = re.compile(_BEFORE + rf"(\d{{6}})(?:18|19|20)\d{{2}}{_MONTH}{_DAY}\d{{3}}[0-9Xx]" + _AFTER)
_ID15 = re.compile(_BEFORE + rf"(\d{{6}})\d{{2}}{_MONTH}{_DAY}\d{{3}}" + _AFTER)
_PHONE = re.compile(
    _BEFORE + r"((?:\+|00)?86[- ]?)?(1[3-9]\d)([- ]?)(\d{4})\3(\d{4})" + _AFTER,
)

# Keys whose presence makes a dict describe a person, so its ``name`` is a person's name.
_PERSON_KEYS = frozenset({"phone", "mobile", "id_number", "id_card", "address", "gender", "birthday"})
# Keys that always hold a person's name, whatever else the dict holds.
_NAME_KEYS = frozenset({"citizen_name", "person_name", "complainant_name", "contact_name", "real_name"})


def mask_phone(phone: str) -> str:
    """``13812345678`` → ``138****5678``; a country prefix (``+86``) is kept; short numbers become stars."""
    digits = re.sub(r"[\s-]", "", phone)
    prefix = ""
    for country in ("+86", "0086"):
        if digits.startswith(country) and len(digits) == len(country) + 11:
            prefix, digits = country, digits[len(country) :]
    if len(digits) < 7:
        return "*" * len(digits)
    return f"{prefix}{digits[:3]}{'*' * (len(digits) - 7)}{digits[-4:]}"


def mask_id_number(id_number: str) -> str:
    """``510102199001011234`` → ``510102********1234`` (first 6 and last 4 kept, length kept)."""
    value = id_number.strip()
    if len(value) >= 15:
        return f"{value[:6]}{'*' * (len(value) - 10)}{value[-4:]}"
    if len(value) > 4:
        return f"{'*' * (len(value) - 4)}{value[-4:]}"
    return "*" * len(value)


def mask_name(name: str) -> str:
    """``张三`` → ``张*``: one star whatever the length, so the length does not give the name away."""
    value = name.strip()
    return f"{value[0]}*" if value else ""


def _mask_phone_match(match: re.Match[str]) -> str:
    prefix, head, sep, _middle, tail = match.groups()
    return f"{prefix or ''}{head}{sep}****{sep}{tail}"


def _mask_id_match(match: re.Match[str]) -> str:
    return mask_id_number(match.group(0))


def mask_text(text: str) -> str:
    """Mask every mainland mobile number and 15/18-digit ID number inside free text."""
    if not any(ch.isdigit() for ch in text):
        return text
    text = _ID18.sub(_mask_id_match, text)
    text = _ID15.sub(_mask_id_match, text)
    return _PHONE.sub(_mask_phone_match, text)


def mask_value(value: Any, key: str | None = None) -> Any:
    """A JSON-ready copy of ``value`` with personal data masked (strings, nested dicts and lists)."""
    if isinstance(value, str):
        return mask_name(value) if key in _NAME_KEYS else mask_text(value)
    if isinstance(value, bool) or value is None or isinstance(value, float):
        return value
    if isinstance(value, int):
        # A phone or ID number stored as an int would otherwise slip through unmasked.
        as_text = str(value)
        masked = mask_text(as_text)
        return value if masked == as_text else masked
    if isinstance(value, Mapping):
        person = bool(_PERSON_KEYS.intersection(str(k) for k in value))
        out: dict[str, Any] = {}
        for k, v in value.items():
            name = str(k)
            if person and name == "name" and isinstance(v, str):
                out[name] = mask_name(v)
            else:
                out[name] = mask_value(v, name)
        return out
    if isinstance(value, list | tuple | set | frozenset):
        return [mask_value(item) for item in value]
    return mask_text(str(value))


# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, trace_id/span_id in a span, extras; all masked."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": mask_text(record.getMessage()),
        }
        trace_id = getattr(record, "trace_id", None) or current_trace_id()
        if trace_id:
            entry["trace_id"] = trace_id
            span_id = getattr(record, "span_id", None) or current_span_id()
            if span_id:
                entry["span_id"] = span_id
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRS and key not in entry and not key.startswith("_"):
                entry[key] = mask_value(value, key)
        if record.exc_info:
            entry["exc"] = mask_text(self.formatException(record.exc_info))
        if record.stack_info:
            entry["stack"] = mask_text(self.formatStack(record.stack_info))
        return jsonlib.dumps(entry, ensure_ascii=False, default=str)


class MaskingTextFormatter(logging.Formatter):
    """Human-readable lines for development, masked like the JSON ones."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = mask_text(super().format(record))
        trace_id = current_trace_id()
        return f"{line} trace_id={trace_id}" if trace_id else line


class _LianxinHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks the handler ``configure_logging`` installed, so calling it again replaces it."""


def configure_logging(level: str = "INFO", json: bool = True) -> logging.Handler:
    """Send the root logger to stderr as masked JSON lines (or masked text when ``json`` is False)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _LianxinHandler):
            root.removeHandler(handler)
    handler = _LianxinHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json else MaskingTextFormatter())
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Alembic narrates every migration step at INFO; operators only need to hear about failures.
    logging.getLogger("alembic").setLevel(max(logging.WARNING, root.level))
    return handler
