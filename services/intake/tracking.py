"""Tracking codes (查询码) that citizens read, type and say over the phone to follow their case.

A code is 10 random characters from a 32-letter alphabet without 0/O/1/I, plus one check
character, shown as ``XXXXX-XXXXXX``. The 50 random bits make codes unguessable (a code alone
shows a case's progress, so it must not be enumerable); the check character lets the front end
reject a mistyped code before any database lookup.

Check character: the code is read as a polynomial over GF(32) and the check makes
``sum(v_i * x^(n-i)) == 0`` (Horner with multiplication by x, modulo x^5 + x^2 + 1). Because
x has multiplicative order 31 (a prime), every single substitution and every transposition of
two characters fewer than 31 places apart (so every adjacent swap) changes the sum. This is
Damm's construction over the quasigroup a∘b = x·a + b; a plain weighted sum mod 31 would miss
swaps between the 1st and 32nd letters.
"""

from __future__ import annotations

import re
import secrets

ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZ"
RANDOM_LENGTH = 10
CODE_LENGTH = RANDOM_LENGTH + 1
_GROUPS = (5, 6)  # ``ABCDE-FGHJKL``: two chunks a person can hold in mind while typing
_VALUE = {char: index for index, char in enumerate(ALPHABET)}
_POLY = 0b100101  # x^5 + x^2 + 1, primitive, so x generates all 31 non-zero elements
_IGNORED = re.compile(r"[\s\-_.·—]")

assert len(ALPHABET) == 32 and len(set(ALPHABET)) == 32  # the field arithmetic relies on it


def _times_x(value: int) -> int:
    value <<= 1
    return value ^ _POLY if value & 0b100000 else value


def _remainder(chars: str) -> int:
    acc = 0
    for char in chars:
        acc = _times_x(acc) ^ _VALUE[char]
    return acc


def check_character(payload: str) -> str:
    """The check character for 10 alphabet characters (upper case, no separators)."""
    # Appending c turns the remainder r into x·r + c; c = x·r makes it zero (addition is XOR).
    return ALPHABET[_times_x(_remainder(payload))]


def _format(compact: str) -> str:
    head = _GROUPS[0]
    return f"{compact[:head]}-{compact[head:]}"


def new_tracking_code() -> str:
    """A fresh random code in its display form, for example ``7KQ2M-XH4PZD``."""
    # 32 letters: the low 5 bits of a random byte pick one uniformly (one urandom call, not ten).
    payload = "".join(ALPHABET[byte & 31] for byte in secrets.token_bytes(RANDOM_LENGTH))
    return _format(payload + check_character(payload))


def _compact(code: str) -> str:
    return _IGNORED.sub("", code).upper()


def is_valid_tracking_code(code: str) -> bool:
    """True when the code has the right length, alphabet and check character (case and dashes ignored)."""
    compact = _compact(code)
    if len(compact) != CODE_LENGTH or any(char not in _VALUE for char in compact):
        return False
    return _remainder(compact) == 0


def normalise_tracking_code(code: str) -> str:
    """The canonical display form (``XXXXX-XXXXXX``, stored and looked up as such); ValueError if invalid."""
    if not is_valid_tracking_code(code):
        raise ValueError(f"not a valid tracking code: {code!r}")
    return _format(_compact(code))
