"""video's tables: rooms, schedules, visits, reservations (the double-booking guard), holds granted
to other nodes, holds asked of other nodes, session counters, sent reminders, outbox and inbox."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Boolean, DateTime, Index, Integer, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from services.common.outbox import inbox_table, outbox_table


class Base(DeclarativeBase):
    pass


class RoomRow(Base):
    __tablename__ = "video_rooms"
    room_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    node: Mapped[str] = mapped_column(String(6))
    name: Mapped[str] = mapped_column(String(200), default="")


class ScheduleRow(Base):
    __tablename__ = "video_schedules"
    schedule_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    leader_id: Mapped[str] = mapped_column(String(64), unique=True)
    node: Mapped[str] = mapped_column(String(6))
    body: Mapped[dict[str, object]] = mapped_column(JSON)  # weekly patterns, one-off days, rooms
    slot_minutes: Mapped[int] = mapped_column(Integer)
    buffer_minutes: Mapped[int] = mapped_column(Integer)
    max_per_session: Mapped[int] = mapped_column(Integer)
    version: Mapped[int] = mapped_column(Integer)


class VisitRow(Base):
    __tablename__ = "video_visits"
    # A leader's or a case's visits by start: ListVisits reads one page of a range (issue 20).
    __table_args__ = (
        Index("ix_video_visits_leader_start", "leader_id", "starts_at", "visit_id"),
        Index("ix_video_visits_case_start", "case_id", "starts_at", "visit_id"),
    )
    visit_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    case_id: Mapped[str] = mapped_column(String(64))
    leader_id: Mapped[str] = mapped_column(String(64))
    room_ids: Mapped[list[str]] = mapped_column(JSON)
    unit_ids: Mapped[list[str]] = mapped_column(JSON)
    starts_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    ends_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    session_start: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    state: Mapped[str] = mapped_column(String(16), index=True)
    version: Mapped[int] = mapped_column(Integer)
    representatives: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)  # sealed JSON
    checked_in_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    minutes: Mapped[str] = mapped_column(Text, default="")
    decisions: Mapped[str] = mapped_column(Text, default="")
    recording_ref: Mapped[str] = mapped_column(String(500), default="")
    hold_ids: Mapped[list[str]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ReservationRow(Base):
    """One resource busy for one period. UNIQUE(resource_id, starts_at): the database itself refuses
    a second booking of a resource at the same start, whatever the application checked before."""

    __tablename__ = "video_reservations"
    __table_args__ = (UniqueConstraint("resource_id", "starts_at", name="uq_video_reservation_slot"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    resource_id: Mapped[str] = mapped_column(String(80), index=True)  # "leader:L1", "room:R1", "unit:U1"
    starts_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    ends_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    owner: Mapped[str] = mapped_column(String(80), index=True)  # "visit:<id>" or "hold:<id>"
    version: Mapped[int] = mapped_column(Integer, default=1)


class SessionCountRow(Base):
    """Visits booked in one session of a leader; guarded update enforces max_per_session."""

    __tablename__ = "video_session_counts"
    leader_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    session_start: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    booked: Mapped[int] = mapped_column(Integer)
    version: Mapped[int] = mapped_column(Integer)


class HoldRow(Base):
    """A hold this node granted on one of its rooms to a visit booked at another node."""

    __tablename__ = "video_holds"
    hold_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    room_id: Mapped[str] = mapped_column(String(64), index=True)
    requesting_node: Mapped[str] = mapped_column(String(6))
    visit_id: Mapped[str] = mapped_column(String(64))
    case_id: Mapped[str] = mapped_column(String(64))
    starts_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    ends_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    state: Mapped[str] = mapped_column(String(16), index=True)
    reason: Mapped[str] = mapped_column(String(300), default="")


class RemoteHoldRow(Base):
    """A hold this node asked of another node, so a failed booking can always be released later."""

    __tablename__ = "video_remote_holds"
    hold_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    visit_id: Mapped[str] = mapped_column(String(64), index=True)
    room_id: Mapped[str] = mapped_column(String(64))
    node: Mapped[str] = mapped_column(String(6))
    state: Mapped[str] = mapped_column(String(16), index=True)  # domain.RemoteState
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ReminderRow(Base):
    """A reminder already emitted: (visit, kind) once, whatever how often the sweep runs."""

    __tablename__ = "video_reminders"
    visit_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(8), primary_key=True)
    sent_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class CaseOwnerRow(Base):
    """Who owns a case and with which epoch, as this node last heard (raised only, never lowered).

    Fed by the case events on this node's bus (registrations, work orders, hand-offs, replicas), so
    video's own events about the case name its current owner and epoch and pass the tiers above.
    """

    __tablename__ = "video_case_owners"
    case_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner_node: Mapped[str] = mapped_column(String(6))
    owner_epoch: Mapped[int] = mapped_column(Integer)


class ConsultationRow(Base):
    """A remote consultation (远程会商): booked here (its units and rooms reserved here and held at the
    other nodes), or a copy kept from the events of one booked at a node below (``replica``)."""

    __tablename__ = "video_consultations"
    __table_args__ = (Index("ix_video_consultations_case_start", "case_id", "starts_at"),)
    consultation_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    case_id: Mapped[str] = mapped_column(String(64))
    host_node: Mapped[str] = mapped_column(String(6))
    topic: Mapped[str] = mapped_column(String(200), default="")
    participants: Mapped[list[dict[str, str]]] = mapped_column(JSON)  # [{node, unit_id, room_id}]
    starts_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    ends_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    state: Mapped[str] = mapped_column(String(16), index=True)
    version: Mapped[int] = mapped_column(Integer)
    minutes: Mapped[str] = mapped_column(Text, default="")
    booked_by: Mapped[str] = mapped_column(String(64), default="")
    held_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    hold_ids: Mapped[list[str]] = mapped_column(JSON)
    replica: Mapped[bool] = mapped_column(Boolean, default=False)
    cancel_reason: Mapped[str] = mapped_column(String(1000), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


metadata = Base.metadata
outbox = outbox_table(metadata)
inbox = inbox_table(metadata)
