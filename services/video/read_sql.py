"""The case page's video reads as Core statements built once, with bound parameters (issue 17).

GetCaseVideo's four lists (a case's visits, its consultations, the receiving leaders' schedules
and the rooms) ran as ORM loads whose statements were built, cache-keyed and turned into ORM
objects at every view; these select the same rows, which ``rows.to_visit`` and the others read
as they read the ORM's objects (the columns carry the attributes' names).
"""

from __future__ import annotations

import functools
from typing import Any, cast

from sqlalchemy import Integer, Table, bindparam, func, select

from services.common.db import COUNT_LIMIT
from services.video.models import ConsultationRow, RoomRow, ScheduleRow, VisitRow

VISITS = cast(Table, VisitRow.__table__)
CONSULTATIONS = cast(Table, ConsultationRow.__table__)
SCHEDULES = cast(Table, ScheduleRow.__table__)
ROOMS = cast(Table, RoomRow.__table__)


@functools.lru_cache(maxsize=16)
def visit_statements(leader: bool, case: bool, not_before: bool, not_after: bool) -> tuple[Any, Any]:
    """A page of visits (``offset``, ``limit``) on (leader_id | case_id, starts_at, visit_id) and its
    count (``bounded_count``'s: at most COUNT_LIMIT + 1 read, in the index's order)."""
    t = VISITS
    conditions: list[Any] = []
    if leader:
        conditions.append(t.c.leader_id == bindparam("leader_id"))
    if case:
        conditions.append(t.c.case_id == bindparam("case_id"))
    if not_before:
        conditions.append(t.c.starts_at >= bindparam("not_before", type_=t.c.starts_at.type))
    if not_after:
        conditions.append(t.c.starts_at < bindparam("not_after", type_=t.c.starts_at.type))
    order = (t.c.starts_at, t.c.visit_id)
    page = (
        select(t)
        .where(*conditions)
        .order_by(*order)
        .offset(bindparam("offset", type_=Integer))
        .limit(bindparam("limit", type_=Integer))
    )
    counted = select(t.c.visit_id).where(*conditions).order_by(*order).limit(COUNT_LIMIT + 1).subquery()
    return page, select(func.count()).select_from(counted)


CASE_CONSULTATIONS = (
    select(CONSULTATIONS)
    .where(CONSULTATIONS.c.case_id == bindparam("case_id"))
    .order_by(CONSULTATIONS.c.starts_at, CONSULTATIONS.c.consultation_id)
    .limit(200)
)
ALL_SCHEDULES = select(SCHEDULES).order_by(SCHEDULES.c.leader_id)
ALL_ROOMS = select(ROOMS).order_by(ROOMS.c.room_id)
NODE_ROOMS = ALL_ROOMS.where(ROOMS.c.node == bindparam("node"))
