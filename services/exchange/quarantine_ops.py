"""What an operator does with quarantined items (``ReplayQuarantine``, ``DiscardQuarantine``): use cases
over the unit of work, each item in its own transaction; ``handlers.Exchange`` wakes the relay after.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from services.exchange import domain, mapping
from services.exchange.ports import (
    ENVELOPE,
    DiscardOutcome,
    ExchangeDeps,
    ExchangeUnitOfWork,
    Item,
    Quarantined,
    ReplayOutcome,
    UnitOfWorkFactory,
)
from services.exchange.receiving import accept_from_child, accept_from_parent, route_command

log = logging.getLogger(__name__)


def replay(uow_factory: UnitOfWorkFactory, deps: ExchangeDeps, ids: Sequence[int]) -> tuple[list[ReplayOutcome], bool]:
    """Retry quarantined items in the order they arrived; those that pass are applied and resolved.

    Returns the outcomes and whether anything was applied (then the relay has work).
    """
    outcomes: list[ReplayOutcome] = []
    applied_any = False
    for qid in sorted(ids):
        with uow_factory() as uow:
            outcome, reason = _replay_one(uow, deps, qid)
            uow.commit()
        applied_any = applied_any or (outcome.applied and reason is None)
        outcomes.append(outcome)
    return outcomes, applied_any


def _replay_one(uow: ExchangeUnitOfWork, deps: ExchangeDeps, qid: int) -> tuple[ReplayOutcome, str | None]:
    """The outcome, with the item's own (None: applied now, "": a duplicate, nothing written)."""
    row = uow.quarantined(qid)
    if row is None or row.resolved:
        return ReplayOutcome(qid, False, "not in quarantine"), "not in quarantine"
    item = Item(0, row.kind, row.body, row.case_sequence)
    if row.direction == "up":
        # Judged one at a time with the child's pushes (the same cursor lock as receive_push).
        uow.lock_cursor(row.peer_node, "child_up")
        reason = accept_from_child(uow, deps, row.peer_node, [item])[0]
    elif row.direction == "local":
        reason = route_command(uow, deps, item.body, came_from_parent=False)
    else:
        reason = accept_from_parent(uow, deps, item)
    if reason:
        uow.set_quarantine_reason(qid, reason)
        return ReplayOutcome(qid, False, reason), reason
    uow.resolve_quarantine(qid, disposition="replayed", at=deps.clock())
    return ReplayOutcome(qid, True, ""), reason


def discard(
    uow_factory: UnitOfWorkFactory,
    deps: ExchangeDeps,
    ids: Sequence[int],
    *,
    actor: str,
    note: str,
    replay_in_order: Callable[[Sequence[int]], list[ReplayOutcome]],
) -> list[DiscardOutcome]:
    """Discard quarantined items for good, then replay the later items of each case held behind them.

    Each discard is one transaction: the item leaves quarantine marked ``discarded`` with the
    operator and the reason, and an event a child pushed has its case sequence recorded as
    passed on that link (``sequence_skip``, ``domain.judge_discard``). Then the case's later
    quarantined items from the same link are replayed in sequence order (each applied when it
    passes, as ``ReplayQuarantine`` would).
    """
    outcomes: list[DiscardOutcome] = []
    for qid in ids:
        with uow_factory() as uow:
            row, case_id, refusal = _discard_one(uow, deps, qid, actor=actor, note=note)
            uow.commit()
        if row is None:
            outcomes.append(DiscardOutcome(qid, False, "not in quarantine"))
            continue
        if refusal is not None:
            outcomes.append(DiscardOutcome(qid, False, refusal))
            continue
        log.warning(
            "quarantined item discarded",
            extra={"quarantine_id": qid, "peer": row.peer_node, "summary": row.summary, "actor": actor},
        )
        released, still_held = (
            _release_behind(uow_factory, row.peer_node, case_id, replay_in_order) if case_id else ([], [])
        )
        outcomes.append(DiscardOutcome(qid, True, "", released=released, still_held=still_held))
    return outcomes


def _discard_one(
    uow: ExchangeUnitOfWork, deps: ExchangeDeps, qid: int, *, actor: str, note: str
) -> tuple[Quarantined | None, str, str | None]:
    """(the row, its case for a child's envelope else "", the refusal reason or None when discarded)."""
    row = uow.quarantined(qid)
    if row is None or row.resolved:
        return None, "", None
    if row.direction == "up":
        # Serialised with the child's pushes: none is judged against a half-made skip.
        uow.lock_cursor(row.peer_node, "child_up")
    case_id = (mapping.case_of(row.body) or "") if row.kind == ENVELOPE and row.direction == "up" else ""
    decision = domain.judge_discard(0, last_passed=0, earlier_held=())
    if case_id:
        held_behind = _held_of_case(uow, row.peer_node, case_id, exclude=qid)
        last = uow.last_passed(row.peer_node, case_id)
        decision = domain.judge_discard(
            row.case_sequence,
            last_passed=last,
            earlier_held=[n for n, _ in held_behind if last < n < row.case_sequence],
        )
    if not decision.allowed:
        return row, case_id, decision.reason
    now = deps.clock()
    if decision.skip:
        uow.record_skip(row.peer_node, case_id, row.case_sequence, qid, now)
    uow.resolve_quarantine(qid, disposition="discarded", at=now, actor=actor, note=note)
    return row, case_id, None


def _release_behind(
    uow_factory: UnitOfWorkFactory,
    child: str,
    case_id: str,
    replay_in_order: Callable[[Sequence[int]], list[ReplayOutcome]],
) -> tuple[list[int], list[int]]:
    """Replay the case's quarantined events from ``child`` in sequence order until none passes.

    Asked again after each round, under the link's cursor lock: an event the child pushed while
    an earlier one was being released (quarantined as a gap just before) is released too, and
    a push after the last round is judged after everything released.
    """
    released: list[int] = []
    tried: set[int] = set()
    while True:
        with uow_factory() as uow:
            uow.lock_cursor(child, "child_up")
            pending = [q for _, q in sorted(_held_of_case(uow, child, case_id, exclude=0)) if q not in tried]
            uow.commit()
        if not pending:
            break
        outcomes = replay_in_order(pending)
        tried.update(pending)
        passed = [o.id for o in outcomes if o.applied]
        released += passed
        if not passed:
            break
        tried.difference_update(o.id for o in outcomes if not o.applied)  # may pass after the ones released
    with uow_factory() as uow:
        still_held = [q for _, q in sorted(_held_of_case(uow, child, case_id, exclude=0))]
    return released, still_held


def _held_of_case(uow: ExchangeUnitOfWork, peer: str, case_id: str, *, exclude: int) -> list[tuple[int, int]]:
    """(case sequence, quarantine id) of ``case_id``'s unresolved events quarantined from child ``peer``."""
    # The quarantine has no case column (it holds whatever arrived); it stays small, so read the bodies.
    return [
        (number, qid) for qid, number, body in uow.held_up(peer, exclude=exclude) if mapping.case_of(body) == case_id
    ]
