"""远程会商 on the case page: participants from the node's rooms, the earliest common slots, booking, minutes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from lianxin.video.v1 import video_service_pb2 as video_pb2

from services.web import labels
from services.web.app import Page
from services.web.client import CallFailed
from services.web.console.common import starts_at, to_int

CONSULT_ROWS = 4  # participant rows on the form: this node's unit and up to three of other tiers
CONSULT_ACTIONS = ("propose_consultation", "book_consultation", "consultation_minutes", "reschedule_consultation")
CONSULT_FIELDS = {
    "topic": "会商事项",
    "participants": "参会单位",
    "node": "节点",
    "unit_id": "单位编号",
    "room_id": "会商室",
    "duration_minutes": "时长",
    "starts_at": "时段",
    "minutes": "会商纪要",
    "consultation_id": "会商",
}


def rooms_at_node(page: Page) -> list[Any]:
    """The rooms registered at this node (its own and other nodes'), for the participant rows."""
    try:
        return list(page.call(page.client.video.ListRooms, video_pb2.ListRoomsRequest()).rooms)
    except CallFailed:
        return []


def participants(page: Page) -> list[video_pb2.ConsultationParticipant]:
    """The participant rows filled in (a room chosen or a unit typed); the room names the node."""
    nodes = {r.room_id: r.node for r in rooms_at_node(page)}
    out = []
    for i in range(1, CONSULT_ROWS + 1):
        room, unit = page.field(f"room_{i}"), page.field(f"unit_{i}")
        if room or unit:
            out.append(video_pb2.ConsultationParticipant(node=nodes.get(room, ""), unit_id=unit, room_id=room))
    return out


def propose_consultation(page: Page) -> list[Any]:
    if not page.field("topic"):
        raise CallFailed(grpc.StatusCode.INVALID_ARGUMENT, "topic: must be set", "topic")
    reply = page.call(
        page.client.video.ListConsultationSlots,
        video_pb2.ListConsultationSlotsRequest(participants=participants(page), max_items=3),
    )
    if not reply.slots:
        notice = f"; {reply.calendar_notice}" if reply.calendar_notice else ""
        raise CallFailed(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"participants: no common slot in the next 30 days{notice}",
            "participants",
        )
    return list(reply.slots)


def book_consultation(page: Page, case_id: str) -> None:
    assert page.operator is not None
    starts = starts_at(page)
    page.call(
        page.client.video.BookConsultation,
        video_pb2.BookConsultationRequest(
            case_id=case_id,
            actor=page.operator.principal.subject,
            topic=page.field("topic"),
            participants=participants(page),
            starts_at=starts,
        ),
    )


def _on_consultation(page: Page, call: Any, request: Callable[..., Any], **fields: object) -> None:
    """An action on one consultation of the card, at the version the page showed."""
    assert page.operator is not None
    message = request(
        consultation_id=page.field("consultation_id"),
        actor=page.operator.principal.subject,
        expected_version=to_int(page.field("expected_version")) or 0,
        **fields,
    )
    page.call(call, message)


def record_minutes(page: Page) -> None:
    minutes = page.form.get("minutes", "")
    _on_consultation(
        page, page.client.video.RecordConsultationMinutes, video_pb2.RecordConsultationMinutesRequest, minutes=minutes
    )


def reschedule_consultation(page: Page) -> None:
    """改期: the next common slot of every participant (RescheduleConsultation)."""
    _on_consultation(page, page.client.video.RescheduleConsultation, video_pb2.RescheduleConsultationRequest)


def consultation_error(failure: CallFailed) -> str:
    leaf = failure.field.rsplit(".", 1)[-1].split("[", 1)[0] if failure.field else ""
    reason = labels.field_error(failure.message.split(": ", 1)[-1])
    return f"{CONSULT_FIELDS.get(leaf, leaf)}：{reason}" if leaf else reason
