"""Intake's tables: cases with sealed personal data, the daily case-number counter, the public timeline."""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from services.common.outbox import inbox_table, outbox_table
from services.intake.domain import CLOSED_STATES

# The open cases (what a submit compares against), as SQL text: the partial indexes below hold only
# these rows, and a query can use them only when its WHERE clause carries this very condition
# (sorted, so every process writes the same text).
OPEN_CASE_SQL = "state NOT IN ({})".format(", ".join(f"'{s.value}'" for s in sorted(CLOSED_STATES)))
# A reply the citizen consented to publish (handlers.PUBLISH_CONSENT among the flags), as the terms of
# ix_cases_published's WHERE: the public reply board walks only these cases, newest first, instead of
# every stored case in search of the few with the flag (issue 17).
PUBLISHED_TERMS = ("flags LIKE '%publish_consent%'", "reply_text <> ''")
PUBLISHED_INDEX = ("ix_cases_published", ("state", "submitted_at", "case_id"))


class Base(DeclarativeBase):
    pass


# A submit's lookups (docs/intake.md "What a submit reads"), each branch an equality on the leading
# column: the rate limit counts one submitter's recent cases, the others look among open cases
# only, so their cost follows the open cases, not every case ever stored.
PERSON_INDEXES: dict[str, tuple[str, ...]] = {
    "ix_cases_phone_received": ("phone_bidx", "received_at"),
    "ix_cases_id_number_received": ("id_number_bidx", "received_at"),
}
OPEN_CASE_INDEXES: dict[str, tuple[str, ...]] = {
    "ix_cases_open_phone": ("phone_bidx", "submitted_at", "case_id"),
    "ix_cases_open_id_number": ("id_number_bidx", "submitted_at", "case_id"),
    "ix_cases_open_fingerprint": ("fingerprint", "submitted_at", "case_id"),
    **{f"ix_cases_open_band{n}": (f"band{n}",) for n in range(4)},
}


class CaseRow(Base):
    __tablename__ = "cases"

    case_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tracking_code: Mapped[str] = mapped_column(String(16), unique=True)
    # channel + the channel's own reference: a retried submit finds the case it already made
    idempotency_key: Mapped[str | None] = mapped_column(String(200), unique=True)
    channel: Mapped[str] = mapped_column(String(32))
    channel_ref: Mapped[str] = mapped_column(String(128), default="")
    title: Mapped[str] = mapped_column(String(100))
    body: Mapped[str] = mapped_column(Text)
    category: Mapped[str] = mapped_column(String(32), default="")
    category_auto: Mapped[bool] = mapped_column(Boolean, default=False)
    region_code: Mapped[str] = mapped_column(String(6), default="")
    place_unresolved: Mapped[bool] = mapped_column(Boolean, default=False)
    registering_node: Mapped[str] = mapped_column(String(6))
    owner_node: Mapped[str] = mapped_column(String(6))
    owner_epoch: Mapped[int] = mapped_column(Integer, default=1)
    state: Mapped[str] = mapped_column(String(24))
    version: Mapped[int] = mapped_column(Integer, default=1)
    anonymous: Mapped[bool] = mapped_column(Boolean, default=False)
    repeat_of: Mapped[str] = mapped_column(String(32), default="")
    duplicate_of: Mapped[str] = mapped_column(String(32), default="")
    flags: Mapped[str] = mapped_column(String(200), default="")  # comma-separated, small fixed vocabulary
    hotline_operator_id: Mapped[str] = mapped_column(String(64), default="")
    # personal data, sealed (services.common.crypto); *_bidx are keyed blind indexes for lookups
    name_sealed: Mapped[bytes | None] = mapped_column(LargeBinary)
    id_number_sealed: Mapped[bytes | None] = mapped_column(LargeBinary)
    phone_sealed: Mapped[bytes | None] = mapped_column(LargeBinary)
    address_sealed: Mapped[bytes | None] = mapped_column(LargeBinary)
    # The citizen's own title and body when they held personal data (services.common.personal_text);
    # ``title`` and ``body`` above then hold the masked text every other reader gets.
    title_sealed: Mapped[bytes | None] = mapped_column(LargeBinary)
    body_sealed: Mapped[bytes | None] = mapped_column(LargeBinary)
    # The place of the matter (事发地址), masked like the text; the complainant's home is address_sealed.
    place_address: Mapped[str | None] = mapped_column(String(200), default="", server_default="")
    id_number_bidx: Mapped[str] = mapped_column(String(40), default="")
    phone_bidx: Mapped[str] = mapped_column(String(40), default="")
    phone_last4: Mapped[str] = mapped_column(String(4), default="")
    submitted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # When this node received it (submitted_at may be back-dated by imports): the rate limit counts these.
    received_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Repeat/duplicate detection (services.intake.dedup): sha256 of the normalised text, the 64-bit
    # SimHash (stored signed) and its four 16-bit bands, so near-duplicates are found by an indexed
    # query in any process instead of an in-memory index per api replica.
    fingerprint: Mapped[str] = mapped_column(String(64), default="")
    simhash: Mapped[int] = mapped_column(BigInteger, default=0)
    band0: Mapped[int] = mapped_column(Integer, default=0)
    band1: Mapped[int] = mapped_column(Integer, default=0)
    band2: Mapped[int] = mapped_column(Integer, default=0)
    band3: Mapped[int] = mapped_column(Integer, default=0)
    moderation_reasons: Mapped[str] = mapped_column(String(200), default="")
    # What intake learns from routing's events: the handling work order and unit, and the replies.
    # Last routing event applied: routing and intake both number the case's events, so routing's
    # order is tracked apart from the case version (an intake event must not make routing's next
    # event look old).
    handling_version: Mapped[int] = mapped_column(Integer, default=0)
    work_order_id: Mapped[str] = mapped_column(String(64), default="")
    unit_id: Mapped[str] = mapped_column(String(64), default="")
    reply_count: Mapped[int] = mapped_column(Integer, default=0)
    replied_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The latest reply and the handling deadline (办理期限), for TrackCase.
    reply_text: Mapped[str | None] = mapped_column(Text, default="", server_default="")
    handling_due: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # 并单: the main case this case was merged into (its progress and reply are this case's).
    merged_into: Mapped[str] = mapped_column(String(32), default="", server_default="")
    evaluated_reply: Mapped[int] = mapped_column(Integer, default=0)  # reply number last rated
    satisfaction: Mapped[str] = mapped_column(String(24), default="")
    review_reply: Mapped[int] = mapped_column(Integer, default=0)  # reply number last put to review

    __table_args__ = (
        Index("ix_cases_submitted", "submitted_at", "case_id"),
        Index("ix_cases_region", "region_code", "submitted_at"),
        Index("ix_cases_state", "state"),
        *(Index(name, *columns) for name, columns in PERSON_INDEXES.items()),
        *(
            Index(name, *columns, sqlite_where=text(OPEN_CASE_SQL), postgresql_where=text(OPEN_CASE_SQL))
            for name, columns in OPEN_CASE_INDEXES.items()
        ),
        Index(
            PUBLISHED_INDEX[0],
            *PUBLISHED_INDEX[1],
            sqlite_where=text(" AND ".join(PUBLISHED_TERMS)),
            postgresql_where=text(" AND ".join(PUBLISHED_TERMS)),
        ),
    )


