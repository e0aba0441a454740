"""Identifiers: case ids that are unique without coordination, readable, time-sortable and name their node."""

from __future__ import annotations

import uuid
from datetime import date


def format_case_id(node: str, day: date, sequence: int) -> str:
    """``511102-20261122-000123``: node, registration day (Asia/Shanghai), per-node daily sequence.

    Each node numbers only its own registrations, so ids never collide across nodes and no
    central counter is needed; lexical order within a node is registration order.
    """
    return f"{node}-{day:%Y%m%d}-{sequence:06d}"


def registering_node(case_id: str) -> str:
    """The node that registered ``case_id`` (its first part, ``format_case_id``); "" for an id without one."""
    node, dash, _ = case_id.partition("-")
    return node if dash else ""


def new_event_id() -> str:
    return str(uuid.uuid4())
