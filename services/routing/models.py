"""Routing's tables: work orders (aggregate as JSON plus query columns), history, case versions, supervisions."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, Index, Integer, LargeBinary, String, Text, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from services.common.outbox import inbox_table, outbox_table


class Base(DeclarativeBase):
    pass


# As written in ix_work_orders_provisional's WHERE (a query must say the same to use that index).
PROVISIONAL_SQL = "provisional <> ''"


class WorkOrderRow(Base):
    __tablename__ = "work_orders"

    work_order_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    case_id: Mapped[str] = mapped_column(String(32), index=True)
    node: Mapped[str] = mapped_column(String(6))
    unit_id: Mapped[str] = mapped_column(String(64), default="")
    category: Mapped[str] = mapped_column(String(32), default="")
    region_code: Mapped[str] = mapped_column(String(12), default="")
    state: Mapped[str] = mapped_column(String(24))
    manual_queue: Mapped[int] = mapped_column(Integer, default=0)
    manual_reason: Mapped[str] = mapped_column(Text, default="")
    hand_off_to: Mapped[str] = mapped_column(String(6), default="")
    # The WorkOrder aggregate without its history (services.routing.store.encode_order).
    data: Mapped[str] = mapped_column(Text, default="{}")
    requested_days: Mapped[int] = mapped_column(Integer, default=0)
    provisional: Mapped[str] = mapped_column(String(200), default="")  # comma-separated deadline kinds
    # 协办: the assisting units that still owe the lead their answer, as ",unit,unit," (ListWorkOrders
    # assisting_unit_id matches ",<unit>,"); "" when none.
    assisting: Mapped[str] = mapped_column(String(1000), default="", server_default="")
    # 领导批转: the leader class whose instruction the case waits for; "" when none (ListLeaderQueue).
    leader_queue: Mapped[str] = mapped_column(String(64), default="", server_default="")
    # Earliest pending duty deadline (far future when none): overdue / due-soon filters and inbox order.
    next_due: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # Earliest unfired sweep boundary; NULL when nothing can fire (closed, paused): the sweep's index.
    next_sweep_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        Index("ix_work_orders_unit_due", "unit_id", "next_due", "work_order_id"),
        # A unit's inbox (ListWorkOrders of a unit in the open states): only those rows are read,
        # however many closed work orders the unit has (issue 20; migration 0003).
        Index("ix_work_orders_unit_state", "unit_id", "state", "next_due", "work_order_id"),
        # The sweep's pass over work orders with provisional deadlines: those only (migration 0004).
        Index(
            "ix_work_orders_provisional",
            "work_order_id",
            sqlite_where=text(PROVISIONAL_SQL),
            postgresql_where=text(PROVISIONAL_SQL),
        ),
        Index("ix_work_orders_due", "next_due", "work_order_id"),
        Index("ix_work_orders_sweep", "next_sweep_at", "work_order_id"),
        # The node's inbox by state (a clerk of no one unit, the overdue list): migration 0007, with
        # ``node`` since 0010 so that its counts read the index alone, no table row per entry.
        Index("ix_work_orders_state_node_due", "state", "node", "next_due", "work_order_id"),
    )


class WorkOrderHistoryRow(Base):
    __tablename__ = "work_order_history"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    work_order_id: Mapped[str] = mapped_column(String(64), index=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    actor: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(40))
    from_state: Mapped[str] = mapped_column(String(24), default="")
    to_state: Mapped[str] = mapped_column(String(24))
    reason: Mapped[str] = mapped_column(Text, default="")


class CaseVersionRow(Base):
    """The per-case event version at this node: each routing event takes the next one."""

    __tablename__ = "case_versions"

    case_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    version: Mapped[int] = mapped_column(Integer)
    owner_epoch: Mapped[int] = mapped_column(Integer)


class CaseSnapshotRow(Base):
    """The case as it arrived here (no personal data, serialized ``common.v1.Case``): sent on with a 上报."""

    __tablename__ = "case_snapshots"

    case_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    snapshot: Mapped[bytes] = mapped_column(LargeBinary)


class SupervisionRow(Base):
    __tablename__ = "supervisions"

    supervision_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    case_id: Mapped[str] = mapped_column(String(32), index=True)
    work_order_id: Mapped[str] = mapped_column(String(64), default="")
    level: Mapped[str] = mapped_column(String(16))
    by_node: Mapped[str] = mapped_column(String(6))
    by_actor: Mapped[str] = mapped_column(String(64))
    demand: Mapped[str] = mapped_column(Text)
    due_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    issued_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    region_code: Mapped[str] = mapped_column(String(12), default="")
    outcome: Mapped[str] = mapped_column(Text, default="")
    state: Mapped[str] = mapped_column(String(16), default="open")

    __table_args__ = (Index("ix_supervisions_issued", "issued_at", "supervision_id"),)


class RepeatRow(Base):
    """A repeat (重复件) of an earlier unresolved case, counted for the repeat escalation."""

    __tablename__ = "repeats"

    original_case_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    repeat_case_id: Mapped[str] = mapped_column(String(32), primary_key=True)


class CaseMergeRow(Base):
    """并单: a case of this node merged into a main case, until the merge is undone (the row is deleted).

    The main case's changes are followed by each of these (``handling.bookkeeping._follow_main``).
    """

    __tablename__ = "case_merges"

    case_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    main_case_id: Mapped[str] = mapped_column(String(32), index=True)
    merged_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class CaseOwnerRow(Base):
    """Who owns a case of the subtree that this node does not handle, as its replicas and hand-offs say.

    Read-only knowledge for the tiers above (a provincial 督办 is sent to the owner as a command);
    the highest (epoch, version) seen wins, so a late or redelivered replica changes nothing.
    """

    __tablename__ = "case_owners"

    case_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner_node: Mapped[str] = mapped_column(String(6))
    owner_epoch: Mapped[int] = mapped_column(Integer)
    version: Mapped[int] = mapped_column(Integer)


class EvaluationSampleRow(Base):
    """第三方评价: a month's drawn sample at this node (once per month), with its seed and rule."""

    __tablename__ = "evaluation_samples"

    month: Mapped[str] = mapped_column(String(7), primary_key=True)
    node: Mapped[str] = mapped_column(String(6))
    seed: Mapped[str] = mapped_column(String(64))
    percent: Mapped[int] = mapped_column(Integer)
    minimum: Mapped[int] = mapped_column(Integer)
    drawn_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    drawn_by: Mapped[str] = mapped_column(String(64))
    # Per unit [unit_id, closed, sampled], JSON: the population each unit's draw was made from.
    units: Mapped[str] = mapped_column(Text, default="[]")


class EvaluationItemRow(Base):
    """第三方评价: one sampled case of a month and, once given, the evaluation group's rating."""

    __tablename__ = "evaluation_items"

    month: Mapped[str] = mapped_column(String(7), primary_key=True)
    case_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    work_order_id: Mapped[str] = mapped_column(String(64))
    unit_id: Mapped[str] = mapped_column(String(64))
    rank: Mapped[int] = mapped_column(Integer)
    closed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    category: Mapped[str] = mapped_column(String(32), default="")
    region_code: Mapped[str] = mapped_column(String(12), default="")
    rating: Mapped[str] = mapped_column(String(24), default="")
    comment: Mapped[str] = mapped_column(Text, default="")
    rated_by: Mapped[str] = mapped_column(String(64), default="")
    rated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    __table_args__ = (Index("ix_evaluation_items_unit", "month", "unit_id", "rank"),)


metadata = Base.metadata
outbox = outbox_table(metadata)
inbox = inbox_table(metadata)
