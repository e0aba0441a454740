"""The warehouse's tables: one fact row per case, with the region path for subtree roll-ups."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, Index, Integer, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from services.common.outbox import inbox_table, outbox_table


class Base(DeclarativeBase):
    pass


class CaseFactRow(Base):
    """Latest known state of a case; ``version`` guards against applying an older event over a newer."""

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

    __table_args__ = (
        Index("ix_case_facts_city", "city_code", "submitted_at"),
        Index("ix_case_facts_county", "county_code", "submitted_at"),
        Index("ix_case_facts_province", "province_code", "submitted_at"),
    )


metadata = Base.metadata
outbox = outbox_table(metadata)
inbox = inbox_table(metadata)
