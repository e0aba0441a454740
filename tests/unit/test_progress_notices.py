"""办事进度推送: which steps notify, the Chinese texts, masking, the retry schedule, and the outbox sender
on a real SQLite database (retries, give-up with its metric, a sent notice never sent again)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
import sqlalchemy as sa
from prometheus_client import REGISTRY
from sqlalchemy.orm import Session, sessionmaker

from services.intake.models import ProgressNoticeRow, metadata
from services.intake.notice_sender import CLAIM, FileChannel, send_due
from services.intake.notices import (
    NOTICE_KINDS,
    SMS_TEMPLATES,
    ChannelFailure,
    NoticeSettled,
    OutgoingMessage,
    RetryPolicy,
    mask_phone,
    notice_for,
)

AT = datetime(2026, 12, 7, 2, 0, tzinfo=UTC)
CASE = "511102-20261207-000001"


def test_the_five_steps_notify_and_nothing_else() -> None:
    kinds = {
        action: notice.kind
        for action in ("accept", "transfer", "escalate_up", "reply", "reopen", "close", "assign", "extend", "note")
        if (
            notice := notice_for(
                case_id=CASE,
                version=3,
                action=action,
                channel="web",
                at=AT,
                opted_out=False,
                has_phone=True,
            )
        )
    }
    assert kinds == {
        "accept": "accepted",
        "transfer": "handed_on",
        "escalate_up": "handed_on",
        "reply": "replied",
        "reopen": "reopened",
        "close": "closed",
    }
    assert set(NOTICE_KINDS.values()) == set(SMS_TEMPLATES)
    # A unit's 签收 of a case assigned to it is not the citizen's 受理: told once, by the office's accept.
    signed = notice_for(
        case_id=CASE,
        version=9,
        action="accept",
        told=frozenset({"accepted"}),
        channel="web",
        at=AT,
        opted_out=False,
        has_phone=True,
    )
    assert signed is None


def test_opted_out_or_without_phone_no_notice_and_wechat_submissions_get_wechat() -> None:
    args = {"case_id": CASE, "version": 4, "action": "reply", "at": AT}
    assert notice_for(**args, channel="web", opted_out=True, has_phone=True) is None  # type: ignore[arg-type]
    assert notice_for(**args, channel="web", opted_out=False, has_phone=False) is None  # type: ignore[arg-type]
    sms = notice_for(**args, channel="hotline", opted_out=False, has_phone=True)  # type: ignore[arg-type]
    wechat = notice_for(**args, channel="wechat", opted_out=False, has_phone=True)  # type: ignore[arg-type]
    assert sms is not None and wechat is not None
    assert (sms.channel, wechat.channel) == ("sms", "wechat")
    assert sms.notice_id == f"{CASE}/4"  # one notice per routing event: a redelivery makes the same id
    assert sms.text == f"【连心】您反映的事项（编号{CASE}）已答复，请凭查询码查看并评价。"


def test_texts_fit_one_sms_and_phones_are_masked() -> None:
    for kind in SMS_TEMPLATES:
        assert len(SMS_TEMPLATES[kind].format(case=CASE)) <= 70, kind
    assert mask_phone("13812345678") == "138****5678"
    assert mask_phone("12345") == "*****"


def test_retries_double_then_give_up() -> None:
    policy = RetryPolicy(max_attempts=4, first_delay=timedelta(seconds=30))
    assert [policy.next_attempt(n, AT) for n in (1, 2, 3, 4)] == [
        AT + timedelta(seconds=30),
        AT + timedelta(seconds=60),
        AT + timedelta(seconds=120),
        None,
    ]


class Flaky:
    """Fails the first ``failures`` attempts of every notice, then delivers."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.attempts: dict[str, int] = {}
        self.delivered: list[OutgoingMessage] = []

    def send(self, message: OutgoingMessage) -> None:
        self.attempts[message.notice_id] = self.attempts.get(message.notice_id, 0) + 1
        if self.attempts[message.notice_id] <= self.failures:
            raise ChannelFailure("gateway timeout")
        self.delivered.append(message)


@pytest.fixture
def factory(tmp_path: Path) -> sessionmaker:  # type: ignore[type-arg]
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'intake.db'}")
    metadata.create_all(engine)
    return sessionmaker(engine)


def queue(factory: sessionmaker, notice_id: str, channel: str = "sms") -> None:  # type: ignore[type-arg]
    notice = notice_for(
        case_id=CASE, version=int(notice_id), action="reply", channel=channel, at=AT, opted_out=False, has_phone=True
    )
    assert notice is not None
    with factory() as session, session.begin():
        session.add(
            ProgressNoticeRow(
                notice_id=notice.notice_id,
                case_id=CASE,
                kind=notice.kind,
                channel=notice.channel,
                text=notice.text,
                created_at=AT,
                state="pending",
                attempts=0,
                next_attempt_at=AT,
                last_error="",
            )
        )


