"""办事进度推送, the adapter side: the notice outbox's sender and the embedded channel.

``send_due`` takes the pending notices whose attempt is due, fills in the recipient from the sealed
case, hands each to the channel adapter and records the outcome: sent, a retry at the policy's next
time, or given up after the last attempt (counted in ``lianxin_intake_progress_notices_total``).
Each notice row is claimed by moving its next attempt forward before the channel is called, so two
senders never send the same notice at once; a sent notice is never picked again.

Logs and the embedded file name the phone only masked (138****5678).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import cast

from prometheus_client import Counter
from sqlalchemy import Integer, Table, bindparam, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from services.common.db import reading
from services.intake.domain import Case
from services.intake.models import ProgressNoticeRow
from services.intake.notices import (
    ChannelFailure,
    NoticeChannel,
    NoticeSettled,
    OutgoingMessage,
    RetryPolicy,
    mask_phone,
    wechat_fields,
)

log = logging.getLogger(__name__)

NOTICES = Counter(
    "lianxin_intake_progress_notices",
    "Progress notices to citizens (办事进度推送) by channel and outcome: sent, retry, given_up",
    ["channel", "outcome"],
)
# While a claimed notice is being sent, no other sender takes it (a crashed sender's claim expires).
CLAIM = timedelta(minutes=2)
# Called in the transaction that records a notice's end (sent or given up), with the case as this node
# knows it (None when gone): intake's app writes the ``progress_notice_settled`` event there.
SettledHook = Callable[[Session, NoticeSettled, Case | None], None]


class FileChannel:
    """The embedded default: each message is appended, as one JSON line, to ``path`` (recipient masked).

    The portal shows the notices from the outbox table (TrackCase); the file is what an operator
    without an SMS gateway reads to see what would have gone out.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()

    def send(self, message: OutgoingMessage) -> None:
        line = {
            "notice_id": message.notice_id,
            "channel": message.channel,
            "to": mask_phone(message.recipient),
            "text": message.text,
            "fields": dict(message.fields),
        }
        try:
            with self._lock:
                self._path.parent.mkdir(parents=True, exist_ok=True)
                with self._path.open("a", encoding="utf-8") as out:
                    out.write(json.dumps(line, ensure_ascii=False) + "\n")
        except OSError as exc:
            raise ChannelFailure(f"cannot write {self._path.name}: {exc.strerror}") from exc


# The sender's statements, built once (issue 21: a pass after each accepted case cost ~5.5 ms of CPU,
# most of it SQLAlchemy composing statements and loading ORM rows for what one index answers).
_NOTICES = cast(Table, ProgressNoticeRow.__table__)
_PENDING = _NOTICES.c.state == "pending"
_NEXT_DUE = select(func.min(_NOTICES.c.next_attempt_at)).where(_PENDING)
_DUE = (
    select(
        _NOTICES.c.notice_id,
        _NOTICES.c.case_id,
        _NOTICES.c.kind,
        _NOTICES.c.channel,
        _NOTICES.c.text,
        _NOTICES.c.attempts,
        _NOTICES.c.next_attempt_at,
    )
    .where(_PENDING, _NOTICES.c.next_attempt_at <= bindparam("now"))
    .order_by(_NOTICES.c.next_attempt_at)
    .limit(bindparam("batch", type_=Integer))
)
# Claim: only the sender whose update matched the old next attempt sends it.
_CLAIM = (
    update(_NOTICES)
    .where(_NOTICES.c.notice_id == bindparam("b_notice_id"), _PENDING, _NOTICES.c.next_attempt_at == bindparam("b_due"))
    .values(next_attempt_at=bindparam("claimed_until"))
)
_SETTLE = update(_NOTICES).where(_NOTICES.c.notice_id == bindparam("b_notice_id"))


def next_due(session_factory: sessionmaker[Session]) -> datetime | None:
    """When the earliest pending notice is to be tried, or None when none is pending.

    A read (``reading()``: on SQLite a deferred BEGIN, not the write lock): most passes end here."""
    with reading(), session_factory() as session:
        due = session.connection().execute(_NEXT_DUE).scalar()
    return None if due is None else due if due.tzinfo is not None else due.replace(tzinfo=UTC)


def send_due(
    session_factory: sessionmaker[Session],
    *,
    case_of: Callable[[str], Case | None],
    channel: NoticeChannel,
    now: datetime,
    policy: RetryPolicy,
    batch: int = 100,
    on_settled: SettledHook | None = None,
) -> dict[str, int]:
    """Send the notices due at ``now``; returns the count per outcome."""
    outcomes = {"sent": 0, "retry": 0, "given_up": 0, "skipped": 0}
    for notice_id, case_id, kind, via, text, attempts in _claim_due(session_factory, now, batch):
        case = case_of(case_id)
        values: dict[str, object]
        if case is None or not case.complainant.phone:
            values = {"state": "given_up", "last_error": "no recipient", "next_attempt_at": None}
            outcome = "skipped"
        else:
            message = OutgoingMessage(
                notice_id=notice_id,
                channel=via,
                recipient=case.complainant.phone,
                text=text,
                fields=wechat_fields(kind, case_id) if via == "wechat" else {},
            )
            try:
                channel.send(message)
            except ChannelFailure as exc:
                tries = attempts + 1
                again = policy.next_attempt(tries, now)
                outcome = "retry" if again is not None else "given_up"
                values = {
                    "attempts": tries,
                    "state": "pending" if again is not None else "given_up",
                    "next_attempt_at": again,
                    "last_error": str(exc)[:200],
                }
                log.warning(
                    "progress notice not sent",
                    extra={"notice_id": notice_id, "to": mask_phone(message.recipient), "outcome": outcome},
                )
            else:
                outcome = "sent"
                values = {"attempts": attempts + 1, "state": "sent", "sent_at": now, "next_attempt_at": None}
        with session_factory() as session, session.begin():
            session.connection().execute(_SETTLE, {**values, "b_notice_id": notice_id})
            if on_settled is not None and values["state"] != "pending":
                made = values.get("attempts", attempts)  # the skipped notice made none
                assert isinstance(made, int)
                end = NoticeSettled(notice_id, case_id, kind, via, str(values["state"]), made, now)
                on_settled(session, end, case)
        outcomes[outcome] += 1
        NOTICES.labels(via, outcome).inc()
    return outcomes


def _claim_due(
    session_factory: sessionmaker[Session], now: datetime, batch: int
) -> list[tuple[str, str, str, str, str, int]]:
    """The notices due at ``now`` this sender claimed (notice id, case id, kind, channel, text, attempts)."""
    with session_factory() as session, session.begin():
        connection = session.connection()
        due = connection.execute(_DUE, {"now": now, "batch": batch}).all()
        claimed = []
        for row in due:
            params = {"b_notice_id": row.notice_id, "b_due": row.next_attempt_at, "claimed_until": now + CLAIM}
            if getattr(connection.execute(_CLAIM, params), "rowcount", 1) == 1:
                claimed.append((row.notice_id, row.case_id, row.kind, row.channel, row.text, row.attempts))
    return claimed
