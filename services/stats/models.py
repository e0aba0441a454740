"""The warehouse's tables: one fact row per case (with its region path and statistical month), the
case events it was folded from (keyed by case and version, so replays are harmless), and case texts
for hotspot keywords."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, DateTime, Index, Integer, LargeBinary, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from services.common.outbox import inbox_table, outbox_table


class Base(DeclarativeBase):
    pass


class CaseFactRow(Base):
    """Latest known state of a case; ``version`` is the highest event version folded into it."""

    __tablename__ = "case_facts"

    case_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    province_code: Mapped[str] = mapped_column(String(6), default="")
    city_code: Mapped[str] = mapped_column(String(6), default="")
    county_code: Mapped[str] = mapped_column(String(6), default="")
    region_code: Mapped[str] = mapped_column(String(6), default="")
    registering_node: Mapped[str] = mapped_column(String(6))
    channel: Mapped[str] = mapped_column(String(32))
    category: Mapped[str] = mapped_column(String(32), default="")
    state: Mapped[str] = mapped_column(String(24))
    version: Mapped[int] = mapped_column(Integer)
    submitted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # Statistical month "YYYY-MM" of submitted_at under the node's month start day (docs/stats.md).
    stat_month: Mapped[str] = mapped_column(String(7), default="")
    online: Mapped[bool] = mapped_column(Boolean, default=False)
    is_repeat: Mapped[bool] = mapped_column(Boolean, default=False)
    unit_id: Mapped[str] = mapped_column(String(64), default="")
    work_order_id: Mapped[str] = mapped_column(String(64), default="")
    accept_due: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    accepted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    handling_due: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    replied_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    reply_workdays: Mapped[int | None] = mapped_column(Integer, nullable=True)
    closed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    satisfaction: Mapped[str] = mapped_column(String(24), default="")
    rating_default_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    supervision_count: Mapped[int] = mapped_column(Integer, default=0)

    __table_args__ = (
        Index("ix_case_facts_city", "city_code", "submitted_at"),
        Index("ix_case_facts_county", "county_code", "submitted_at"),
        Index("ix_case_facts_province", "province_code", "submitted_at"),
        # One statistical month of one region is one index range (the benchmark's query shape).
        Index("ix_case_facts_province_month", "province_code", "stat_month"),
        Index("ix_case_facts_city_month", "city_code", "stat_month"),
        Index("ix_case_facts_county_month", "county_code", "stat_month"),
        Index("ix_case_facts_unit_month", "unit_id", "stat_month"),
        Index("ix_case_facts_state", "state"),
    )


class CaseEventRow(Base):
    """Every event folded into a fact, whichever node or service sent it; the key makes a replay a no-op."""

    __tablename__ = "case_events"

    case_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    # Part of the key: two services of the owner may not share a version space in every deployment.
    event_type: Mapped[str] = mapped_column(String(32), primary_key=True)
    source: Mapped[str] = mapped_column(String(32), default="")
    body: Mapped[bytes] = mapped_column(LargeBinary)  # the serialized EventEnvelope


class CaseTextRow(Base):
    """Title and the start of the body, for hotspot keywords only (no personal fields are stored)."""

    __tablename__ = "case_texts"

    case_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    text: Mapped[str] = mapped_column(Text, default="")


metadata = Base.metadata
outbox = outbox_table(metadata)
inbox = inbox_table(metadata)
