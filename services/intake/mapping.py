"""Translation between intake's domain objects and the protobuf contract (adapters only)."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp
from lianxin.common.v1 import common_pb2
from lianxin.events.v1 import events_pb2
from lianxin.intake.v1 import intake_service_pb2 as intake_pb2

from services.common.errors import InvalidArgument
from services.common.logs import mask_id_number, mask_name, mask_phone, mask_text
from services.common.telemetry import inject_context
from services.common.timeutil import from_timestamp, to_timestamp
from services.intake.domain import (
    EVALUATE,
    REQUEST_REVIEW,
    WITHDRAW,
    Case,
    CaseEvaluated,
    CaseState,
    CaseWithdrawn,
    CommandForOwner,
    ProgressNoticesSet,
    ReviewRequested,
    TimelineEntry,
)
from services.intake.notices import NoticeSettled
from services.intake.validation import Submission

_CHANNEL_PREFIX = "CHANNEL_"
_CHANNEL_NAMES = {"HOTLINE": "hotline"}


def channel_name(value: int) -> str:
    """Proto enum → domain channel name (CHANNEL_LEADER_BOARD → leader_board)."""
    if value == common_pb2.CHANNEL_UNSPECIFIED:
        raise InvalidArgument("channel", "must be set (web, app, hotline, wechat, letter, ...)")
    try:
        name = common_pb2.Channel.Name(value)  # type: ignore[arg-type]
    except ValueError:
        raise InvalidArgument("channel", f"unknown channel value {value}") from None
    return name.removeprefix(_CHANNEL_PREFIX).lower()


# Looked up on every answer and event; the enum wrapper's Value() is a slow path.
_CHANNEL_VALUES = {name.removeprefix(_CHANNEL_PREFIX).lower(): int(value) for name, value in common_pb2.Channel.items()}
_STATE_VALUES = {state: int(common_pb2.CaseState.Value(f"CASE_STATE_{state.value}")) for state in CaseState}


def channel_value(name: str) -> int:
    found = _CHANNEL_VALUES.get(name)
    return found if found is not None else int(common_pb2.Channel.Value(_CHANNEL_PREFIX + name.upper()))


def state_value(state: CaseState) -> int:
    return _STATE_VALUES[state]


def state_name(value: int) -> CaseState:
    return CaseState(common_pb2.CaseState.Name(value).removeprefix("CASE_STATE_"))  # type: ignore[arg-type]


def submission(request: intake_pb2.SubmitCaseRequest) -> Submission:
    person = request.complainant
    return Submission(
        channel=channel_name(request.channel),
        title=request.title,
        body=request.body,
        channel_ref=request.channel_ref or None,
        category=request.category or None,
        region_code=request.region_code or None,
        address=person.address or None,
        place=request.address or None,
        name=person.name or None,
        id_number=person.id_number or None,
        phone=person.phone or None,
        anonymous=request.anonymous,
        hotline_operator_id=request.hotline_operator_id or None,
        publish_consent=request.publish_consent,
        no_progress_notices=request.no_progress_notices,
    )


def submitted_at(request: intake_pb2.SubmitCaseRequest):  # type: ignore[no-untyped-def]
    return from_timestamp(request.submitted_at, "submitted_at") if request.HasField("submitted_at") else None


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _timestamp(value: datetime) -> Timestamp:
    """``to_timestamp`` by arithmetic for the aware datetimes of a case (FromDatetime is slow Python)."""
    if value.tzinfo is None:
        return to_timestamp(value)
    delta = value - _EPOCH
    return Timestamp(seconds=delta.days * 86_400 + delta.seconds, nanos=delta.microseconds * 1000)


def case_message(case: Case, *, personal: str = "masked", original_text: bool = False) -> common_pb2.Case:
    """``personal``: "full" (the registering clerk), "masked" (default), "none" (events, units under complaint).

    Title and body are the masked text (services.common.personal_text) unless ``personal`` is
    "full" or ``original_text`` (roles that may see the complainant): then the citizen's own words.
    The place of the matter (``address``) is for every reader; the complainant's home only "full".
    """
    person = case.complainant
    original = personal == "full" or original_text
    if personal == "full":
        complainant = common_pb2.Person(
            name=person.name, id_number=person.id_number, phone=person.phone, address=person.address
        )
    elif personal == "masked":
        complainant = common_pb2.Person(
            name=mask_name(person.name) if person.name else "",
            id_number=mask_id_number(person.id_number) if person.id_number else "",
            phone=mask_phone(person.phone) if person.phone else "",
        )
    else:
        complainant = common_pb2.Person()
    return common_pb2.Case(
        case_id=case.case_id,
        tracking_code=case.tracking_code,
        channel=channel_value(case.channel),  # type: ignore[arg-type]
        channel_ref=case.channel_ref,
        title=person.title or case.title if original else case.title,
        body=person.body or case.body if original else case.body,
        category=case.category,
        region_code=case.region_code,
        address=case.place,
        registering_node=case.registering_node,
        owner_node=case.owner_node,
        owner_epoch=case.owner_epoch,
        state=state_value(case.state),  # type: ignore[arg-type]
        version=case.version,
        complainant=complainant,
        anonymous=case.anonymous,
        repeat_of=case.repeat_of,
        duplicate_of=case.duplicate_of,
        flags=list(case.flags),
        submitted_at=_timestamp(case.submitted_at),
        updated_at=_timestamp(case.updated_at),
        hotline_operator_id=case.hotline_operator_id,
    )


def case_registered(case: Case) -> events_pb2.CaseRegistered:
    """Events leave the node and feed statistics: no personal data in them at all."""
    return events_pb2.CaseRegistered(
        case=case_message(case, personal="none"),
        category_auto=case.category_auto,
        place_unresolved=case.place_unresolved,
        repeat_of=case.repeat_of,
        duplicate_of=case.duplicate_of,
    )


def timeline_entry(entry: TimelineEntry) -> common_pb2.TimelineEntry:
    return common_pb2.TimelineEntry(at=to_timestamp(entry.at), state=state_value(entry.state), summary=entry.summary)  # type: ignore[arg-type]


def satisfaction_name(value: int) -> str:
    """Proto Satisfaction → domain name; UNSPECIFIED or unknown gives "" (validation rejects it)."""
    if value == common_pb2.SATISFACTION_UNSPECIFIED:
        return ""
    try:
        return str(common_pb2.Satisfaction.Name(value)).removeprefix("SATISFACTION_")  # type: ignore[arg-type]
    except ValueError:
        return ""


def satisfaction_value(name: str) -> int:
    return int(common_pb2.Satisfaction.Value(f"SATISFACTION_{name}")) if name else common_pb2.SATISFACTION_UNSPECIFIED


def case_evaluated(event: CaseEvaluated) -> events_pb2.CaseEvaluated:
    # Credited to the unit that handled the case (DESIGN §3): the last work order routing told us of.
    return events_pb2.CaseEvaluated(
        satisfaction=satisfaction_value(event.satisfaction),  # type: ignore[arg-type]
        comment=event.comment,
        work_order_id=event.case.work_order_id,
        unit_id=event.case.unit_id,
    )


def review_requested(event: ReviewRequested) -> events_pb2.ReviewRequested:
    return events_pb2.ReviewRequested(reason=event.reason)


def case_withdrawn(event: CaseWithdrawn) -> events_pb2.CaseWithdrawn:
    return events_pb2.CaseWithdrawn(reason=event.reason)


def progress_notices_set(event: ProgressNoticesSet) -> events_pb2.ProgressNoticesSet:
    return events_pb2.ProgressNoticesSet(enabled=event.enabled)


def progress_notice_settled(settled: NoticeSettled) -> events_pb2.ProgressNoticeSettled:
    return events_pb2.ProgressNoticeSettled(
        notice_id=settled.notice_id,
        kind=settled.kind,
        channel=settled.channel,
        outcome=settled.outcome,
        attempts=settled.attempts,
    )


def owner_command(command: CommandForOwner) -> events_pb2.Command:
    """The ``events.v1.Command`` carrying a citizen's rating, review request or withdrawal to the owner.

    Like events, it holds no personal data.
    """
    message = events_pb2.Command(
        command_id=command.command_id,
        case_id=command.case_id,
        target_node=command.target_node,
        issuing_node=command.issuing_node,
        owner_epoch_seen=command.owner_epoch_seen,
        issued_at=_timestamp(command.at),
    )
    if command.kind == EVALUATE:
        message.evaluate.CopyFrom(
            events_pb2.Command.EvaluateCase(
                satisfaction=satisfaction_value(command.satisfaction),  # type: ignore[arg-type]
                comment=command.text,
                evaluated_at=_timestamp(command.at),
            )
        )
    elif command.kind == REQUEST_REVIEW:
        message.request_review.reason = command.text
    elif command.kind == WITHDRAW:
        message.withdraw.reason = command.text
    else:
        raise ValueError(f"no command body for {command.kind!r}")
    message.trace_context.update(inject_context())
    return message


def published_reply(case: Case) -> intake_pb2.PublishedReply:
    """A case as the public board shows it: personal data masked, in the text too."""
    person = case.complainant
    who = " ".join(part for part in (mask_name(person.name or ""), mask_phone(person.phone or "")) if part)
    return intake_pb2.PublishedReply(
        case_id=case.case_id,
        title=mask_text(case.title),
        body=mask_text(case.body),
        category=case.category,
        region_code=case.region_code,
        submitted_at=to_timestamp(case.submitted_at),
        reply_text=mask_text(case.reply_text),
        replied_at=to_timestamp(case.replied_at) if case.replied_at is not None else None,
        asked_by="匿名" if case.anonymous or not who else who,
        satisfaction=satisfaction_value(case.satisfaction),  # type: ignore[arg-type]
    )
