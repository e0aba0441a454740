"""Identifiers: case ids that are unique without coordination, readable, time-sortable and name their node."""

from __future__ import annotations

import re
import uuid
from datetime import date

_CASE_ID = re.compile(r"^(\d{6})-(\d{8})-(\d{6,})$")


def format_case_id(node: str, day: date, sequence: int) -> str:
    """``511102-20261122-000123``: node, registration day (Asia/Shanghai), per-node daily sequence.

    Each node numbers only its own registrations, so ids never collide across nodes and no
    central counter is needed; lexical order within a node is registration order.
    """
    return f"{node}-{day:%Y%m%d}-{sequence:06d}"


def parse_case_id(case_id: str) -> tuple[str, date, int]:
    match = _CASE_ID.match(case_id)
    if not match:
        raise ValueError(f"not a case id: {case_id!r}")
    node, day, seq = match.groups()
    return node, date(int(day[:4]), int(day[4:6]), int(day[6:])), int(seq)


def is_case_id(value: str) -> bool:
    return bool(_CASE_ID.match(value))


def new_event_id() -> str:
    return str(uuid.uuid4())