class CaseSequenceRow(Base):
    """Last number handed out per registration day (case ids are node-day-sequence)."""

    __tablename__ = "case_sequence"

    day: Mapped[date] = mapped_column(Date, primary_key=True)
    last: Mapped[int] = mapped_column(Integer)


class TimelineRow(Base):
    """The public timeline a citizen sees with the tracking code: no internal notes."""

    __tablename__ = "case_timeline"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    case_id: Mapped[str] = mapped_column(String(32), index=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    state: Mapped[str] = mapped_column(String(24))
    summary: Mapped[str] = mapped_column(String(400))


class EvaluationRow(Base):
    """A citizen's rating: at most one per reply (the unique key decides concurrent attempts)."""

    __tablename__ = "evaluations"

    evaluation_id: Mapped[str] = mapped_column(String(48), primary_key=True)
    case_id: Mapped[str] = mapped_column(String(32))
    reply_number: Mapped[int] = mapped_column(Integer)
    satisfaction: Mapped[str] = mapped_column(String(24))
    comment: Mapped[str] = mapped_column(Text, default="")
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (UniqueConstraint("case_id", "reply_number", name="uq_evaluations_case_reply"),)


class ProgressNoticeRow(Base):
    """办事进度推送: one notice to the citizen, sent from this outbox by the notice sender (services/intake/notices.py).

    No personal data: the recipient is read from the sealed case when the notice is sent.
    """

    __tablename__ = "progress_notices"

    notice_id: Mapped[str] = mapped_column(String(48), primary_key=True)  # case id / routing version
    case_id: Mapped[str] = mapped_column(String(32), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    channel: Mapped[str] = mapped_column(String(8))
    text: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # "pending" (to send at next_attempt_at), "sent", "given_up" (after the retry policy's last attempt)
    state: Mapped[str] = mapped_column(String(12), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    last_error: Mapped[str] = mapped_column(String(200), default="")

    __table_args__ = (Index("ix_progress_notices_due", "state", "next_attempt_at"),)


metadata = Base.metadata
outbox = outbox_table(metadata)
inbox = inbox_table(metadata)
