"""Reading cases: one case, pages of cases with their filter, the moderation queue and its decisions."""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from services.common.errors import (
    Conflict,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from services.common.timeutil import CHINA
from services.intake.domain import (
    Case,
    CaseRegistered,
    CaseState,
    TimelineEntry,
)
from services.intake.ports import (
    CASE_IDS_MAX,
    PAGE_DEFAULT,
    PAGE_MAX,
    CaseFilter,
    IntakeDeps,
    UnitOfWorkFactory,
)


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
