"""Intake's use cases as plain functions over a unit of work (no gRPC, SQLAlchemy or nameko here)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from services.common.errors import AlreadyExists, NotFound
from services.common.ids import format_case_id
from services.common.timeutil import china_date
from services.intake.domain import Case, CaseRegistered, CaseState, Complainant, TimelineEntry, idempotency_key
from services.intake.tracking import new_tracking_code
from services.intake.validation import Submission, validate_submission


class IntakeUnitOfWork(Protocol):
    """What intake's handlers need from storage; ``store.SqlIntakeUnitOfWork`` implements it."""

    def find_by_idempotency_key(self, key: str) -> Case | None: ...

    def get(self, case_id: str) -> Case | None: ...

    def next_case_number(self, day: object) -> int: ...

    def add(self, case: Case) -> None: ...

    def add_timeline(self, entry: TimelineEntry) -> None: ...

    def emit(self, event: CaseRegistered) -> None: ...

    def commit(self) -> None: ...


UnitOfWorkFactory = Callable[[], AbstractContextManager[IntakeUnitOfWork]]


class Categoriser(Protocol):
    def __call__(self, text: str) -> str | None: ...


class Locator(Protocol):
    def __call__(self, text: str) -> str | None: ...


@dataclass(frozen=True)
class IntakeDeps:
    """The node-specific collaborators a submit needs."""

    node: str
    allowed_regions: frozenset[str]
    categorise: Categoriser
    locate: Locator
    clock: Callable[[], datetime]


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
    """Register a submission once; a retry with the same channel reference returns the same case."""
    clean = validate_submission(submission, allowed_regions=deps.allowed_regions)
    key = idempotency_key(clean.channel, clean.channel_ref)
    try:
        return _register(clean, key, uow_factory=uow_factory, deps=deps, submitted_at=submitted_at)
    except AlreadyExists:
        # A concurrent retry committed the same key between our lookup and our insert:
        # the unique index decided, and the winner's case is the answer.
        if key is None:
            raise
        with uow_factory() as uow:
            existing = uow.find_by_idempotency_key(key)
        if existing is None:
            raise
        return SubmitResult(case=existing, created=False)


def _register(
    clean: Submission,
    key: str | None,
    *,
    uow_factory: UnitOfWorkFactory,
    deps: IntakeDeps,
    submitted_at: datetime | None,
) -> SubmitResult:
    now = deps.clock()
    with uow_factory() as uow:
        if key is not None:
            existing = uow.find_by_idempotency_key(key)
            if existing is not None:
                return SubmitResult(case=existing, created=False)
        text = f"{clean.title}\n{clean.body}"
        flags: list[str] = []
        category = clean.category or ""
        category_auto = False
        if not category:
            category = deps.categorise(text) or ""
            category_auto = bool(category)
            flags.append("category_auto" if category else "category_unresolved")
        region = clean.region_code or ""
        if not region:
            region = deps.locate(f"{clean.address or ''}\n{text}") or ""
        place_unresolved = not region
        if place_unresolved:
            flags.append("place_unresolved")
        if clean.anonymous:
            flags.append("anonymous")
        registered_at = submitted_at or now
        day = china_date(registered_at)
        case = Case(
            case_id=format_case_id(deps.node, day, uow.next_case_number(day)),
            tracking_code=new_tracking_code(),
            channel=clean.channel,
            channel_ref=clean.channel_ref or "",
            title=clean.title,
            body=clean.body,
            category=category,
            region_code=region,
            registering_node=deps.node,
            owner_node=deps.node,
            state=CaseState.REGISTERED,
            submitted_at=registered_at,
            updated_at=now,
            complainant=Complainant(
                name=clean.name or "",
                id_number=clean.id_number or "",
                phone=clean.phone or "",
                address=clean.address or "",
            ),
            category_auto=category_auto,
            place_unresolved=place_unresolved,
            anonymous=clean.anonymous,
            flags=tuple(flags),
            hotline_operator_id=clean.hotline_operator_id or "",
        )
        uow.add(case)
        uow.add_timeline(TimelineEntry(case.case_id, now, CaseState.REGISTERED, "已登记 registered"))
        uow.emit(CaseRegistered(case))
        uow.commit()
    return SubmitResult(case=case, created=True)


def get_case(case_id: str, *, uow_factory: UnitOfWorkFactory) -> Case:
    with uow_factory() as uow:
        case = uow.get(case_id)
    if case is None:
        raise NotFound("case", case_id)
    return case
