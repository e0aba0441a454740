"""并单 (merging duplicate and repeat cases) as plain rules: who may merge what, and when it can be undone.

No gRPC, SQLAlchemy or broker. The handler loads the work orders this node holds for the cases
named and asks these functions; each refusal names the request field it is about:

* ``INVALID_ARGUMENT`` for what the request itself gets wrong: no main case, no or too many cases,
  a case named twice or the main case among them, a case this node does not handle (never placed
  here, or handed on to another node: merge where it is handled now).
* ``FAILED_PRECONDITION`` for a case whose handling rules a merge out: the main case replied,
  closed or itself merged; a case already replied (its citizen has an answer), objected or closed.
* ``PERMISSION_DENIED`` when the caller belongs to a unit and a case is not that unit's work.

A merge is undone (``check_unmerge``) only while the main case has no reply: after it, the merged
citizens have read the main case's answer and rated it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from services.common.errors import FailedPrecondition, InvalidArgument, PermissionDenied
from services.routing.domain import TRANSITIONS, Action, State, WorkOrder

MAX_MERGED = 50  # cases merged in one request; a larger cluster is a hotspot for the supervisors
# States a case can be merged from: before any reply, not while an objection waits for arbitration.
MERGEABLE_STATES = frozenset(state for state, action in TRANSITIONS if action is Action.MERGE)
# States a main case can take merged cases in: handled here and not yet replied.
MAIN_STATES = MERGEABLE_STATES | {State.OBJECTED}


def check_merge_request(main_case_id: str, case_ids: Sequence[str]) -> tuple[str, list[str]]:
    """The request's ids, trimmed; refuses an empty, oversized or self-referencing list."""
    main = (main_case_id or "").strip()
    if not main:
        raise InvalidArgument("main_case_id", "the main case (主件) is required")
    if not case_ids:
        raise InvalidArgument("case_ids", "name at least one case to merge into the main case")
    if len(case_ids) > MAX_MERGED:
        raise InvalidArgument("case_ids", f"at most {MAX_MERGED} cases are merged at once, got {len(case_ids)}")
    seen: set[str] = set()
    out: list[str] = []
    for i, raw in enumerate(case_ids):
        case_id = (raw or "").strip()
        if not case_id:
            raise InvalidArgument(f"case_ids[{i}]", "must not be empty")
        if case_id == main:
            raise InvalidArgument(f"case_ids[{i}]", f"{case_id} is the main case: a case cannot be merged into itself")
        if case_id in seen:
            raise InvalidArgument(f"case_ids[{i}]", f"{case_id} is named twice")
        seen.add(case_id)
        out.append(case_id)
    return main, out


def _handled_here(order: WorkOrder | None, case_id: str, field: str, node: str) -> WorkOrder:
    if order is None:
        raise InvalidArgument(field, f"case {case_id} is not handled at node {node}")
    if order.state is State.TRANSFERRED:
        where = order.transferred_to or "another node"
        raise InvalidArgument(field, f"case {case_id} is handled by {where} now: merge it there")
    return order


def _unit_may(order: WorkOrder, acting_unit: str, field: str) -> None:
    if acting_unit and order.unit_id != acting_unit:
        raise PermissionDenied(
            f"{field}: case {order.case_id} is not the work of unit {acting_unit}"
            f" (it is {order.unit_id or 'unassigned'})"
        )


def check_merge(
    main_case_id: str,
    case_ids: Sequence[str],
    *,
    main: WorkOrder | None,
    merged: Mapping[str, WorkOrder | None],
    node: str,
    acting_unit: str = "",
) -> None:
    """Whether ``case_ids`` may be merged into ``main_case_id`` at ``node`` by a caller of ``acting_unit``.

    ``main`` and ``merged`` are this node's work orders of the cases (None: none here). Raises the
    first refusal; returns when the merge may go ahead.
    """
    main_order = _handled_here(main, main_case_id, "main_case_id", node)
    if main_order.state is State.MERGED:
        raise FailedPrecondition(
            f"main case {main_case_id} is itself merged into {main_order.merged_into}: merge into that one",
            main_order.state,
        )
    if main_order.state not in MAIN_STATES or main_order.replied_at is not None:
        raise FailedPrecondition(
            f"main case {main_case_id} is {main_order.state.value}: cases are merged into a main case before its reply",
            main_order.state,
        )
    _unit_may(main_order, acting_unit, "main_case_id")
    for i, case_id in enumerate(case_ids):
        field = f"case_ids[{i}]"
        order = _handled_here(merged.get(case_id), case_id, field, node)
        if order.state not in MERGEABLE_STATES or order.replied_at is not None:
            raise FailedPrecondition(
                f"{field}: case {case_id} is {order.state.value}: only cases not yet replied, closed or objected"
                " are merged",
                order.state,
            )
        _unit_may(order, acting_unit, field)


def check_unmerge(
    order: WorkOrder | None, case_id: str, *, main: WorkOrder | None, node: str, acting_unit: str = ""
) -> None:
    """Whether the merge of ``case_id`` may be undone: merged here, and its main case not replied yet."""
    merged = _handled_here(order, case_id, "case_id", node)
    if merged.state is not State.MERGED:
        raise FailedPrecondition(f"case {case_id} is {merged.state.value}, not merged", merged.state)
    _unit_may(merged, acting_unit, "case_id")
    if main is not None and (main.replied_at is not None or main.state in (State.REPLIED, State.CLOSED)):
        raise FailedPrecondition(
            f"main case {main.case_id} has been replied: a merge is undone only before the reply", merged.state
        )
