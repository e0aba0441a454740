"""Work orders at each stage of their life, on the national time limits and the Chinese working calendar."""

from __future__ import annotations

from datetime import date, datetime, time

from services.common.calendar import ChineseWorkingCalendar
from services.common.regions import Tier
from services.common.timeutil import CHINA
from services.routing.domain import (
    WorkOrder,
)
from services.routing.domain.timelimits import DeadlineKind, TimeLimitPolicy, TimeRules

RULES = TimeRules(TimeLimitPolicy.default(), ChineseWorkingCalendar())
K = DeadlineKind


def at(m: int, d: int, hh: int = 10, mm: int = 0) -> datetime:
    return datetime(2026, m, d, hh, mm, tzinfo=CHINA)


def eod(m: int, d: int) -> datetime:
    return datetime.combine(date(2026, m, d), time.max, tzinfo=CHINA)


def new_order(handling_kind: DeadlineKind = K.SETTLE) -> WorkOrder:
    order, _ = WorkOrder.register(
        id="wo-1",
        case_id="511102-20260601-000001",
        node="511102",
        tier=Tier.COUNTY,
        at=at(6, 1, 9),
        actor="clerk-1",
        rules=RULES,
        category="城乡建设",
        region_code="511102",
        handling_kind=handling_kind,
    )
    return order


def assigned_order() -> WorkOrder:
    order = new_order()
    order.accept(at=at(6, 1), actor="clerk-1", rules=RULES)
    order.assign(unit_id="lszq-zjj", at=at(6, 2), actor="clerk-1", rules=RULES)
    return order


def in_progress_order() -> WorkOrder:
    order = assigned_order()
    order.start(at=at(6, 3), actor="handler-1")
    return order
