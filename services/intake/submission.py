"""SubmitCase as a use case: validate, screen, resolve duplicates and repeats, register (once per idempotency key)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from services.common import personal_text
from services.common.errors import (
    AlreadyExists,
    InvalidArgument,
    ResourceExhausted,
)
from services.common.ids import format_case_id
from services.common.timeutil import china_date
from services.intake import dedup, notices
from services.intake.domain import (
    CATEGORIES,
    OTHER_CATEGORY,
    Case,
    CaseRegistered,
    CaseState,
    Complainant,
    TimelineEntry,
    idempotency_key,
)
from services.intake.ports import (
    MAX_CLOCK_SKEW,
    PUBLISH_CONSENT,
    RATE_EXEMPT_CHANNELS,
    IntakeDeps,
    SubmitLookup,
    UnitOfWorkFactory,
)
from services.intake.tracking import new_tracking_code
from services.intake.validation import Submission, validate_submission


@dataclass(frozen=True)
class SubmitResult:
    case: Case
    created: bool


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
