"""Intake's cases as rows and as events: the mapping the store uses both ways (sealing personal fields)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, Protocol

from google.protobuf.message import Message
from lianxin.events.v1 import events_pb2

from services.common.events import envelope
from services.common.timeutil import to_utc
from services.intake import mapping
from services.intake.domain import (
    Case,
    CaseEvaluated,
    CaseRegistered,
    CaseState,
    CaseWithdrawn,
    Complainant,
    DomainEvent,
    ProgressNoticesSet,
    ReviewRequested,
)
from services.intake.models import CaseRow
from services.intake.notices import NoticeSettled
from services.intake.submit_sql import bands, signed64, unsigned64

# The personal fields of a case, sealed at rest (``<field>_sealed``).
PERSONAL = ("name", "id_number", "phone", "address", "title", "body")


class Sealer(Protocol):
    """The part of ``services.common.crypto``'s field ciphers that intake uses."""

    def encrypt(self, plaintext: str, *, context: str) -> bytes: ...

    def decrypt(self, blob: bytes, *, context: str) -> str: ...

    def blind_index(self, kind: str, value: str) -> str: ...


def case_values(
    case: Case, received_at: datetime, cipher: Sealer, blind_index: Callable[[str, str], str]
) -> dict[str, Any]:
    """The row of a new case: sealed personal fields, blind indexes, SimHash bands."""
    bidx = blind_index
    person = case.complainant
    band = bands(case.simhash)
    values: dict[str, Any] = dict(
        case_id=case.case_id,
        tracking_code=case.tracking_code,
        idempotency_key=case.idempotency_key,
        channel=case.channel,
        channel_ref=case.channel_ref,
        title=case.title,
        body=case.body,
        category=case.category,
        category_auto=case.category_auto,
        region_code=case.region_code,
        place_unresolved=case.place_unresolved,
        registering_node=case.registering_node,
        owner_node=case.owner_node,
        owner_epoch=case.owner_epoch,
        state=case.state.value,
        version=case.version,
        anonymous=case.anonymous,
        repeat_of=case.repeat_of,
        duplicate_of=case.duplicate_of,
        flags=",".join(case.flags),
        hotline_operator_id=case.hotline_operator_id,
        id_number_bidx=bidx("id_number", person.id_number) if person.id_number else "",
        phone_bidx=bidx("phone", person.phone) if person.phone else "",
        phone_last4=person.phone[-4:] if person.phone else "",
        submitted_at=case.submitted_at,
        updated_at=case.updated_at,
        received_at=received_at,
        fingerprint=case.fingerprint,
        simhash=signed64(case.simhash),
        band0=band[0],
        band1=band[1],
        band2=band[2],
        band3=band[3],
        moderation_reasons=",".join(case.moderation_reasons),
        place_address=case.place,
    )
    for field in PERSONAL:
        value = getattr(person, field)
        values[f"{field}_sealed"] = cipher.encrypt(value, context=f"cases.{field}") if value else None
    return values


def to_case(row: CaseRow, cipher: Sealer) -> Case:
    """The case a row holds, its personal fields opened."""
    opened = {
        field: cipher.decrypt(blob, context=f"cases.{field}") if (blob := getattr(row, f"{field}_sealed")) else ""
        for field in PERSONAL
    }
    return Case(
        case_id=row.case_id,
        tracking_code=row.tracking_code,
        channel=row.channel,
        channel_ref=row.channel_ref,
        title=row.title,
        body=row.body,
        category=row.category,
        region_code=row.region_code,
        registering_node=row.registering_node,
        owner_node=row.owner_node,
        state=CaseState(row.state),
        submitted_at=to_utc(row.submitted_at),
        updated_at=to_utc(row.updated_at),
        complainant=Complainant(**opened),
        place=row.place_address or "",
        owner_epoch=row.owner_epoch,
        version=row.version,
        category_auto=row.category_auto,
        place_unresolved=row.place_unresolved,
        anonymous=row.anonymous,
        repeat_of=row.repeat_of,
        duplicate_of=row.duplicate_of,
        flags=tuple(f for f in row.flags.split(",") if f),
        hotline_operator_id=row.hotline_operator_id,
        moderation_reasons=tuple(r for r in row.moderation_reasons.split(",") if r),
        fingerprint=row.fingerprint,
        simhash=unsigned64(row.simhash),
        handling_version=row.handling_version,
        work_order_id=row.work_order_id,
        unit_id=row.unit_id,
        reply_count=row.reply_count,
        replied_at=to_utc(row.replied_at) if row.replied_at is not None else None,
        reply_text=row.reply_text or "",
        handling_due=to_utc(row.handling_due) if row.handling_due is not None else None,
        merged_into=row.merged_into or "",
        evaluated_reply=row.evaluated_reply,
        satisfaction=row.satisfaction,
        review_reply=row.review_reply,
    )


def case_envelope(event: DomainEvent, node: str) -> events_pb2.EventEnvelope:
    """The integration event of a domain event of intake, emitted by ``node``."""
    case = event.case
    payload: Message
    if isinstance(event, CaseRegistered):
        field, payload = "case_registered", mapping.case_registered(case)
    elif isinstance(event, CaseEvaluated):
        field, payload = "case_evaluated", mapping.case_evaluated(event)
    elif isinstance(event, ReviewRequested):
        field, payload = "review_requested", mapping.review_requested(event)
    elif isinstance(event, ProgressNoticesSet):
        field, payload = "progress_notices_set", mapping.progress_notices_set(event)
    else:
        assert isinstance(event, CaseWithdrawn)
        field, payload = "case_withdrawn", mapping.case_withdrawn(event)
    return envelope(
        payload_field=field,
        payload=payload,
        case_id=case.case_id,
        version=case.version,
        owner_node=case.owner_node,
        owner_epoch=case.owner_epoch,
        origin_node=node,
        origin_service="intake",
        occurred_at=case.updated_at,
    )


def notice_settled_envelope(settled: NoticeSettled, case: Case | None, node: str) -> events_pb2.EventEnvelope:
    """The integration event of a progress notice that came to its end at ``node`` (the registering node).

    Its version is the handling step's (each notice of a case its own); the owner is the case's as this
    node knows it, or this node when the case is gone."""
    return envelope(
        payload_field="progress_notice_settled",
        payload=mapping.progress_notice_settled(settled),
        case_id=settled.case_id,
        version=settled.step_version,
        owner_node=case.owner_node if case is not None else node,
        owner_epoch=case.owner_epoch if case is not None else 0,
        origin_node=node,
        origin_service="intake",
        occurred_at=settled.at,
    )
