"""Requests to intake that several test modules build, and intake's unit of work in memory."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from lianxin.common.v1 import common_pb2
from lianxin.intake.v1 import intake_service_pb2 as intake_pb2
from lianxin.intake.v1 import intake_service_pb2_grpc as intake_grpc

from services.common.errors import AlreadyExists, Conflict
from services.intake.domain import Case, CaseRegistered, CommandForOwner, DomainEvent, TimelineEntry
from services.intake.notices import Notice, NoticeStatus
from services.intake.ports import CaseFilter, SubmitLookup
from tests.support.helpers import wait_until


def submit_request(ref: str, **overrides: object) -> intake_pb2.SubmitCaseRequest:
    fields: dict[str, object] = dict(
        channel=common_pb2.CHANNEL_HOTLINE,
        channel_ref=ref,
        title="小区门口夜间施工噪音扰民",
        body="乐山市市中区嘉州大道某小区门口夜间施工，噪音扰民，希望有关部门处理。",
        category="环境保护",
        region_code="511102",
        hotline_operator_id="op-007",
        complainant=common_pb2.Person(name="张三", phone="13812345678"),
    )
    fields.update(overrides)
    return intake_pb2.SubmitCaseRequest(**fields)  # type: ignore[arg-type]


def submitted_and_assigned(channel: Any, metadata: tuple[tuple[str, str], ...], ref: str, **overrides: object) -> str:
    """The id of a case submitted over ``channel``, once routing has accepted and assigned it (it does
    so on its own, after SubmitCase answers): a test comparing two reads of it then reads the same."""
    intake = intake_grpc.IntakeServiceStub(channel)
    case_id = str(intake.SubmitCase(submit_request(ref, **overrides), metadata=metadata, timeout=10).case.case_id)
    wait_until(
        lambda: (
            intake.GetCase(intake_pb2.GetCaseRequest(case_id=case_id), metadata=metadata, timeout=5).case.state
            == common_pb2.CASE_STATE_ASSIGNED
        ),
        timeout=20,
        message=f"case {case_id} assigned",
    )
    return case_id


class FakeIntakeUnitOfWork:
    """``IntakeUnitOfWork`` in memory: intake's handlers tested without a database (fast, no I/O).

    Writes land in the shared ``FakeIntakeStore`` only on ``commit``; a unit left without committing
    changes nothing, as a rolled-back transaction would.
    """

    def __init__(self, store: FakeIntakeStore) -> None:
        self.store = store
        self._cases: dict[str, Case] = {}
        self._timeline: list[TimelineEntry] = []
        self._events: list[DomainEvent] = []
        self._commands: list[CommandForOwner] = []
        self._notices: list[Notice] = []
        self._evaluations: list[dict[str, object]] = []

    def __enter__(self) -> FakeIntakeUnitOfWork:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def _all(self) -> dict[str, Case]:
        return {**self.store.cases, **self._cases}

    def find_by_idempotency_key(self, key: str) -> Case | None:
        return next((c for c in self._all().values() if c.idempotency_key == key), None)

    def get(self, case_id: str) -> Case | None:
        return self._all().get(case_id)

    def get_by_tracking_code(self, code: str) -> tuple[Case, str] | None:
        case = next((c for c in self._all().values() if c.tracking_code == code), None)
        return None if case is None else (case, case.complainant.phone[-4:] if case.complainant.phone else "")

    def next_case_number(self, day: object) -> int:
        self.store.numbers[day] = self.store.numbers.get(day, 0) + 1
        return self.store.numbers[day]

    def register(
        self, case: Case, *, received_at: datetime, entry: TimelineEntry, event: CaseRegistered | None
    ) -> None:
        if case.idempotency_key and self.find_by_idempotency_key(case.idempotency_key) is not None:
            raise AlreadyExists("case", "idempotency key")
        self._cases[case.case_id] = case
        self._timeline.append(entry)
        if event is not None:
            self._events.append(event)
        self.commit()

    def save(self, case: Case, *, expected_version: int) -> None:
        stored = self.get(case.case_id)
        if stored is None or stored.version != expected_version:
            raise Conflict(f"case {case.case_id} changed meanwhile")
        self._cases[case.case_id] = case

    def add_timeline(self, entry: TimelineEntry) -> None:
        self._timeline.append(entry)

    def add_notice(self, notice: Notice) -> bool:
        if any(n.notice_id == notice.notice_id for n in [*self.store.notices, *self._notices]):
            return False
        self._notices.append(notice)
        return True

    def notices(self, case_id: str) -> list[NoticeStatus]:
        return []

    def timeline(self, case_id: str) -> list[TimelineEntry]:
        return [e for e in [*self.store.timeline, *self._timeline] if e.case_id == case_id]

    def add_evaluation(
        self, *, evaluation_id: str, case_id: str, reply_number: int, satisfaction: str, comment: str, at: datetime
    ) -> None:
        self._evaluations.append({"evaluation_id": evaluation_id, "case_id": case_id, "satisfaction": satisfaction})

    def emit(self, event: DomainEvent) -> None:
        self._events.append(event)

    def send_command(self, command: CommandForOwner) -> None:
        self._commands.append(command)

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
        cases = list(self._all().values())
        mine = [c for c in cases if phone and c.complainant.phone == phone]
        return SubmitLookup(
            existing=self.find_by_idempotency_key(idempotency_key) if idempotency_key else None,
            recent=sum(1 for c in mine if since is not None and c.submitted_at >= since),
        )

    def open_case_with_fingerprint(self, fingerprint: str) -> str | None:
        return None

    def open_cases_of_person(self, *, phone: str, id_number: str) -> list[str]:
        return []

    def open_cases_near(self, simhash: int) -> list[tuple[str, int]]:
        return []

    def list_cases(self, filters: CaseFilter, *, after: tuple[datetime, str] | None, limit: int) -> list[Case]:
        return sorted(self._all().values(), key=lambda c: (c.submitted_at, c.case_id))[:limit]

    def count_cases(self, filters: CaseFilter) -> int:
        return len(self._all())

    def moderation_queue(self, *, regions: frozenset[str] | None, after: str | None, limit: int) -> list[Case]:
        return []

    def commit(self) -> None:
        self.store.cases.update(self._cases)
        self.store.timeline += self._timeline
        self.store.events += self._events
        self.store.commands += self._commands
        self.store.notices += self._notices
        self.store.evaluations += self._evaluations
        self._cases, self._timeline, self._events, self._commands = {}, [], [], []
        self._notices, self._evaluations = [], []


@dataclass
class FakeIntakeStore:
    """What the fake units of work committed: cases, timeline, events, commands, notices."""

    cases: dict[str, Case] = field(default_factory=dict)
    timeline: list[TimelineEntry] = field(default_factory=list)
    events: list[DomainEvent] = field(default_factory=list)
    commands: list[CommandForOwner] = field(default_factory=list)
    notices: list[Notice] = field(default_factory=list)
    evaluations: list[dict[str, object]] = field(default_factory=list)
    numbers: dict[object, int] = field(default_factory=dict)

    def unit_of_work(self) -> FakeIntakeUnitOfWork:
        return FakeIntakeUnitOfWork(self)
