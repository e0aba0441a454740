"""Intake's use cases as plain functions over a unit of work (no gRPC, SQLAlchemy or nameko here)."""

from __future__ import annotations

import base64
import hmac
import json
import uuid
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Protocol, TypeVar

from services.common import personal_text
from services.common.errors import (
    AlreadyExists,
    Conflict,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from services.common.ids import format_case_id
from services.common.timeutil import CHINA, china_date
from services.intake import dedup, notices
from services.intake.domain import (
    CATEGORIES,
    EVALUATE,
    FOLLOW_MAIN,
    OTHER_CATEGORY,
    PUBLIC_MILESTONES,
    REQUEST_REVIEW,
    REVIEW_DECISION,
    REVIEW_WINDOW,
    SATISFACTIONS,
    WITHDRAW,
    Case,
    CaseEvaluated,
    CaseRegistered,
    CaseState,
    CaseWithdrawn,
    CommandForOwner,
    Complainant,
    DomainEvent,
    ReviewRequested,
    TimelineEntry,
    can_evaluate,
    can_request_review,
    can_withdraw,
    idempotency_key,
    newer_owner,
)
from services.intake.screening import AttemptLimiter, Screen
from services.intake.tracking import is_valid_tracking_code, new_tracking_code, normalise_tracking_code
from services.intake.validation import Submission, validate_submission

# Bulk channels carry other systems' records (a board export, a national transfer, a letter pile):
# their volume per person says nothing about abuse, so the per-submitter limit skips them.
RATE_EXEMPT_CHANNELS = frozenset({"letter", "leader_board", "national_transfer"})
COMMENT_MAX = 500
# A submission dated later than this node's clock plus this is refused: a case id dated 2030 would
# sort and count wrong for years. The margin covers a channel's clock running a little ahead.
MAX_CLOCK_SKEW = timedelta(minutes=5)
PAGE_DEFAULT = 50
PAGE_MAX = 500
CASE_IDS_MAX = 100
# Case flag of a citizen's consent to publish the reply on the public board (公开答复).
PUBLISH_CONSENT = "publish_consent"
# A reply is on the board while the case rests on it; a reopened case waits for its next reply.
PUBLISHED_STATES = frozenset({CaseState.REPLIED, CaseState.CLOSED})


@dataclass(frozen=True)
class CaseFilter:
    """ListCases filters; None or empty means "any"."""

    states: frozenset[CaseState] = frozenset()
    channel: str | None = None
    category: str | None = None
    regions: frozenset[str] | None = None
    submitted_after: datetime | None = None
    submitted_before: datetime | None = None
    published_only: bool = False  # replies the citizen agreed to publish (the public board)
    text: str | None = None  # words in the title, the request or the reply
    case_ids: frozenset[str] | None = None  # only these cases (a page of titles in one call)


@dataclass
class SubmitLookup:
    """What a submit reads before writing, fetched together (one round trip on a real database)."""

    existing: Case | None = None  # the case already registered under the idempotency key
    recent: int = 0  # the submitter's cases since the rate window opened (0 when not asked)
    duplicate: str | None = None  # oldest open case with the same fingerprint
    mine: str | None = None  # newest open case of the same person (phone or ID number)
    # (case_id, simhash) of open cases sharing a band value within one bit (at least the nearest of them)
    near: list[tuple[str, int]] = field(default_factory=list)


class IntakeUnitOfWork(Protocol):
    """What intake's handlers need from storage; ``store.SqlIntakeUnitOfWork`` implements it."""

    def find_by_idempotency_key(self, key: str) -> Case | None: ...

    def get(self, case_id: str) -> Case | None: ...

    def get_by_tracking_code(self, code: str) -> tuple[Case, str] | None:
        """The case and the stored last four digits of its phone ("" when none)."""
        ...

    def next_case_number(self, day: object) -> int: ...

    def register(
        self, case: Case, *, received_at: datetime, entry: TimelineEntry, event: CaseRegistered | None
    ) -> None:
        """A new case, its first timeline entry and its event (None while held); the submit's last write.

        AlreadyExists when another submit registered the same idempotency key first.
        """
        ...

    def save(self, case: Case, *, expected_version: int) -> None:
        """Write the mutable fields; Conflict when the stored version is not ``expected_version``."""
        ...

    def add_timeline(self, entry: TimelineEntry) -> None: ...

    def add_notice(self, notice: notices.Notice) -> bool:
        """Queue a progress notice; False when one with its id exists."""
        ...

    def notices(self, case_id: str) -> list[notices.NoticeStatus]: ...

    def timeline(self, case_id: str) -> list[TimelineEntry]: ...

    def add_evaluation(
        self, *, evaluation_id: str, case_id: str, reply_number: int, satisfaction: str, comment: str, at: datetime
    ) -> None: ...

    def emit(self, event: DomainEvent) -> None: ...

    def send_command(self, command: CommandForOwner) -> None:
        """Queue a command for the case's owner node in this transaction (the outbox; exchange carries it)."""
        ...

    def submit_lookup(
        self,
        *,
        idempotency_key: str | None,
        phone: str,
        id_number: str,
        since: datetime | None,
        fingerprint: str,
        simhash: int,
    ) -> SubmitLookup:
        """``since`` None: no rate count wanted. Person lookups are skipped for empty phone and ID."""
        ...

    def open_case_with_fingerprint(self, fingerprint: str) -> str | None: ...

    def open_cases_of_person(self, *, phone: str, id_number: str) -> list[str]:
        """Open case ids of the person, newest first."""
        ...

    def open_cases_near(self, simhash: int) -> list[tuple[str, int]]:
        """(case_id, simhash) of open cases sharing a SimHash band value within one bit."""
        ...

    def list_cases(self, filters: CaseFilter, *, after: tuple[datetime, str] | None, limit: int) -> list[Case]: ...

    def count_cases(self, filters: CaseFilter) -> int: ...

    def moderation_queue(self, *, regions: frozenset[str] | None, after: str | None, limit: int) -> list[Case]: ...

    def commit(self) -> None: ...


UnitOfWorkFactory = Callable[[], AbstractContextManager[IntakeUnitOfWork]]


class Categoriser(Protocol):
    def __call__(self, text: str) -> str | None: ...


class Locator(Protocol):
    def __call__(self, text: str) -> str | None: ...


def _no_screen() -> Screen:
    return Screen(())


@dataclass(frozen=True)
class IntakeDeps:
    """The node-specific collaborators and limits a submit needs."""

    node: str
    allowed_regions: frozenset[str]
    categorise: Categoriser
    locate: Locator
    clock: Callable[[], datetime]
    screen: Screen = field(default_factory=_no_screen)
    # Per submitter (phone, else ID number): at most ``rate_limit`` new cases per ``rate_window``; 0 = off.
    rate_limit: int = 5
    rate_window: timedelta = timedelta(hours=1)
    # Failed tracking-code logins: after this many in the window the code is locked for a while.
    login_failures: AttemptLimiter = field(default_factory=lambda: AttemptLimiter(5, 900.0))
    near_distance: int = dedup.DEFAULT_MAX_DISTANCE
    regions_under: Callable[[str], frozenset[str]] = lambda code: frozenset({code})


@dataclass(frozen=True)
class SubmitResult:
    case: Case
    created: bool


# -- submit ------------------------------------------------------------------------------------


def submit_case(
    submission: Submission,
    *,
    uow_factory: UnitOfWorkFactory,
    deps: IntakeDeps,
    submitted_at: datetime | None = None,
) -> SubmitResult:
    """Register a submission once; a retry with the same channel reference returns the same case.

    The same channel reference with a different title or body is not a retry: it answers
    ``SubmissionConflict`` (ALREADY_EXISTS) naming the case the reference belongs to.
    """
    clean = validate_submission(submission, allowed_regions=deps.allowed_regions)
    if submitted_at is not None and submitted_at > deps.clock() + MAX_CLOCK_SKEW:
        raise InvalidArgument(
            "submitted_at", f"is in the future (more than {int(MAX_CLOCK_SKEW.total_seconds() // 60)} minutes ahead)"
        )
    if clean.category is not None and clean.category not in CATEGORIES:
        raise InvalidArgument("category", f"must be one of {', '.join(CATEGORIES)}")
    key = idempotency_key(clean.channel, clean.channel_ref)
    try:
        return _register(clean, key, uow_factory=uow_factory, deps=deps, submitted_at=submitted_at)
    except SubmissionConflict:
        raise
    except AlreadyExists:
        # A concurrent retry committed the same key between our lookup and our insert:
        # the unique index decided, and the winner's case is the answer.
        if key is None:
            raise
        with uow_factory() as uow:
            existing = uow.find_by_idempotency_key(key)
        if existing is None:
            raise
        return SubmitResult(case=_same_submission(existing, clean), created=False)


class SubmissionConflict(AlreadyExists):
    """A channel reference already registered with other content: the client must not take it as a retry."""

    def __init__(self, case_id: str) -> None:
        super().__init__("case", case_id)
        self.message = f"case {case_id} already exists for this channel_ref with a different title or body"
        self.args = (self.message,)


def _same_submission(existing: Case, clean: Submission) -> Case:
    """``existing`` when ``clean`` is a true retry of it; otherwise ``SubmissionConflict``."""
    if existing.fingerprint:
        same = existing.fingerprint == dedup.fingerprint(dedup.submission_text(clean.title, clean.body))
    else:
        person = existing.complainant
        same = (person.title or existing.title, person.body or existing.body) == (clean.title, clean.body)
    if not same:
        raise SubmissionConflict(existing.case_id)
    return existing


@dataclass(frozen=True)
class _Resolved:
    """What is worked out from the text before the transaction opens (keeps the write lock short)."""

    category: str
    category_auto: bool
    region: str
    flags: tuple[str, ...]
    moderation: tuple[str, ...]
    fingerprint: str
    simhash: int
    # The free text as everybody but the complainant's readers gets it (personal data masked).
    title: personal_text.MaskedText
    body: personal_text.MaskedText
    place: str


def _resolve(clean: Submission, deps: IntakeDeps) -> _Resolved:
    text = f"{clean.title}\n{clean.body}"
    flags: list[str] = []
    category = clean.category or ""
    category_auto = False
    if not category:
        category = deps.categorise(text) or ""
        category_auto = bool(category)
        if category_auto:
            flags.append("category_auto")
        if category in ("", OTHER_CATEGORY):
            flags.append("category_unresolved")
    region = clean.region_code or ""
    if not region:
        region = deps.locate(f"{clean.place or clean.address or ''}\n{text}") or ""
    if not region:
        flags.append("place_unresolved")
    if clean.anonymous:
        flags.append("anonymous")
    if clean.publish_consent:
        flags.append(PUBLISH_CONSENT)
    if clean.no_progress_notices:
        flags.append(notices.OPT_OUT_FLAG)
    moderation = tuple(deps.screen.reasons(text))
    if moderation:
        flags.append("moderation")
    fingerprint, simhash = dedup.signature(dedup.submission_text(clean.title, clean.body))
    return _Resolved(
        category=category,
        category_auto=category_auto,
        region=region,
        flags=tuple(flags),
        moderation=moderation,
        fingerprint=fingerprint,
        simhash=simhash,
        title=personal_text.mask(clean.title),
        body=personal_text.mask(clean.body),
        place=personal_text.mask(clean.place or "").text,
    )


def _links(found: SubmitLookup, resolved: _Resolved, deps: IntakeDeps) -> tuple[str, str, tuple[str, ...]]:
    """(duplicate_of, repeat_of, extra flags) against the open cases of this node.

    An exact re-post (same normalised text) is a duplicate for merging (并单); the same person
    (blind index of phone or ID number) or a near-identical text (SimHash) is a repeat (重复件).
    """
    if found.duplicate is not None:
        return found.duplicate, "", ("duplicate",)
    if found.mine is not None:
        return "", found.mine, ("repeat",)
    near = min(((dedup.hamming(resolved.simhash, value), case_id) for case_id, value in found.near), default=None)
    if near is not None and near[0] <= deps.near_distance:
        return "", near[1], ("repeat",)
    return "", "", ()


def _register(
    clean: Submission,
    key: str | None,
    *,
    uow_factory: UnitOfWorkFactory,
    deps: IntakeDeps,
    submitted_at: datetime | None,
) -> SubmitResult:
    resolved = _resolve(clean, deps)
    now = deps.clock()
    rate_limited = deps.rate_limit and clean.channel not in RATE_EXEMPT_CHANNELS and (clean.phone or clean.id_number)
    with uow_factory() as uow:
        found = uow.submit_lookup(
            idempotency_key=key,
            phone=clean.phone or "",
            id_number=clean.id_number or "",
            since=now - deps.rate_window if rate_limited else None,
            fingerprint=resolved.fingerprint,
            simhash=resolved.simhash,
        )
        if found.existing is not None:
            return SubmitResult(case=_same_submission(found.existing, clean), created=False)
        if rate_limited and found.recent >= deps.rate_limit:
            raise ResourceExhausted(
                f"this submitter already sent {found.recent} requests in the last "
                f"{int(deps.rate_window.total_seconds() // 60)} minutes; try again later"
            )
        duplicate_of, repeat_of, link_flags = _links(found, resolved, deps)
        held = bool(resolved.moderation)
        registered_at = submitted_at or now
        day = china_date(registered_at)
        case = Case(
            case_id=format_case_id(deps.node, day, uow.next_case_number(day)),
            tracking_code=new_tracking_code(),
            channel=clean.channel,
            channel_ref=clean.channel_ref or "",
            title=resolved.title.text,
            body=resolved.body.text,
            category=resolved.category,
            region_code=resolved.region,
            registering_node=deps.node,
            owner_node=deps.node,
            state=CaseState.MODERATION if held else CaseState.REGISTERED,
            submitted_at=registered_at,
            updated_at=now,
            complainant=Complainant(
                name=clean.name or "",
                id_number=clean.id_number or "",
                phone=clean.phone or "",
                address=clean.address or "",
                # The originals are sealed with the complainant's data only when masking changed them.
                title=clean.title if resolved.title.changed else "",
                body=clean.body if resolved.body.changed else "",
            ),
            place=resolved.place,
            category_auto=resolved.category_auto,
            place_unresolved=not resolved.region,
            anonymous=clean.anonymous,
            repeat_of=repeat_of,
            duplicate_of=duplicate_of,
            flags=(*resolved.flags, *link_flags),
            hotline_operator_id=clean.hotline_operator_id or "",
            moderation_reasons=resolved.moderation,
            fingerprint=resolved.fingerprint,
            simhash=resolved.simhash,
        )
        if held:
            # Held, not dropped: nothing leaves intake until an operator releases it.
            summary = "已收到，待审核 received, awaiting screening"
            entry = TimelineEntry(case.case_id, now, CaseState.MODERATION, summary)
            uow.register(case, received_at=now, entry=entry, event=None)
        else:
            entry = TimelineEntry(case.case_id, now, CaseState.REGISTERED, "已登记 registered")
            uow.register(case, received_at=now, entry=entry, event=CaseRegistered(case))
        uow.commit()
    return SubmitResult(case=case, created=True)


# -- clerk side --------------------------------------------------------------------------------


def get_case(case_id: str, *, uow_factory: UnitOfWorkFactory) -> tuple[Case, list[TimelineEntry]]:
    with uow_factory() as uow:
        case = uow.get(case_id)
        if case is None:
            raise NotFound("case", case_id)
        return case, uow.timeline(case_id)


def _encode_token(payload: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode()


def _decode_token(token: str) -> object:
    try:
        return json.loads(base64.urlsafe_b64decode(token.encode()))
    except (ValueError, UnicodeDecodeError):
        raise InvalidArgument("page_token", "is not a token this server issued") from None


def page_size(requested: int) -> int:
    if requested < 0:
        raise InvalidArgument("page_size", "must not be negative")
    return min(requested or PAGE_DEFAULT, PAGE_MAX)


def check_region_filter(region: str | None, deps: IntakeDeps) -> frozenset[str] | None:
    if not region:
        return None
    if region not in deps.allowed_regions:
        raise InvalidArgument("region_code", f"{region} is not a region of node {deps.node}")
    return deps.regions_under(region)


def check_case_ids(case_ids: Sequence[str]) -> frozenset[str] | None:
    """The case-id filter of ListCases: None when empty, at most ``CASE_IDS_MAX`` ids."""
    if not case_ids:
        return None
    if len(case_ids) > CASE_IDS_MAX:
        raise InvalidArgument("case_ids", f"at most {CASE_IDS_MAX} ids, got {len(case_ids)}")
    return frozenset(case_ids)


def month_range(month: str) -> tuple[datetime, datetime]:
    """The instants a month "YYYY-MM" spans in China time, as [start, end)."""
    try:
        year, number = (int(part) for part in month.split("-"))
        start = datetime(year, number, 1, tzinfo=CHINA)
    except ValueError:
        raise InvalidArgument("month", f"must be YYYY-MM, got {month!r}") from None
    end = datetime(year + number // 12, number % 12 + 1, 1, tzinfo=CHINA)
    return start, end


@dataclass(frozen=True)
class CasePage:
    cases: list[Case]
    next_page_token: str
    total_size: int


def list_cases(
    filters: CaseFilter, *, page_token: str, size: int, uow_factory: UnitOfWorkFactory, count: bool = True
) -> CasePage:
    """Newest first; the token holds the last (submitted_at, case_id), so pages stay stable while
    new cases arrive (they sort before the first page, never into a later one). The total counts
    at most COUNT_LIMIT matches (-1 beyond); without ``count`` it is known only on a last page
    (-1 while there are more)."""
    after: tuple[datetime, str] | None = None
    if page_token:
        decoded = _decode_token(page_token)
        if not (isinstance(decoded, list) and len(decoded) == 2 and all(isinstance(v, str) for v in decoded)):
            raise InvalidArgument("page_token", "is not a token this server issued")
        try:
            after = (datetime.fromisoformat(decoded[0]), decoded[1])
        except ValueError:
            raise InvalidArgument("page_token", "is not a token this server issued") from None
    if filters.submitted_after and filters.submitted_before and filters.submitted_after >= filters.submitted_before:
        raise InvalidArgument("submitted_before", "must be later than submitted_after")
    with uow_factory() as uow:
        cases = uow.list_cases(filters, after=after, limit=size + 1)
        total = uow.count_cases(filters) if count else -1
    more = len(cases) > size
    if not count and not more:
        total = len(cases) if not page_token else -1
    cases = cases[:size]
    token = _encode_token([cases[-1].submitted_at.isoformat(), cases[-1].case_id]) if more else ""
    return CasePage(cases=cases, next_page_token=token, total_size=total)


# -- moderation --------------------------------------------------------------------------------


def moderation_queue(
    *, regions: frozenset[str] | None, page_token: str, size: int, uow_factory: UnitOfWorkFactory
) -> CasePage:
    after: str | None = None
    if page_token:
        decoded = _decode_token(page_token)
        if not isinstance(decoded, str):
            raise InvalidArgument("page_token", "is not a token this server issued")
        after = decoded
    with uow_factory() as uow:
        cases = uow.moderation_queue(regions=regions, after=after, limit=size + 1)
    more = len(cases) > size
    cases = cases[:size]
    return CasePage(cases=cases, next_page_token=_encode_token(cases[-1].case_id) if more else "", total_size=-1)


def decide_moderation(
    case_id: str,
    *,
    release: bool,
    note: str,
    actor: str,
    expected_version: int,
    uow_factory: UnitOfWorkFactory,
    deps: IntakeDeps,
) -> Case:
    """Release a held case (it is registered now, and CaseRegistered leaves) or reject it (REFUSED)."""
    if not case_id:
        raise InvalidArgument("case_id", "must be set")
    if not release and not note.strip():
        raise InvalidArgument("note", "a rejection needs a note saying why")
    now = deps.clock()
    with uow_factory() as uow:
        case = uow.get(case_id)
        if case is None:
            raise NotFound("case", case_id)
        if expected_version and expected_version != case.version:
            raise Conflict(f"case {case_id} is at version {case.version}, not {expected_version}")
        if case.state is not CaseState.MODERATION:
            raise FailedPrecondition("only a case held for screening can be released or rejected", case.state.value)
        if release:
            # The version stays: no event left while it was held, so CaseRegistered is its first.
            changed = replace(case, state=CaseState.REGISTERED, updated_at=now).with_flag("moderation_released")
            uow.save(changed, expected_version=case.version)
            uow.add_timeline(TimelineEntry(case_id, now, CaseState.REGISTERED, "已登记 registered"))
            uow.emit(CaseRegistered(changed))
        else:
            changed = replace(case, state=CaseState.REFUSED, updated_at=now).with_flag("moderation_rejected")
            uow.save(changed, expected_version=case.version)
            uow.add_timeline(TimelineEntry(case_id, now, CaseState.REFUSED, "不予登记 not registered"))
        uow.commit()
    return changed


# -- citizen side ------------------------------------------------------------------------------


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


# -- what routing tells us ---------------------------------------------------------------------


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


def set_progress_notices(
    tracking_code: str, phone_last4: str, *, enabled: bool, uow_factory: UnitOfWorkFactory, deps: IntakeDeps
) -> Case:
    """The citizen turns progress notices off (or on again) with the tracking code; later steps follow it."""
    with uow_factory() as uow:
        case = _authenticate(uow, tracking_code, phone_last4, deps)
        flags = tuple(f for f in case.flags if f != notices.OPT_OUT_FLAG)
        if not enabled:
            flags = (*flags, notices.OPT_OUT_FLAG)
        if flags != case.flags:
            case = replace(case, flags=flags)
            uow.save(case, expected_version=case.version)
            uow.commit()
    return case


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