def states(factory: sessionmaker) -> dict[str, tuple[str, int]]:  # type: ignore[type-arg]
    with factory() as session:
        return {r.notice_id: (r.state, r.attempts) for r in session.scalars(sa.select(ProgressNoticeRow))}


def citizen(case_id: str) -> object:
    return SimpleNamespace(complainant=SimpleNamespace(phone="13812345678"))


def given_up() -> float:
    return (
        REGISTRY.get_sample_value("lianxin_intake_progress_notices_total", {"channel": "sms", "outcome": "given_up"})
        or 0.0
    )


def test_the_sender_retries_on_schedule_gives_up_after_the_last_attempt_and_never_resends(
    factory: sessionmaker[Session],
) -> None:
    policy = RetryPolicy(max_attempts=3, first_delay=timedelta(seconds=30))
    queue(factory, "5")
    channel = Flaky(failures=2)

    def run(at: datetime) -> dict[str, int]:
        return send_due(factory, case_of=citizen, channel=channel, now=at, policy=policy)  # type: ignore[arg-type]

    assert run(AT)["retry"] == 1
    assert run(AT + timedelta(seconds=29))["retry"] == 0  # not due yet
    assert run(AT + timedelta(seconds=30))["retry"] == 1
    assert run(AT + timedelta(seconds=90))["sent"] == 1
    assert states(factory) == {f"{CASE}/5": ("sent", 3)}
    assert run(AT + timedelta(days=1)) == {"sent": 0, "retry": 0, "given_up": 0, "skipped": 0}
    assert [m.notice_id for m in channel.delivered] == [f"{CASE}/5"]
    assert channel.delivered[0].recipient == "13812345678"

    before = given_up()
    queue(factory, "6")
    broken = Flaky(failures=99)
    for minutes in (0, 1, 3, 10):
        send_due(factory, case_of=citizen, channel=broken, now=AT + timedelta(minutes=minutes), policy=policy)  # type: ignore[arg-type]
    assert states(factory)[f"{CASE}/6"] == ("given_up", 3)
    assert broken.attempts == {f"{CASE}/6": 3}
    assert given_up() == before + 1


def test_the_embedded_channel_writes_a_line_with_the_phone_masked(tmp_path: Path, factory: sessionmaker) -> None:  # type: ignore[type-arg]
    queue(factory, "7", channel="wechat")
    path = tmp_path / "511102" / "progress_notices.jsonl"
    send_due(factory, case_of=citizen, channel=FileChannel(path), now=AT, policy=RetryPolicy())  # type: ignore[arg-type]
    text = path.read_text(encoding="utf-8")
    assert "138****5678" in text and "13812345678" not in text
    assert "已答复" in text and '"channel": "wechat"' in text


def test_a_notice_that_ends_is_reported_once_with_its_outcome_and_no_personal_data(
    factory: sessionmaker[Session],
) -> None:
    """The hook intake's app writes the ``progress_notice_settled`` event with, in the same transaction."""
    policy = RetryPolicy(max_attempts=2, first_delay=timedelta(seconds=30))
    queue(factory, "8")
    queue(factory, "9")
    ended: list[NoticeSettled] = []

    def run(at: datetime, channel: Flaky) -> None:
        send_due(
            factory, case_of=citizen, channel=channel, now=at, policy=policy,  # type: ignore[arg-type]
            on_settled=lambda session, end, case: ended.append(end),
        )  # fmt: skip

    run(AT, Flaky(failures=1))  # both fail once: retries are not an end
    assert ended == []
    run(AT + timedelta(seconds=30), Flaky(failures=0))
    assert [(e.notice_id, e.outcome, e.attempts, e.step_version) for e in ended] == [
        (f"{CASE}/8", "sent", 2, 8),
        (f"{CASE}/9", "sent", 2, 9),
    ]
    queue(factory, "10")
    for seconds in (60, 90):
        run(AT + timedelta(seconds=seconds), Flaky(failures=99))
    assert [(e.notice_id, e.outcome, e.attempts) for e in ended[2:]] == [(f"{CASE}/10", "given_up", 2)]
    assert "13812345678" not in repr(ended)


def test_a_claimed_notice_is_left_to_its_sender_until_the_claim_expires(factory: sessionmaker[Session]) -> None:
    """Another sender running while the first sends finds nothing due; after ``CLAIM`` (a crashed
    sender's claim) it takes the notice again. The claim is one prebuilt update per due notice."""
    queue(factory, "11")
    policy = RetryPolicy()
    seen: list[dict[str, int]] = []

    class Overlapped(Flaky):
        def send(self, message: OutgoingMessage) -> None:
            for at in (AT, AT + CLAIM):
                seen.append(send_due(factory, case_of=citizen, channel=Flaky(0), now=at, policy=policy))  # type: ignore[arg-type]
            super().send(message)

    outcome = send_due(factory, case_of=citizen, channel=Overlapped(0), now=AT, policy=policy)  # type: ignore[arg-type]
    assert outcome["sent"] == 1
    assert [s["sent"] for s in seen] == [0, 1]
    assert states(factory) == {f"{CASE}/11": ("sent", 1)}
