"""The registering node follows its cases' handling wherever they are handled: routing's work order
changes (local, replicated or sent as commands) and hand-offs, applied once each in version order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from services.common import personal_text
from services.intake import notices
from services.intake.domain import (
    FOLLOW_MAIN,
    PUBLIC_MILESTONES,
    CaseState,
    TimelineEntry,
    newer_owner,
)
from services.intake.ports import (
    Categoriser,
    IntakeUnitOfWork,
)


@dataclass(frozen=True)
class HandlingChange:
    """A fact from routing about the handling of a case (work order created or changed).

    From this node's routing or, replicated up by exchange, from the routing of a node below that
    the case was handed down to. ``owner_node``/``owner_epoch`` are the emitting routing's (its
    envelope's): the handling node and the epoch it holds the case with.
    """

    case_id: str
    version: int
    action: str
    to_state: CaseState | None
    work_order_id: str
    unit_id: str
    at: datetime
    owner_node: str = ""
    owner_epoch: int = 0
    reply_text: str = ""  # with a reply: the answer the citizen reads
    handling_due: datetime | None = None  # the handling deadline after the change, if the event carries one
    main_case_id: str = ""  # 并单: the main case (with merge, unmerge and main:<action>)


def apply_handling_change(change: HandlingChange, uow: IntakeUnitOfWork) -> bool:
    """Follow routing's handling on the registered case: state, replies, the public timeline, the owner.

    Events at or below the last routing version applied are old news (a redelivery or an
    overtaken event) and change nothing but a newer owner. The case version becomes the highest
    seen, so intake's own next event numbers after it. Cases registered at another node have no
    row here. Routing numbers a case's events on from the hand-off that brought it, so the
    handling node below continues the versions of the node that handed it down.
    """
    case = uow.get(change.case_id)
    if case is None:
        return False
    owned = newer_owner(case, change.owner_node, change.owner_epoch)
    if change.version <= case.handling_version:
        if owned is case:
            return False
        uow.save(owned, expected_version=case.version)
        return True
    changed = replace(
        owned,
        state=change.to_state or case.state,
        version=max(case.version, change.version),
        handling_version=change.version,
        updated_at=change.at,
        work_order_id=change.work_order_id or case.work_order_id,
        unit_id=change.unit_id or case.unit_id,
        handling_due=change.handling_due or case.handling_due,
    )
    action = change.action
    if action == "merge":
        changed = replace(changed, merged_into=change.main_case_id)
    elif action == "unmerge":
        changed = replace(changed, merged_into="")
    elif action.startswith(FOLLOW_MAIN):
        # A merged case follows its main case: the citizen reads the main case's progress and reply.
        action = action.removeprefix(FOLLOW_MAIN)
    if action == "reply":
        changed = replace(
            changed,
            reply_count=case.reply_count + 1,
            replied_at=change.at,
            reply_text=personal_text.mask(change.reply_text).text,
        )
    uow.save(changed, expected_version=case.version)
    summary = PUBLIC_MILESTONES.get(action)
    if summary is not None and action != change.action:
        summary = f"主件 {change.main_case_id} {summary}"
    if summary is not None:
        uow.add_timeline(TimelineEntry(case.case_id, change.at, changed.state, summary))
    notice = notices.notice_for(
        case_id=case.case_id,
        version=change.version,
        action=action,
        told=frozenset(n.kind for n in uow.notices(case.case_id)) if action == "accept" else frozenset(),
        channel=case.channel,
        at=change.at,
        opted_out=notices.OPT_OUT_FLAG in case.flags,
        has_phone=bool(case.complainant.phone),
    )
    if notice is not None:
        uow.add_notice(notice)  # 办事进度推送, sent from the notice outbox after this commits
    return True


@dataclass(frozen=True)
class HandOffSeen:
    """Ownership of a case moved (交办 down, 上报 up, 转送): from this node's routing or replicated by exchange."""

    case_id: str
    version: int
    to_node: str
    new_owner_epoch: int


def apply_hand_off(hand_off: HandOffSeen, uow: IntakeUnitOfWork) -> bool:
    """Keep the registered case's owner current, so a rating given here reaches the node that owns it.

    An older hand-off (epoch not above the known one) changes nothing; the handling itself (state,
    timeline) follows from the work order events that come with the hand-off.
    """
    case = uow.get(hand_off.case_id)
    if case is None:
        return False
    changed = newer_owner(case, hand_off.to_node, hand_off.new_owner_epoch)
    if changed is case:
        return False
    uow.save(replace(changed, version=max(case.version, hand_off.version)), expected_version=case.version)
    return True


def classify_texts(texts: Sequence[str], categorise: Categoriser) -> list[str]:
    return [categorise(text) or "" for text in texts]
