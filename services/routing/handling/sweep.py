"""The deadline sweep (warn, chase, supervise in batches) and the recomputation of provisional
deadlines once a year's calendar is known, also when an operator loads one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime

from services.common.calendar import OfficialYear
from services.common.errors import InvalidArgument
from services.common.timeutil import china_date, to_utc
from services.routing.domain import DeadlineStageReached, Stage, sweep
from services.routing.domain.timelimits import supervision_at
from services.routing.handling.bookkeeping import refresh
from services.routing.handling.ports import (
    SYSTEM,
    BatchChange,
    CalendarLoader,
    Routing,
    RoutingEvent,
    StoredWorkOrder,
    Supervision,
    SupervisionRecorded,
    UnitOfWorkFactory,
)


@dataclass
class SweepReport:
    scanned: int = 0
    warnings: int = 0
    chases: int = 0
    supervisions: int = 0
    recomputed: int = 0
    open: int = 0
    overdue: int = 0


def _batches(fetch: Callable[[str], list[StoredWorkOrder]]) -> Iterator[list[StoredWorkOrder]]:
    after = ""
    while True:
        batch = fetch(after)
        if not batch:
            return
        yield batch
        after = batch[-1].order.id


def run_sweep(
    *, uow_factory: UnitOfWorkFactory, routing: Routing, now: datetime, batch_size: int = 1000
) -> SweepReport:
    """One pass: recompute provisional deadlines whose year is now known, then warn, chase and supervise.

    Work orders are loaded in batches of ``batch_size`` (keyset on id) and each batch commits on its own,
    so a sweep over a million work orders holds one batch in memory and a crash loses at most one batch.
    """
    now = to_utc(now)
    report = SweepReport()
    report.recomputed = recompute_provisional_deadlines(
        uow_factory=uow_factory, routing=routing, now=now, batch_size=batch_size
    )
    after = ""
    while True:
        with uow_factory() as uow:
            batch = uow.due_for_sweep(now, after_id=after, limit=batch_size)
            if not batch:
                break
            after = batch[-1].order.id
            report.scanned += len(batch)
            changes = _sweep_batch(batch, routing, now, report)
            # One bulk write per batch: work orders, history, supervisions, versions, outbox.
            uow.save_batch(changes)
            uow.commit()
    with uow_factory() as uow:
        report.open, report.overdue = uow.count_open(now)
    return report


def _sweep_batch(
    batch: Sequence[StoredWorkOrder], routing: Routing, now: datetime, report: SweepReport
) -> list[BatchChange]:
    """Apply the pure ``sweep`` decisions to one loaded batch; returns the changed work orders in order."""
    by_id = {s.order.id: s for s in batch}
    changes: dict[str, BatchChange] = {}
    for action in sweep([s.order for s in batch], now, routing.rules.policy, routing.rules.calendar):
        stored = by_id[action.work_order_id]
        events: list[RoutingEvent] = list(stored.order.record_sweep(action, at=now))
        if not events:
            continue
        change = changes.get(stored.order.id)
        if change is None:
            change = changes[stored.order.id] = BatchChange(stored)
        if action.stage is Stage.WARNING:
            report.warnings += 1
        else:
            chase = action.stage is Stage.CHASE
            report.chases += chase
            report.supervisions += not chase
            supervision = Supervision(
                supervision_id=routing.new_id(),
                case_id=action.case_id,
                work_order_id=action.work_order_id,
                level="chase" if chase else "supervise",
                by_node=routing.node if chase else routing.parent,
                by_actor=SYSTEM,
                demand=(
                    f"{action.kind} deadline {action.deadline.isoformat()} missed"
                    + _owing(events)
                    + ": "
                    + ("handle it now (催办)" if chase else "the tier above supervises (督办)")
                ),
                due_at=supervision_at(now, routing.rules.policy, routing.rules.calendar),
                issued_at=now,
                region_code=stored.order.region_code or "",
            )
            change.supervisions.append(supervision)
            events.append(SupervisionRecorded(supervision))
        change.events += events
    for change in changes.values():
        refresh(change.stored, routing, now, before=change.stored.provisional)
    return list(changes.values())


def _owing(events: Sequence[RoutingEvent]) -> str:
    """For a missed assist deadline (协办): the assisting units that owe their answer, named in the chase."""
    units = [u for e in events if isinstance(e, DeadlineStageReached) for u in e.unit_ids]
    return f" by assisting unit(s) {', '.join(units)}" if units else ""


def recompute_provisional_deadlines(
    *, uow_factory: UnitOfWorkFactory, routing: Routing, now: datetime, batch_size: int = 1000
) -> int:
    """Deadlines counted Mon-Fri for an unknown year are recomputed once that year's calendar is known.

    Called by the sweep and at once when a year is loaded (``load_calendar_years``). Each work order
    records every moved deadline in its history and emits it (WorkOrderChanged "recompute_deadlines"),
    so the tiers above see the same due dates. Returns the number of work orders recomputed.
    """
    now = to_utc(now)
    recomputed = 0
    after = ""
    while True:
        with uow_factory() as uow:
            batch = uow.provisional_batch(after_id=after, limit=batch_size)
            if not batch:
                return recomputed
            after = batch[-1].order.id
            changes: list[BatchChange] = []
            for stored in batch:
                order = stored.order
                running = {**order.deadlines, **order.windows}
                years = {china_date(running[k]).year for k in stored.provisional if k in running}
                if any(not routing.calendar.knows_year(y) for y in years):
                    continue  # still unknown: nothing to gain yet
                events = order.calendar_loaded(routing.rules, at=now, years=years, provisional=stored.provisional)
                refresh(stored, routing, now, before=stored.provisional)
                changes.append(BatchChange(stored, list(events)))
                recomputed += 1
            uow.save_batch(changes)
            uow.commit()


def load_calendar_years(
    years: list[OfficialYear],
    *,
    calendar: CalendarLoader,
    uow_factory: UnitOfWorkFactory,
    routing: Routing,
    now: datetime,
    file_name: str,
    actor: str,
) -> int:
    """An operator loads official years (already validated): kept for the node, provisional deadlines recomputed."""
    if not years:
        raise InvalidArgument("content", "the file holds no year")
    calendar.load_years(years, file_name=file_name, loaded_by=actor, at=to_utc(now))
    return recompute_provisional_deadlines(uow_factory=uow_factory, routing=routing, now=now)
