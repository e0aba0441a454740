"""Intake's use cases over an in-memory unit of work: the rules a citizen notices, without a database.

The same behaviour runs on SQLite and PostgreSQL in tests/integration/test_intake_service.py; these
are the fast layer of the pyramid (cosmicpython's "unit tests with a fake unit of work").
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.common.errors import InvalidArgument, NotFound, ResourceExhausted
from services.intake import handlers
from services.intake.domain import Case, CaseRegistered, CaseState, ProgressNoticesSet
from services.intake.handlers import HandlingChange
from services.intake.notices import OPT_OUT_FLAG
from services.intake.validation import Submission
from tests.support.intake import FakeIntakeStore, FakeIntakeUnitOfWork

NOW = datetime(2026, 11, 23, 2, 0, tzinfo=UTC)  # 10:00 in Sichuan


def deps(**overrides: object) -> handlers.IntakeDeps:
    options: dict[str, object] = {
        "node": "511102",
        "allowed_regions": frozenset({"511102"}),
        "categorise": lambda text: "城乡建设",
        "locate": lambda text: "511102",
        "clock": lambda: NOW,
        **overrides,
    }
    return handlers.IntakeDeps(**options)  # type: ignore[arg-type]


def lamp(ref: str, phone: str = "13912345678") -> Submission:
    return Submission(
        channel="web",
        channel_ref=ref,
        title="路灯不亮",
        body="乐山市市中区嘉州大道路段路灯长期不亮，夜间出行不安全。",
        phone=phone,
        name="张三",
    )


def test_a_submission_is_registered_once_and_a_retry_returns_the_same_case() -> None:
    store = FakeIntakeStore()
    first = handlers.submit_case(lamp("web-1"), uow_factory=store.unit_of_work, deps=deps())
    again = handlers.submit_case(lamp("web-1"), uow_factory=store.unit_of_work, deps=deps())
    assert first.created and not again.created and again.case.case_id == first.case.case_id
    assert first.case.case_id.startswith("511102-20261123-")
    assert first.case.category == "城乡建设" and first.case.state is CaseState.REGISTERED
    assert [type(e) for e in store.events] == [CaseRegistered]
    assert [e.case_id for e in store.timeline] == [first.case.case_id]


def test_bad_input_names_the_field_and_registers_nothing() -> None:
    store = FakeIntakeStore()
    with pytest.raises(InvalidArgument) as refused:
        handlers.submit_case(
            Submission(channel="web", channel_ref="web-2", title="", body="正文", phone="13912345678"),
            uow_factory=store.unit_of_work,
            deps=deps(),
        )
    assert refused.value.field == "title"
    assert store.cases == {} and store.events == []


def test_the_per_submitter_limit_stops_the_sixth_case_within_the_hour() -> None:
    store = FakeIntakeStore()
    for n in range(5):
        handlers.submit_case(lamp(f"web-{n}"), uow_factory=store.unit_of_work, deps=deps())
    with pytest.raises(ResourceExhausted):
        handlers.submit_case(lamp("web-5"), uow_factory=store.unit_of_work, deps=deps())
    later = deps(clock=lambda: NOW + timedelta(hours=2))
    assert handlers.submit_case(lamp("web-6"), uow_factory=store.unit_of_work, deps=later).created


def test_tracking_needs_the_code_and_the_last_four_digits_of_the_phone() -> None:
    store = FakeIntakeStore()
    case = handlers.submit_case(lamp("web-7"), uow_factory=store.unit_of_work, deps=deps()).case
    seen = handlers.track_case(case.tracking_code, "5678", uow_factory=store.unit_of_work, deps=deps())
    assert seen.case.case_id == case.case_id and not seen.can_evaluate and seen.can_withdraw
    with pytest.raises(NotFound):
        handlers.track_case(case.tracking_code, "0000", uow_factory=store.unit_of_work, deps=deps())


def test_turning_progress_notices_off_and_on_is_an_event_stats_counts() -> None:
    store = FakeIntakeStore()
    case = handlers.submit_case(lamp("web-8"), uow_factory=store.unit_of_work, deps=deps()).case

    def choose(enabled: bool) -> Case:
        return handlers.set_progress_notices(
            case.tracking_code, "5678", enabled=enabled, uow_factory=store.unit_of_work, deps=deps()
        )

    off, again, on = choose(False), choose(False), choose(True)
    choices = [(e.enabled, e.case.version) for e in store.events if isinstance(e, ProgressNoticesSet)]
    # Each change its own version (stats keeps one event per version); asking twice changes nothing.
    assert choices == [(False, case.version + 1), (True, case.version + 2)]
    assert again.version == off.version and on.version == case.version + 2


def test_opting_out_while_routing_accepts_the_case_keeps_both() -> None:
    """Routing's acceptance is applied to the case between the opt-out's read and its write (CI saw the
    citizen answered ABORTED): the opt-out is decided again on the accepted case, as a rating would be."""
    store = FakeIntakeStore()
    case = handlers.submit_case(lamp("web-9"), uow_factory=store.unit_of_work, deps=deps()).case
    accepted = HandlingChange(
        case_id=case.case_id,
        version=2,
        action="accept",
        to_state=CaseState.ACCEPTED,
        work_order_id="wo-1",
        unit_id="lszq-sthjj",
        at=NOW,
    )

    raced: list[bool] = []

    class AcceptedMeanwhile(FakeIntakeUnitOfWork):
        def get_by_tracking_code(self, code: str) -> tuple[Case, str] | None:
            found = super().get_by_tracking_code(code)
            if not raced:  # the first attempt only: the consumer commits after this read
                raced.append(True)
                consumer = store.unit_of_work()
                assert handlers.apply_handling_change(accepted, consumer)
                consumer.commit()
            return found

    chosen = handlers.set_progress_notices(
        case.tracking_code, "5678", enabled=False, uow_factory=lambda: AcceptedMeanwhile(store), deps=deps()
    )
    kept = store.cases[case.case_id]
    assert kept == chosen and OPT_OUT_FLAG in kept.flags and kept.state is CaseState.ACCEPTED
    assert [e.enabled for e in store.events if isinstance(e, ProgressNoticesSet)] == [False]
