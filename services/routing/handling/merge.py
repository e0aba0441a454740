"""并单: cases that are one matter merged into a main case (all or nothing), and a merge undone before
the reply.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from services.common.errors import Conflict, InvalidArgument
from services.common.timeutil import to_utc
from services.routing.domain import MERGE_OUT
from services.routing.handling.bookkeeping import checked_actor, persist
from services.routing.handling.ports import (
    CaseMergedInto,
    Routing,
    RoutingEvent,
    StoredWorkOrder,
    UnitOfWorkFactory,
    work_order_id_for,
)
from services.routing.merging import check_merge, check_merge_request, check_unmerge


@dataclass(frozen=True)
class MergeResult:
    main: StoredWorkOrder
    merged: list[StoredWorkOrder]


def merge_cases(
    *,
    main_case_id: str,
    case_ids: Sequence[str],
    actor: str,
    expected_version: int,
    reason: str,
    acting_unit: str,
    uow_factory: UnitOfWorkFactory,
    routing: Routing,
    now: datetime,
) -> MergeResult:
    """并单: ``case_ids`` become MERGED into ``main_case_id``, in one transaction (all or nothing).

    Each merged case emits its ``work_order_changed`` (merge) and ``case_merged``; the main case's
    history names them (``merge_in``). From then on every change of the main case is followed by
    each merged case (``main:<action>``), so their citizens see the main case's progress and reply.
    """
    who = checked_actor(actor)
    main_id, others = check_merge_request(main_case_id, case_ids)
    why = (reason or "").strip()
    if not why:
        raise InvalidArgument("reason", "why the cases are one matter (并单理由) is required")
    now = to_utc(now)
    with uow_factory() as uow:
        # Rows locked in id order, as every writer of several work orders takes them.
        ids = sorted({main_id, *others})
        loaded = {c: uow.get(work_order_id_for(c, routing.node), for_update=True) for c in ids}
        orders = {c: (s.order if s is not None else None) for c, s in loaded.items()}
        check_merge(main_id, others, main=orders[main_id], merged=orders, node=routing.node, acting_unit=acting_unit)
        main = loaded[main_id]
        assert main is not None
        if expected_version and expected_version != main.order.version:
            raise Conflict(
                f"work order {main.order.id} is at version {main.order.version}, not {expected_version}: re-read it"
            )
        merged: list[StoredWorkOrder] = []
        for case_id in others:
            stored = loaded[case_id]
            assert stored is not None
            events: list[RoutingEvent] = list(stored.order.merge(into_case_id=main_id, at=now, actor=who, reason=why))
            events.append(CaseMergedInto(case_id, main_id, why, now))
            uow.record_merge(case_id, main_id, at=now)
            persist(uow, stored, routing, events, now)
            merged.append(stored)
        persist(uow, main, routing, main.order.merged_in(others, at=now, actor=who, reason=why), now)
        uow.commit()
    return MergeResult(main, merged)


def unmerge_case(
    *,
    case_id: str,
    actor: str,
    expected_version: int,
    reason: str,
    acting_unit: str,
    uow_factory: UnitOfWorkFactory,
    routing: Routing,
    now: datetime,
) -> StoredWorkOrder:
    """The merge of ``case_id`` is undone before the main case's reply: it is handled on its own again."""
    who = checked_actor(actor)
    wanted = (case_id or "").strip()
    if not wanted:
        raise InvalidArgument("case_id", "the merged case is required")
    why = (reason or "").strip()
    if not why:
        raise InvalidArgument("reason", "why the merge is undone is required")
    now = to_utc(now)
    with uow_factory() as uow:
        stored = uow.get(work_order_id_for(wanted, routing.node), for_update=True)
        main_id = stored.order.merged_into if stored is not None else None
        main = uow.get(work_order_id_for(main_id, routing.node), for_update=True) if main_id else None
        check_unmerge(
            stored.order if stored is not None else None,
            wanted,
            main=main.order if main is not None else None,
            node=routing.node,
            acting_unit=acting_unit,
        )
        assert stored is not None
        if expected_version and expected_version != stored.order.version:
            raise Conflict(
                f"work order {stored.order.id} is at version {stored.order.version}, not {expected_version}: re-read it"
            )
        events = stored.order.unmerge(at=now, actor=who, reason=why)
        uow.remove_merge(wanted)
        persist(uow, stored, routing, events, now)
        if main is not None:
            note = main.order.merge_noted(
                MERGE_OUT, f"并单撤销: {wanted} handled on its own again ({why})", at=now, actor=who
            )
            persist(uow, main, routing, note, now)
        uow.commit()
    return stored
