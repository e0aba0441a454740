"""Translate an EventEnvelope (from any node or service) into the warehouse's ``CaseEvent``."""

from __future__ import annotations

from datetime import UTC, datetime

from lianxin.common.v1 import common_pb2
from lianxin.events.v1 import events_pb2

from services.common.events import unfolded
from services.common.timeutil import from_timestamp
from services.stats.domain import CaseEvent

# Routing's label of an assisting unit's answer given after its deadline (协办).
ASSIST_LATE_ANSWER = "assist_late_answer"
# Payloads the warehouse folds; others (visits, warnings, ...) are not kept.
FOLDED = (
    "case_registered",
    "work_order_created",
    "work_order_changed",
    "case_evaluated",
    "supervision_issued",
    "case_handed_off",
    "case_merged",
    "case_withdrawn",
    "case_sampled",  # 第三方评价
    "third_party_rated",
    "deadline_warning",  # only an assisting unit's missed deadline (协办), see to_case_event
    "progress_notice_settled",  # 办事进度推送
    "progress_notices_set",
)
# intake's flag on a case whose citizen wants no progress notices (at submission or later).
NO_PROGRESS_NOTICES = "no_progress_notices"
_TEXT_LIMIT = 400  # keywords need the gist, not the whole letter
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Kept bodies already translated, by their bytes. A case's transaction refolds all of its kept
# events, and at a county or city each event is its own transaction, so without this a case's
# k-th event parsed and translated its k bodies again (most of ``events_of``'s cost). A body's
# bytes decide its ``CaseEvent`` entirely, so the cache can never answer differently from a parse.
_TRANSLATED: dict[bytes, tuple[CaseEvent, ...]] = {}
_TRANSLATED_MAX = 8192  # about a few MB of bodies; cleared when full (the next events refill it)


def _name(enum: object, value: int, prefix: str) -> str:
    return str(enum.Name(value)).removeprefix(prefix)  # type: ignore[attr-defined]


def to_case_event(env: events_pb2.EventEnvelope) -> CaseEvent | None:
    """None for payloads the warehouse does not fold."""
    kind = env.WhichOneof("payload")
    if kind not in FOLDED:
        return None
    occurred = from_timestamp(env.occurred_at) or _EPOCH
    base = {"case_id": env.case_id, "version": int(env.version), "kind": kind, "occurred_at": occurred}
    if kind == "case_registered":
        payload = env.case_registered
        fields = _case_fields(payload.case, env, occurred)
        fields["is_repeat"] = bool(payload.repeat_of or payload.case.repeat_of)
        return CaseEvent(**base, **fields)  # type: ignore[arg-type]
    if kind == "work_order_created":
        created = env.work_order_created
        return CaseEvent(
            **base,  # type: ignore[arg-type]
            unit_id=created.unit_id,
            work_order_id=created.work_order_id,
            deadlines=_deadlines(created.deadlines),
            manual_queue=created.manual_queue,
        )
    if kind == "work_order_changed":
        changed = env.work_order_changed
        to_state = _name(common_pb2.CaseState, changed.to_state, "CASE_STATE_") if changed.to_state else ""
        late = (
            (changed.assisting_unit_id,) if changed.action == ASSIST_LATE_ANSWER and changed.assisting_unit_id else ()
        )
        return CaseEvent(
            **base,  # type: ignore[arg-type]
            unit_id=changed.unit_id,
            work_order_id=changed.work_order_id,
            deadlines=_deadlines(changed.deadlines),
            to_state=to_state,
            action=changed.action,
            late_assisting_units=late,
        )
    if kind == "deadline_warning":
        warning = env.deadline_warning
        if warning.deadline_kind != "assist" or warning.stage == "warning" or not warning.unit_ids:
            return None  # the warehouse counts missed duties from the deadlines themselves
        return CaseEvent(**base, late_assisting_units=tuple(warning.unit_ids))  # type: ignore[arg-type]
    if kind == "case_evaluated":
        evaluated = env.case_evaluated
        rating = (
            _name(common_pb2.Satisfaction, evaluated.satisfaction, "SATISFACTION_").lower()
            if evaluated.satisfaction
            else ""
        )
        return CaseEvent(**base, satisfaction=rating, unit_id=evaluated.unit_id)  # type: ignore[arg-type]
    if kind == "case_sampled":
        return CaseEvent(**base, sample_month=env.case_sampled.month)  # type: ignore[arg-type]
    if kind == "third_party_rated":
        rated = env.third_party_rated
        rating = _name(common_pb2.Satisfaction, rated.rating, "SATISFACTION_").lower() if rated.rating else ""
        return CaseEvent(**base, sample_month=rated.month, third_party_rating=rating)  # type: ignore[arg-type]
    if kind == "progress_notice_settled":
        return CaseEvent(**base, notice_outcome=env.progress_notice_settled.outcome)  # type: ignore[arg-type]
    if kind == "progress_notices_set":
        return CaseEvent(**base, notices_off=not env.progress_notices_set.enabled)  # type: ignore[arg-type]
    if kind == "supervision_issued":
        return CaseEvent(**base, level=env.supervision_issued.level)  # type: ignore[arg-type]
    if kind == "case_handed_off":
        hand_off = env.case_handed_off
        moved = {
            "to_node": hand_off.to_node,
            "from_node": hand_off.from_node,
            "hand_off_kind": hand_off.kind,
            "owner_epoch": hand_off.new_owner_epoch,
        }
        if not hand_off.case.case_id:
            return CaseEvent(**base, **moved)  # type: ignore[arg-type]
        # The case travels with its hand-off: a node that never saw the registration (handed down
        # to, or transferred in from the national system) folds its fact from this.
        return CaseEvent(**base, **moved, **_case_fields(hand_off.case, env, occurred))  # type: ignore[arg-type]
    return CaseEvent(**base)  # type: ignore[arg-type]


def case_events_of(body: bytes) -> tuple[CaseEvent, ...]:
    """The ``CaseEvent``s of a serialized envelope, each distinct body parsed once per process: one,
    none for a payload not folded, or for a placement folded into its creation (issue 21) the
    creation's and each step's, as their events were one by one."""
    try:
        return _TRANSLATED[body]
    except KeyError:
        pass
    env = events_pb2.EventEnvelope()
    env.ParseFromString(body)
    events = tuple(event for one in unfolded(env) if (event := to_case_event(one)) is not None)
    if len(_TRANSLATED) >= _TRANSLATED_MAX:
        _TRANSLATED.clear()
    _TRANSLATED[body] = events
    return events


def _case_fields(case: common_pb2.Case, env: events_pb2.EventEnvelope, occurred: datetime) -> dict[str, object]:
    return {
        "region_code": case.region_code,
        "registering_node": case.registering_node or env.origin_node,
        "channel": _name(common_pb2.Channel, case.channel, "CHANNEL_").lower(),
        "category": case.category,
        "submitted_at": from_timestamp(case.submitted_at) or occurred,
        "is_repeat": bool(case.repeat_of),
        "carries_case": True,
        "notices_off": NO_PROGRESS_NOTICES in case.flags,
    }


def case_text(env: events_pb2.EventEnvelope) -> str:
    if env.WhichOneof("payload") != "case_registered":
        return ""
    case = env.case_registered.case
    return f"{case.title}\n{case.body}"[:_TEXT_LIMIT]


def _deadlines(items: object) -> dict[str, datetime]:
    out: dict[str, datetime] = {}
    for deadline in items:  # type: ignore[attr-defined]
        due = from_timestamp(deadline.due_at)
        if deadline.kind and due is not None:
            out[deadline.kind] = due
    return out
