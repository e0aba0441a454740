"""The inbox read model (待办工单): a work order as a list shows it, and no more.

A list of twenty work orders needs neither their histories nor their allowed actions, and its
titles come from the case routing received with each work order (``case_snapshots``), so an
operator's list is one query of routing instead of a list of routing's and a list of intake's.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from services.routing.domain import State


@dataclass(frozen=True)
class InboxRow:
    work_order_id: str
    case_id: str
    title: str  # empty when routing kept no copy of the case
    category: str
    state: State
    unit_id: str
    deadlines: dict[str, datetime]  # pending deadlines by kind (overdue once passed)
    windows: dict[str, datetime]  # open windows by kind (objection, review): never overdue
    next_due: datetime  # the list's order with work_order_id (FAR_FUTURE when nothing is due)
