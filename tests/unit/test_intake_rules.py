"""The citizen-side rules of intake's domain: rating once per reply, review within 30 days, withdrawal."""

from __future__ import annotations

import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from services.common.errors import Conflict, FailedPrecondition
from services.intake import dedup
from services.intake.domain import (
    CATEGORIES,
    Case,
    CaseState,
    can_evaluate,
    can_request_review,
    can_withdraw,
)
from services.intake.handlers import CONFLICT_ATTEMPTS, retry_on_conflict
from services.intake.relay_wake import CoalescedNotify
from tests.support.helpers import wait_until

NOW = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)
CASE = Case(
    case_id="511102-20261122-000001",
    tracking_code="22222-22222X",
    channel="web",
    channel_ref="r",
    title="t",
    body="b",
    category="城乡建设",
    region_code="511102",
    registering_node="511102",
    owner_node="511102",
    state=CaseState.REGISTERED,
    submitted_at=NOW,
    updated_at=NOW,
)
REPLIED = replace(CASE, state=CaseState.REPLIED, reply_count=1, replied_at=NOW)


def test_one_category_vocabulary_for_intake_the_model_routing_and_stats() -> None:
    from bench.stats.generate import CATEGORIES as GENERATED_CATEGORIES
    from services.common import categories
    from services.intake.classifier import CATEGORIES as MODEL_CATEGORIES
    from services.routing.domain.timelimits import CATEGORIES as ROUTING_CATEGORIES

    # The model learns the seven subject categories; a case may also carry 其他, and so may a routing
    # catalogue, a time-limit policy or a statistics fact: eight in all, written out once.
    assert MODEL_CATEGORIES == categories.SUBJECT_CATEGORIES and len(MODEL_CATEGORIES) == 7
    assert CATEGORIES == ROUTING_CATEGORIES == GENERATED_CATEGORIES == (*MODEL_CATEGORIES, "其他")


def test_rating_needs_a_reply_and_is_once_per_reply() -> None:
    assert not can_evaluate(CASE)
    assert can_evaluate(REPLIED)
    assert not can_evaluate(replace(REPLIED, evaluated_reply=1))
    assert can_evaluate(replace(REPLIED, evaluated_reply=1, reply_count=2))
    assert not can_evaluate(replace(REPLIED, state=CaseState.REOPENED))
    assert can_evaluate(replace(REPLIED, state=CaseState.CLOSED))


@pytest.mark.parametrize(
    ("after", "allowed"), [(timedelta(0), True), (timedelta(days=30), True), (timedelta(days=30, seconds=1), False)]
)
def test_review_is_open_for_30_days_after_the_reply(after: timedelta, allowed: bool) -> None:
    assert can_request_review(REPLIED, NOW + after) is allowed


def test_review_is_once_per_reply_and_needs_a_reply() -> None:
    assert not can_request_review(CASE, NOW)
    assert not can_request_review(replace(REPLIED, review_reply=1), NOW)


@pytest.mark.parametrize("state", list(CaseState))
def test_withdrawal_only_while_the_case_is_open_and_unanswered(state: CaseState) -> None:
    expected = state not in {
        CaseState.REPLIED,
        CaseState.CLOSED,
        CaseState.WITHDRAWN,
        CaseState.MERGED,
        CaseState.REFUSED,
    }
    assert can_withdraw(replace(CASE, state=state)) is expected


def test_a_burst_of_commits_wakes_the_relay_once_now_and_once_after() -> None:
    wakes: list[int] = []
    notify = CoalescedNotify(lambda: wakes.append(1), interval_s=0.5)
    for _ in range(200):
        notify()
    # The first commit wakes the relay at once; the rest share one trailing wake, so the last
    # commit's event is never left for the slow poll.
    assert 1 <= len(wakes) <= 2
    wait_until(lambda: len(wakes) == 2, timeout=5.0, message="the trailing wake")
    assert len(wakes) == 2


def test_commits_after_a_quiet_spell_still_get_their_trailing_wake() -> None:
    wakes: list[int] = []
    notify = CoalescedNotify(lambda: wakes.append(1), interval_s=0.05, idle_s=0.05)
    for burst in (1, 2):
        for _ in range(50):
            notify()
        # Each burst: one wake at once, one after the interval for the commits that followed.
        wait_until(lambda burst=burst: len(wakes) == 2 * burst, timeout=5.0, message=f"burst {burst}'s wakes")
        # The helper thread ends when nothing comes; the next burst must start a new one.
        wait_until(
            lambda: not any(t.name == "intake-relay-wake" for t in threading.enumerate()),
            timeout=5.0,
            message="the idle wake thread to end",
        )
    assert len(wakes) == 4


def test_a_citizen_request_that_lost_a_race_with_the_handling_is_decided_again() -> None:
    """Routing's handling changed the case between the request's read and write: re-read and decide again."""
    attempts: list[int] = []

    def once_raced() -> str:
        attempts.append(1)
        if len(attempts) == 1:
            raise Conflict("case 511102-20261122-000001 changed since it was read")
        return "recorded"

    assert retry_on_conflict(once_raced) == "recorded" and len(attempts) == 2

    def always_raced() -> str:
        attempts.append(1)
        raise Conflict("case 511102-20261122-000001 changed since it was read")

    attempts.clear()
    with pytest.raises(Conflict):  # the caller answers ABORTED after the last attempt
        retry_on_conflict(always_raced)
    assert len(attempts) == CONFLICT_ATTEMPTS

    def refused() -> str:
        attempts.append(1)
        raise FailedPrecondition("this reply was already rated")

    attempts.clear()
    with pytest.raises(FailedPrecondition):  # a refusal is the answer, not a race: no second attempt
        retry_on_conflict(refused)
    assert len(attempts) == 1


def test_stored_simhashes_stay_comparable() -> None:
    # Version 2 values (dedup.SIMHASH_VERSION; intake migration 0002 recomputed the version 1 ones).
    # A different value here would stop new submissions from matching every case already stored:
    # change the hash only together with a migration that recomputes the stored values.
    assert dedup.SIMHASH_VERSION == 2
    body = "乐山市市中区嘉州大道路段路灯长期不亮，夜间出行不安全，请尽快维修。"
    text = dedup.submission_text("嘉州大道路灯不亮", body)
    assert dedup.simhash(text) == 0x429CE4D651E9512A
    assert dedup.signature(text) == (
        "87208066bc89855b928e7cf5c544a5b6810ed311cc560df7f61bb27ce1ecb19b",
        0x429CE4D651E9512A,
    )
    assert dedup.simhash("ab") == 0xC64ABCEAD9C0DD73 and dedup.simhash("") == 0
