"""Routing's tables: work orders and their history (the handling lifecycle lives here)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from services.common.outbox import inbox_table, outbox_table


class Base(DeclarativeBase):
    pass


class WorkOrderRow(Base):
    __tablename__ = "work_orders"

    work_order_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    case_id: Mapped[str] = mapped_column(String(32), index=True)
    node: Mapped[str] = mapped_column(String(6))
    unit_id: Mapped[str] = mapped_column(String(64), default="")
    category: Mapped[str] = mapped_column(String(32), default="")
    region_code: Mapped[str] = mapped_column(String(6), default="")
    state: Mapped[str] = mapped_column(String(24))
    manual_queue: Mapped[int] = mapped_column(Integer, default=0)
    hand_off_to: Mapped[str] = mapped_column(String(6), default="")
    deadlines: Mapped[str] = mapped_column(Text, default="{}")  # JSON {kind: ISO timestamp}
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (Index("ix_work_orders_unit_state", "unit_id", "state", "work_order_id"),)


class WorkOrderHistoryRow(Base):
    __tablename__ = "work_order_history"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    work_order_id: Mapped[str] = mapped_column(String(40), index=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    actor: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(32))
    from_state: Mapped[str] = mapped_column(String(24), default="")
    to_state: Mapped[str] = mapped_column(String(24))
    reason: Mapped[str] = mapped_column(Text, default="")


metadata = Base.metadata
outbox = outbox_table(metadata)
inbox = inbox_table(metadata)
