"""What intake's use cases need: the unit-of-work Protocol (``store.SqlIntakeUnitOfWork`` implements it),
the dependencies a node gives them, the list filter, and the limits they apply.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from services.intake import dedup, notices
from services.intake.domain import (
    Case,
    CaseRegistered,
    CaseState,
    CommandForOwner,
    DomainEvent,
    TimelineEntry,
)
from services.intake.screening import AttemptLimiter, Screen

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
