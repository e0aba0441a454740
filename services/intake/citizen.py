"""What a citizen does with a registered case: track, evaluate, ask for a review, withdraw, turn notices on or off.

At a node that registered but does not own the case, the request becomes a command for the owner.
"""

from __future__ import annotations

import hmac
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TypeVar

from services.common import personal_text
from services.common.errors import (
    AlreadyExists,
    Conflict,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from services.intake import notices
from services.intake.domain import (
    EVALUATE,
    REQUEST_REVIEW,
    REVIEW_DECISION,
    REVIEW_WINDOW,
    SATISFACTIONS,
    WITHDRAW,
    Case,
    CaseEvaluated,
    CaseState,
    CaseWithdrawn,
    CommandForOwner,
    ProgressNoticesSet,
    ReviewRequested,
    TimelineEntry,
    can_evaluate,
    can_request_review,
    can_withdraw,
)
from services.intake.ports import (
    COMMENT_MAX,
    IntakeDeps,
    IntakeUnitOfWork,
    UnitOfWorkFactory,
)
from services.intake.tracking import is_valid_tracking_code, normalise_tracking_code


def _authenticate(uow: IntakeUnitOfWork, tracking_code: str, phone_last4: str, deps: IntakeDeps) -> Case:
    """Tracking code + last four digits of the phone; any mismatch is NOT_FOUND (existence stays hidden)."""
    hidden = NotFound("case", "for this tracking code and phone")
    if not is_valid_tracking_code(tracking_code):
        raise hidden
    code = normalise_tracking_code(tracking_code)
    if deps.login_failures.blocked(code):
        raise ResourceExhausted("too many failed attempts for this tracking code; try again later")
    found = uow.get_by_tracking_code(code)
    # Compare even when nothing was found so the answer takes the same time either way.
    stored = found[1] if found is not None else "\0\0\0\0"
    ok = hmac.compare_digest(stored.encode(), phone_last4.strip().encode())
    if found is None or not ok:
        deps.login_failures.record(code)
        raise hidden
    return found[0]


@dataclass(frozen=True)
class TrackView:
    case: Case
    timeline: list[TimelineEntry]
    can_evaluate: bool
    can_request_review: bool
    can_withdraw: bool
    messages: list[notices.NoticeStatus] = field(default_factory=list)  # 办事进度推送


def track_case(tracking_code: str, phone_last4: str, *, uow_factory: UnitOfWorkFactory, deps: IntakeDeps) -> TrackView:
    with uow_factory() as uow:
        case = _authenticate(uow, tracking_code, phone_last4, deps)
        timeline = uow.timeline(case.case_id)
        sent = uow.notices(case.case_id)
    now = deps.clock()
    return TrackView(
        case, timeline, can_evaluate(case), can_request_review(case, now), can_withdraw(case), messages=sent
    )


def _text(field_name: str, value: str, *, required: bool) -> str:
    """A citizen's comment or reason, checked and with personal data in it masked: it is stored,
    sent to the owner node and counted in the warehouse, where nobody needs the number itself."""
    value = value.strip()
    if required and not value:
        raise InvalidArgument(field_name, "must not be empty")
    if len(value) > COMMENT_MAX:
        raise InvalidArgument(field_name, f"must be at most {COMMENT_MAX} characters, got {len(value)}")
    return personal_text.mask(value).text


@dataclass(frozen=True)
class Evaluated:
    evaluation_id: str
    forwarded_to: str  # the owner node the rating was sent to, "" when this node owns the case


def evaluate_case(
    tracking_code: str,
    phone_last4: str,
    *,
    satisfaction: str,
    comment: str,
    uow_factory: UnitOfWorkFactory,
    deps: IntakeDeps,
) -> Evaluated:
    """Record the citizen's rating of the latest reply; returns its id and where it was sent. Once per reply.

    When another node owns the case (handed down or escalated since it was registered here), the
    rating is recorded here as always and, in the same transaction, sent to the owner as a command
    (``command_for_owner``), since the owner's routing is the one that closes or reopens the work order.
    """
    if satisfaction not in SATISFACTIONS:
        raise InvalidArgument("satisfaction", "must be satisfied, basically satisfied or unsatisfied")
    comment = _text("comment", comment, required=False)
    now = deps.clock()

    def attempt() -> Evaluated:
        with uow_factory() as uow:
            case = _authenticate(uow, tracking_code, phone_last4, deps)
            if not can_evaluate(case):
                reason = "this reply was already rated" if case.reply_count else "there is no reply to rate yet"
                raise FailedPrecondition(reason, case.state.value)
            evaluation_id = f"{case.case_id}-E{case.reply_count}"
            changed = replace(
                case,
                evaluated_reply=case.reply_count,
                satisfaction=satisfaction,
                version=case.version + 1,
                updated_at=now,
            )
            uow.add_evaluation(
                evaluation_id=evaluation_id,
                case_id=case.case_id,
                reply_number=case.reply_count,
                satisfaction=satisfaction,
                comment=comment,
                at=now,
            )
            uow.save(changed, expected_version=case.version)
            uow.add_timeline(TimelineEntry(case.case_id, now, case.state, "已评价 rated"))
            uow.emit(CaseEvaluated(changed, satisfaction, comment))
            command = command_for_owner(changed, EVALUATE, comment, deps.node, now)
            if command is not None:
                uow.send_command(command)
            uow.commit()
        return Evaluated(evaluation_id, forwarded_to=command.target_node if command is not None else "")

    try:
        return retry_on_conflict(attempt)
    except AlreadyExists:
        # A concurrent rating of the same reply won (the evaluation row is unique per reply).
        raise FailedPrecondition("this reply was already rated") from None


T = TypeVar("T")


CONFLICT_ATTEMPTS = 3


def retry_on_conflict(attempt: Callable[[], T]) -> T:
    """Run a citizen's request again when the case changed between its read and its write.

    Routing's handling (a reply, an acceptance) is applied to the same case row in the background;
    the citizen's request lost nothing but the race, so it is re-read and decided again (a request
    that became invalid meanwhile is refused by its own check). After the last attempt the conflict
    goes to the caller (ABORTED: retry).
    """
    for _ in range(CONFLICT_ATTEMPTS - 1):
        try:
            return attempt()
        except Conflict:
            continue
    return attempt()


def owner_elsewhere(case: Case, node: str) -> str:
    """The known owner of ``case`` when it is not this node (a citizen's request goes there too), else ""."""
    return case.owner_node if case.owner_node and case.owner_node != node else ""


# Command ids: uuid5 of what was recorded here, so one request is one command however often it is
# sent. A rating: its evaluation id ("<case>-E<reply>"); a review: the reply reviewed ("<case>-R<n>");
# a withdrawal: the case ("<case>-W").
EVALUATION_COMMANDS = uuid.UUID("6f1d1c1e-3a5b-5d0e-9c43-6c69616e7869")


REQUEST_COMMANDS = uuid.UUID("0b5e6a43-8f0e-5c1a-a1d2-6c69616e7872")


def owner_command_id(case: Case, kind: str) -> str:
    if kind == EVALUATE:
        return str(uuid.uuid5(EVALUATION_COMMANDS, f"{case.case_id}-E{case.evaluated_reply}"))
    recorded = f"{case.case_id}-R{case.review_reply}" if kind == REQUEST_REVIEW else f"{case.case_id}-W"
    return str(uuid.uuid5(REQUEST_COMMANDS, recorded))


def command_for_owner(case: Case, kind: str, text: str, node: str, at: datetime) -> CommandForOwner | None:
    """What a rating, review request or withdrawal just recorded on ``case`` sends to its owner; None
    when this node owns the case. ``case`` is the changed case (its evaluated or reviewed reply set)."""
    target = owner_elsewhere(case, node)
    if not target:
        return None
    return CommandForOwner(
        command_id=owner_command_id(case, kind),
        case_id=case.case_id,
        target_node=target,
        owner_epoch_seen=case.owner_epoch,
        issuing_node=node,
        kind=kind,
        text=text,
        at=at,
        satisfaction=case.satisfaction if kind == EVALUATE else "",
    )


@dataclass(frozen=True)
class ReviewRecorded:
    decide_by: datetime
    forwarded_to: str  # the owner node the request was sent to, "" when this node owns the case


def request_review(
    tracking_code: str, phone_last4: str, *, reason: str, uow_factory: UnitOfWorkFactory, deps: IntakeDeps
) -> ReviewRecorded:
    """Record a 复查 request within 30 days of the reply; returns when it must be decided and where it went.

    As with a rating, when another node owns the case the request is also sent to it as a command in the
    same transaction: the owner's routing is the one that reopens the work order for 复查.
    """
    reason = _text("reason", reason, required=True)
    now = deps.clock()

    def attempt() -> ReviewRecorded:
        with uow_factory() as uow:
            case = _authenticate(uow, tracking_code, phone_last4, deps)
            if not can_request_review(case, now):
                if case.replied_at is None:
                    why = "a review can be requested only after a reply"
                elif case.review_reply >= case.reply_count:
                    why = "a review of this reply was already requested"
                elif now > case.replied_at + REVIEW_WINDOW:
                    why = "a review must be requested within 30 days of the reply"
                else:
                    why = "a review cannot be requested in this state"
                raise FailedPrecondition(why, case.state.value)
            changed = replace(case, review_reply=case.reply_count, version=case.version + 1, updated_at=now)
            uow.save(changed, expected_version=case.version)
            uow.add_timeline(TimelineEntry(case.case_id, now, case.state, "已申请复查 review requested"))
            uow.emit(ReviewRequested(changed, reason))
            command = command_for_owner(changed, REQUEST_REVIEW, reason, deps.node, now)
            if command is not None:
                uow.send_command(command)
            uow.commit()
        return ReviewRecorded(now + REVIEW_DECISION, forwarded_to=command.target_node if command is not None else "")

    # A concurrent request of the same review is seen by the next attempt's check.
    return retry_on_conflict(attempt)


@dataclass(frozen=True)
class Withdrawn:
    case: Case
    forwarded_to: str  # the owner node the withdrawal was sent to, "" when this node owns the case


def withdraw_case(
    tracking_code: str, phone_last4: str, *, reason: str, uow_factory: UnitOfWorkFactory, deps: IntakeDeps
) -> Withdrawn:
    """撤回: the case ends withdrawn here; routing follows (``case_withdrawn``, or a command to another owner)."""
    reason = _text("reason", reason, required=False)
    now = deps.clock()

    def attempt() -> Withdrawn:
        command: CommandForOwner | None = None
        with uow_factory() as uow:
            case = _authenticate(uow, tracking_code, phone_last4, deps)
            if not can_withdraw(case):
                raise FailedPrecondition("the case can no longer be withdrawn", case.state.value)
            was_held = case.state is CaseState.MODERATION
            # A held case never left intake, so nobody downstream needs to hear it went.
            changed = replace(
                case, state=CaseState.WITHDRAWN, version=case.version + (0 if was_held else 1), updated_at=now
            )
            uow.save(changed, expected_version=case.version)
            uow.add_timeline(TimelineEntry(case.case_id, now, CaseState.WITHDRAWN, "已撤回 withdrawn"))
            if not was_held:
                uow.emit(CaseWithdrawn(changed, reason))
                command = command_for_owner(changed, WITHDRAW, reason, deps.node, now)
                if command is not None:
                    uow.send_command(command)
            uow.commit()
        return Withdrawn(changed, forwarded_to=command.target_node if command is not None else "")

    return retry_on_conflict(attempt)


def set_progress_notices(
    tracking_code: str, phone_last4: str, *, enabled: bool, uow_factory: UnitOfWorkFactory, deps: IntakeDeps
) -> Case:
    """The citizen turns progress notices off (or on again) with the tracking code; later steps follow it."""

    def attempt() -> Case:
        with uow_factory() as uow:
            case = _authenticate(uow, tracking_code, phone_last4, deps)
            flags = tuple(f for f in case.flags if f != notices.OPT_OUT_FLAG)
            if not enabled:
                flags = (*flags, notices.OPT_OUT_FLAG)
            if flags == case.flags:
                return case
            # A held case never left intake: its registration, once released, carries the choice (flags).
            held = case.state is CaseState.MODERATION
            changed = replace(case, flags=flags, version=case.version + (0 if held else 1), updated_at=deps.clock())
            uow.save(changed, expected_version=case.version)
            if not held:
                uow.emit(ProgressNoticesSet(changed, enabled))  # counted in stats (docs/stats.md)
            uow.commit()
            return changed

    # Like a rating: routing's handling applied to the case meanwhile is no reason to answer ABORTED.
    return retry_on_conflict(attempt)
