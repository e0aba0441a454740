"""Envelope sizes: real ``events.v1.EventEnvelope`` messages built the way the services fill them, measured.

The texts have the lengths of the shipped corpus (messages.csv: title median 19 characters, body mean
347); a reply is as long as a body. Events carry no personal data (intake's ``case_registered`` drops
the complainant), so nothing sealed is in them.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from functools import cache

from lianxin.common.v1 import common_pb2
from lianxin.events.v1 import events_pb2

from services.common.timeutil import to_timestamp
from services.exchange.national import national_reports

TITLE = "小区门口夜间施工噪音扰民" + "请尽快处理"  # 17 characters
BODY_CHARS = 347
REPLY_CHARS = 347
# What a gRPC call adds beyond its messages: HTTP/2 HEADERS (path, content type, deadline,
# traceparent) both ways and the frame headers; a few hundred bytes, measured in the order of 300.
CALL_OVERHEAD_BYTES = 300
SIZE_CLASSES = (
    "case_registered",
    "work_order_created",
    "changed",
    "replied",
    "closed",
    "case_evaluated",
    "deadline_warning",
    "case_handed_off",
)


def _text(chars: int) -> str:
    base = "乐山市市中区嘉州大道某小区门口连续多日夜间施工噪音扰民影响居民休息希望有关部门尽快查处"
    return (base * (chars // len(base) + 1))[:chars]


def _case(case_id: str, node: str, epoch: int) -> common_pb2.Case:
    now = to_timestamp(datetime(2026, 12, 6, 9, 30, tzinfo=UTC))
    return common_pb2.Case(
        case_id=case_id,
        tracking_code="K7Q2M9X4PA",
        channel=common_pb2.CHANNEL_HOTLINE,
        channel_ref="12345-20261206-0012345",
        title=TITLE,
        body=_text(BODY_CHARS),
        category="urban.noise",
        region_code=node,
        address="嘉州大道288号",
        registering_node=node,
        owner_node=node,
        owner_epoch=epoch,
        state=common_pb2.CASE_STATE_REGISTERED,
        version=1,
        anonymous=False,
        flags=["category_auto"],
        submitted_at=now,
        updated_at=now,
        hotline_operator_id="op-0417",
    )


def envelope(
    size_class: str, *, case_id: str, node: str, epoch: int = 1, to_node: str = "", event_id: str = ""
) -> events_pb2.EventEnvelope:
    """One envelope of ``size_class`` as the services emit it (``to_node``: a hand-off's new owner)."""
    at = datetime(2026, 12, 6, 9, 30, tzinfo=UTC)
    due = [
        common_pb2.Deadline(kind=kind, due_at=to_timestamp(at + timedelta(days=days)))
        for kind, days in (("assign", 3), ("accept_notice", 15), ("settle", 60))
    ]
    env = events_pb2.EventEnvelope(
        event_id=event_id or str(uuid.uuid4()),
        case_id=case_id,
        version=1,
        owner_epoch=epoch,
        owner_node=node,
        origin_node=node,
        origin_service="routing",
        occurred_at=to_timestamp(at),
        trace_context={"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
    )
    work_order = f"WO-{case_id}-1"
    if size_class == "case_registered":
        env.origin_service = "intake"
        env.case_registered.CopyFrom(events_pb2.CaseRegistered(case=_case(case_id, node, epoch), category_auto=True))
    elif size_class == "work_order_created":
        env.work_order_created.CopyFrom(
            events_pb2.WorkOrderCreated(
                work_order_id=work_order,
                unit_id="lszq-cgj",
                node=node,
                category="urban.noise",
                region_code=node,
                deadlines=due,
            )
        )
    elif size_class in ("changed", "replied", "closed"):
        to_state = {
            "changed": common_pb2.CASE_STATE_IN_PROGRESS,
            "replied": common_pb2.CASE_STATE_REPLIED,
            "closed": common_pb2.CASE_STATE_CLOSED,
        }[size_class]
        env.work_order_changed.CopyFrom(
            events_pb2.WorkOrderChanged(
                work_order_id=work_order,
                unit_id="lszq-cgj",
                from_state=common_pb2.CASE_STATE_ACCEPTED,
                to_state=to_state,
                action=size_class,
                actor="handler-0023",
                deadlines=due if size_class == "changed" else [],
                reply_text=_text(REPLY_CHARS) if size_class == "replied" else "",
            )
        )
    elif size_class == "case_evaluated":
        env.origin_service = "intake"
        env.case_evaluated.CopyFrom(
            events_pb2.CaseEvaluated(
                satisfaction=common_pb2.SATISFACTION_SATISFIED,
                comment="处理及时，满意",
                work_order_id=work_order,
                unit_id="lszq-cgj",
            )
        )
    elif size_class == "deadline_warning":
        env.deadline_warning.CopyFrom(
            events_pb2.DeadlineWarning(work_order_id=work_order, deadline_kind="settle", due_at=due[2].due_at)
        )
    elif size_class == "case_handed_off":
        case = _case(case_id, to_node or node, epoch + 1)
        env.case_handed_off.CopyFrom(
            events_pb2.CaseHandedOff(
                from_node=node,
                to_node=to_node or node,
                new_owner_epoch=epoch + 1,
                kind="escalate_up",
                reason="涉及跨区县，需市级统筹",
                case=case,
                from_work_order_id=work_order,
            )
        )
    else:
        raise ValueError(f"size class: {size_class!r} is not one of {', '.join(SIZE_CLASSES)}")
    return env


@cache
def envelope_bytes() -> dict[str, int]:
    """Serialized size of each size class's envelope (the up-log body, the PushEvents item)."""
    return {
        c: len(envelope(c, case_id="511102-20261206-000123", node="511102", to_node="511100").SerializeToString())
        for c in SIZE_CLASSES
    }


@cache
def report_bytes() -> dict[str, int]:
    """Serialized size of the ``NationalCaseReport`` sent for each size class (it carries the envelope)."""
    out = {}
    for c in SIZE_CLASSES:
        body = envelope(c, case_id="511102-20261206-000123", node="511102", to_node="511100").SerializeToString()
        reports = national_reports(body)
        out[c] = sum(len(r.SerializeToString()) for r in reports) if reports else len(body)
    return out
