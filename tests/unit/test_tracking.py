from __future__ import annotations

import random

import pytest

from services.intake.tracking import (
    ALPHABET,
    is_valid_tracking_code,
    new_tracking_code,
    normalise_tracking_code,
)


def test_alphabet_has_32_unambiguous_characters() -> None:
    assert len(ALPHABET) == len(set(ALPHABET)) == 32
    assert not set("01OI") & set(ALPHABET)


def test_new_codes_are_valid_and_formatted_for_humans() -> None:
    code = new_tracking_code()
    assert len(code) == 12 and code[5] == "-"
    assert set(code.replace("-", "")) <= set(ALPHABET)
    assert is_valid_tracking_code(code)


def test_check_character_detects_every_single_substitution() -> None:
    for _ in range(200):
        compact = new_tracking_code().replace("-", "")
        for position in range(len(compact)):
            for char in ALPHABET:
                if char != compact[position]:
                    typo = compact[:position] + char + compact[position + 1 :]
                    assert not is_valid_tracking_code(typo), typo


def test_check_character_detects_every_adjacent_transposition() -> None:
    for _ in range(500):
        compact = new_tracking_code().replace("-", "")
        for position in range(len(compact) - 1):
            a, b = compact[position], compact[position + 1]
            if a != b:
                swapped = compact[:position] + b + a + compact[position + 2 :]
                assert not is_valid_tracking_code(swapped), swapped


def test_codes_are_read_tolerantly() -> None:
    code = new_tracking_code()
    typed = f"  {code.lower().replace('-', ' ')} "
    assert is_valid_tracking_code(typed)
    assert normalise_tracking_code(typed) == code
    assert normalise_tracking_code(code.replace("-", "")) == code


@pytest.mark.parametrize("bad", ["", "ABCDE", "0BCDE-FGHJKL", "ABCDE-FGHJKLM", "ABCDE-FGHJK!"])
def test_malformed_codes_are_rejected_before_any_lookup(bad: str) -> None:
    assert not is_valid_tracking_code(bad)
    with pytest.raises(ValueError):
        normalise_tracking_code(bad)


def test_random_strings_rarely_pass_the_check() -> None:
    rng = random.Random(7)
    passed = sum(is_valid_tracking_code("".join(rng.choice(ALPHABET) for _ in range(11))) for _ in range(32_000))
    assert passed < 2_000  # about 1 in 32 by construction


def test_codes_are_unique_over_100k() -> None:
    codes = {new_tracking_code() for _ in range(100_000)}
    assert len(codes) == 100_000
