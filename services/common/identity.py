"""Identity formats shared by every service: the resident ID number (GB 11643) and mainland phone numbers.

Intake validates a complainant with these and video a visit's representatives; keeping one rule here
means a number one service accepts is never refused by another.
"""

from __future__ import annotations

import datetime as dt
import re

from services.common.errors import InvalidArgument
from services.common.personal_text import id_check_character

_EARLIEST_BIRTH = dt.date(1900, 1, 1)

_MOBILE = re.compile(r"1[3-9]\d{9}")
# Area code 0 + 2–3 digits, subscriber number 7–8 digits (010-12345678, 0833-1234567).
_LANDLINE = re.compile(r"(0\d{2,3})-?(\d{7,8})")
_SEPARATORS = re.compile(r"[\s\-()（）]")


def check_id_number(value: str, *, field: str = "id_number", today: dt.date | None = None) -> str:
    """Return the resident ID number (GB 11643) trimmed with upper-case X, or raise InvalidArgument."""
    number = value.strip().upper()
    if len(number) != 18:
        raise InvalidArgument(field, f"must be 18 characters, got {len(number)}")
    if not number[:17].isdigit() or not (number[17].isdigit() or number[17] == "X"):
        raise InvalidArgument(field, "must be 17 digits followed by a digit or X")
    if number[0] == "0":
        # Region prefixes (GB/T 2260) start with a province digit 1–9.
        raise InvalidArgument(field, f"region prefix {number[:6]} is not a region code")
    try:
        birth = dt.date(int(number[6:10]), int(number[10:12]), int(number[12:14]))
    except ValueError:
        raise InvalidArgument(field, f"birth date {number[6:14]} is not a valid date") from None
    if not _EARLIEST_BIRTH <= birth <= (today or dt.date.today()):
        raise InvalidArgument(field, f"birth date {number[6:14]} is out of range")
    expected = id_check_character(number[:17])
    if number[17] != expected:
        raise InvalidArgument(field, f"check digit should be {expected}")
    return number


def check_phone(value: str, *, field: str = "phone", landline: bool = False) -> str:
    """Return a mainland mobile number (11 digits) or, when ``landline``, ``0833-1234567``; else raise.

    Landlines are accepted only where a caller's line is recorded (12345 hotline); online channels
    send SMS notices and need a mobile.
    """
    compact = _SEPARATORS.sub("", value.strip())
    if compact.startswith("+86"):
        compact = compact[3:]
    elif compact.startswith("0086"):
        compact = compact[4:]
    if _MOBILE.fullmatch(compact):
        return compact
    if landline:
        match = _LANDLINE.fullmatch(re.sub(r"\s", "", value))
        if match:
            # Without the caller's dash the split between a 3- and 4-digit area code is a guess,
            # so only a number typed with its dash is stored split.
            return f"{match.group(1)}-{match.group(2)}" if "-" in value else match.group(0)
        raise InvalidArgument(
            field, "must be a mainland mobile number (1[3-9] + 9 digits) or a landline like 0833-1234567"
        )
    raise InvalidArgument(field, "must be a mainland mobile number: 11 digits starting 13–19")
