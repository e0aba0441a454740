"""Hand-built case events for tests, the benchmark and demos: the envelopes intake and routing would emit."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime

from lianxin.common.v1 import common_pb2
from lianxin.events.v1 import events_pb2

from services.common.events import envelope, to_bus_event
from services.common.service import BusEvent
from services.common.timeutil import to_timestamp

_STATES = {name.removeprefix("CASE_STATE_"): value for name, value in common_pb2.CaseState.items()}
_RATINGS = {name.removeprefix("SATISFACTION_").lower(): value for name, value in common_pb2.Satisfaction.items()}


def _env(
    kind: str, payload: object, *, case_id: str, version: int, at: datetime, service: str, node: str
) -> events_pb2.EventEnvelope:
    return envelope(
        payload_field=kind,
        payload=payload,  # type: ignore[arg-type]
        case_id=case_id,
        version=version,
        owner_node=node,
        owner_epoch=1,
        origin_node=node,
        origin_service=service,
        occurred_at=at,
    )


def registered(
    case_id: str,
    *,
    region: str,
    at: datetime,
    channel: str = "hotline",
    category: str = "城乡建设",
    repeat_of: str = "",
    title: str = "",
    body: str = "",
    version: int = 1,
) -> events_pb2.EventEnvelope:
    node = case_id.split("-", 1)[0]
    case = common_pb2.Case(
        case_id=case_id,
        channel=common_pb2.Channel.Value(f"CHANNEL_{channel.upper()}"),  # type: ignore[arg-type]
        category=category,
        region_code=region,
        registering_node=node,
        owner_node=node,
        state=common_pb2.CASE_STATE_REGISTERED,
        version=version,
        title=title,
        body=body,
        repeat_of=repeat_of,
        submitted_at=to_timestamp(at),
    )
    payload = events_pb2.CaseRegistered(case=case, repeat_of=repeat_of)
    return _env("case_registered", payload, case_id=case_id, version=version, at=at, service="intake", node=node)


def _deadlines(deadlines: Mapping[str, datetime]) -> list[common_pb2.Deadline]:
    return [common_pb2.Deadline(kind=k, due_at=to_timestamp(v)) for k, v in sorted(deadlines.items())]


def work_order_created(
    case_id: str, *, version: int, at: datetime, unit_id: str, deadlines: Mapping[str, datetime]
) -> events_pb2.EventEnvelope:
    node = case_id.split("-", 1)[0]
    payload = events_pb2.WorkOrderCreated(
        work_order_id=f"{case_id}@{node}", unit_id=unit_id, node=node, deadlines=_deadlines(deadlines)
    )
    return _env("work_order_created", payload, case_id=case_id, version=version, at=at, service="routing", node=node)


def work_order_changed(
    case_id: str,
    *,
    version: int,
    at: datetime,
    action: str,
    to_state: str,
    unit_id: str = "",
    deadlines: Mapping[str, datetime] | None = None,
) -> events_pb2.EventEnvelope:
    node = case_id.split("-", 1)[0]
    payload = events_pb2.WorkOrderChanged(
        work_order_id=f"{case_id}@{node}",
        unit_id=unit_id,
        to_state=_STATES[to_state],  # type: ignore[arg-type]
        action=action,
        actor="test",
        deadlines=_deadlines(deadlines or {}),
    )
    return _env("work_order_changed", payload, case_id=case_id, version=version, at=at, service="routing", node=node)


def evaluated(case_id: str, *, version: int, at: datetime, rating: str, unit_id: str = "") -> events_pb2.EventEnvelope:
    node = case_id.split("-", 1)[0]
    payload = events_pb2.CaseEvaluated(satisfaction=_RATINGS[rating], unit_id=unit_id)  # type: ignore[arg-type]
    return _env("case_evaluated", payload, case_id=case_id, version=version, at=at, service="intake", node=node)


def supervision(case_id: str, *, version: int, at: datetime, level: str = "supervise") -> events_pb2.EventEnvelope:
    node = case_id.split("-", 1)[0]
    payload = events_pb2.SupervisionIssued(supervision_id=f"sv-{case_id}-{version}", level=level, by_node=node)
    return _env("supervision_issued", payload, case_id=case_id, version=version, at=at, service="routing", node=node)


def withdrawn(case_id: str, *, version: int, at: datetime) -> events_pb2.EventEnvelope:
    node = case_id.split("-", 1)[0]
    payload = events_pb2.CaseWithdrawn(reason="resolved")
    return _env("case_withdrawn", payload, case_id=case_id, version=version, at=at, service="intake", node=node)


def notice_settled(
    case_id: str, *, version: int, at: datetime, outcome: str = "sent", kind: str = "accepted"
) -> events_pb2.EventEnvelope:
    """办事进度推送: the notice caused by routing's step ``version`` came to its end (sent or given_up)."""
    node = case_id.split("-", 1)[0]
    payload = events_pb2.ProgressNoticeSettled(
        notice_id=f"{case_id}/{version}", kind=kind, channel="sms", outcome=outcome, attempts=1
    )
    return _env(
        "progress_notice_settled", payload, case_id=case_id, version=version, at=at, service="intake", node=node
    )


def notices_set(case_id: str, *, version: int, at: datetime, enabled: bool) -> events_pb2.EventEnvelope:
    """The citizen turned progress notices off (``enabled`` False) or on again; ``version`` is intake's."""
    node = case_id.split("-", 1)[0]
    payload = events_pb2.ProgressNoticesSet(enabled=enabled)
    return _env("progress_notices_set", payload, case_id=case_id, version=version, at=at, service="intake", node=node)


def bus_event(env: events_pb2.EventEnvelope, *, source: str | None = None) -> BusEvent:
    """The BusEvent a bus would deliver; ``source="exchange"`` makes it a replica from a child node."""
    event = to_bus_event(env)
    return event if source is None else replace(event, source=source)
