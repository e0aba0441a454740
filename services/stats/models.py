"""The warehouse's tables: one fact row per case (with its region path and statistical month), the
case events it was folded from (keyed by case and version, so replays are harmless), case texts
for hotspot keywords, and the tables derived from the facts and kept in step with them (see
docs/stats.md): monthly rollups of the metric counters per (stat_month, county, unit, category,
channel) and per (stat_month, region of any tier, child region, category, channel), and daily
case counts per (day, region, category) for hotspots."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, Column, Date, DateTime, Index, Integer, LargeBinary, String, Table, Text, false
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
    # 协办: assisting units late with their answer to the lead, ",unit,unit," ("" when none).
    assist_late_units: Mapped[str] = mapped_column(String(1000), default="", server_default="")
    # 领导批转: when the leader's instruction was recorded (first); NULL when never.
    instructed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # 远程会商: when a consultation's minutes were first recorded on the case; NULL when never.
    consulted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # 第三方评价: the month of the sample the case was drawn into ("" never) and the group's rating.
    tp_month: Mapped[str] = mapped_column(String(7), default="", server_default="")
    tp_rating: Mapped[str] = mapped_column(String(24), default="", server_default="")
    # 办事进度推送: notices to the citizen sent and given up (counts), and the citizen's opt-out.
    notices_sent: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    notices_failed: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    notices_off: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # The moment at which this fact's contribution to the rollups was computed ("as of"), and the
    # first deadline at or after it (accept, handling, rating window) that will change that
    # contribution when it passes; NULL when none is ahead. See store.py "Rollups".
    rolled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    next_window_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    __table_args__ = (
        # Free periods and the hotspot counts of the pieces of days at a window's ends; region and
        # category make the latter an index-only range.
        Index("ix_case_facts_city_time", "city_code", "submitted_at", "region_code", "category"),
        Index("ix_case_facts_county_time", "county_code", "submitted_at", "region_code", "category"),
        Index("ix_case_facts_province_time", "province_code", "submitted_at", "region_code", "category"),
        # One statistical month of one region is one index range (the benchmark's query shape).
        Index("ix_case_facts_province_month", "province_code", "stat_month"),
        Index("ix_case_facts_city_month", "city_code", "stat_month"),
        Index("ix_case_facts_county_month", "county_code", "stat_month"),
        Index("ix_case_facts_unit_month", "unit_id", "stat_month"),
        # The few facts whose rollup contribution is stale by now (a window closed since rolled_at).
        Index("ix_case_facts_next_window", "next_window_at"),
        # max(rolled_at): rollups answer only for as_of at or after every fact's rolled_at.
        Index("ix_case_facts_rolled_at", "rolled_at"),
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

# Rollup key: a fact's statistical month and place in the region tree, unit, category and channel.
ROLLUP_KEY: tuple[str, ...] = (
    "stat_month", "province_code", "city_code", "county_code", "unit_id", "category", "channel",
)  # fmt: skip
# Region rollup key: one row per region of the fact's path (province, city, county), with the
# fact's region one tier down ("" when it has none): totals of a region are its rows summed, and
# the same rows grouped by child_code are its children's totals (rankings, bulletin).
REGION_ROLLUP_KEY: tuple[str, ...] = ("stat_month", "region_code", "child_code", "category", "channel")
# Hotspot counts: facts per UTC day of submission, region of the case and category.
DAILY_KEY: tuple[str, ...] = ("day", "region_code", "category")
# One counter column per ``domain.COUNTERS`` entry (kept literal here so the schema is readable).
ROLLUP_COUNTERS: tuple[str, ...] = (
    "received", "online", "repeat", "accept_due", "accept_on_time", "reply_due", "replied",
    "completion_due", "closed", "closed_on_time", "satisfaction_base", "satisfied", "overdue", "supervised",
    "merged", "assist_late", "instructed", "consulted", "tp_sampled", "tp_rated", "tp_satisfied",
    "notices_sent", "notices_failed", "notices_off",
)  # fmt: skip
# Replied cases by working days to the first reply, one exact column per day 0..ROLLUP_DAYS-1; the
# rare longer ones go to ``stats_rollup_days_over`` by exact day, so mean and p90 stay exact.
ROLLUP_DAYS = 64
DAY_COLUMNS: tuple[str, ...] = tuple(f"d{k}" for k in range(ROLLUP_DAYS))
ROLLUP_VALUES: tuple[str, ...] = ROLLUP_COUNTERS + DAY_COLUMNS


def _key_columns(names: tuple[str, ...]) -> list[Column[str]]:
    widths = {"stat_month": 7, "unit_id": 64, "category": 32, "channel": 32}
    return [Column(name, String(widths.get(name, 6)), primary_key=True) for name in names]


def _value_columns() -> list[Column[int]]:
    # INTEGER, not BIGINT: a cell counts the cases of one month and key, far below 2**31, and
    # PostgreSQL sums int4 with an int8 accumulator (sum(int8) goes through numeric, much slower).
    # Server default 0: the ingest path inserts only the columns its delta touches.
    return [Column(name, Integer, nullable=False, server_default="0") for name in ROLLUP_VALUES]


rollups = Table(
    "stats_rollups",
    metadata,
    *_key_columns(ROLLUP_KEY),
    *_value_columns(),
    Index("ix_stats_rollups_province", "province_code", "stat_month"),
    Index("ix_stats_rollups_city", "city_code", "stat_month"),
    Index("ix_stats_rollups_county", "county_code", "stat_month"),
    Index("ix_stats_rollups_unit", "unit_id", "stat_month"),
)
region_rollups = Table(
    "stats_region_rollups",
    metadata,
    *_key_columns(REGION_ROLLUP_KEY),
    *_value_columns(),
)
rollup_days_over = Table(
    "stats_rollup_days_over",
    metadata,
    *_key_columns(ROLLUP_KEY),
    Column("days", Integer, primary_key=True),
    Column("n", Integer, nullable=False, server_default="0"),
    Index("ix_stats_rollup_days_over_province", "province_code", "stat_month"),
)
daily_counts = Table(
    "stats_daily_counts",
    metadata,
    Column("day", Date, primary_key=True),
    Column("region_code", String(6), primary_key=True),
    Column("category", String(32), primary_key=True),
    Column("province_code", String(6), nullable=False, server_default=""),
    Column("city_code", String(6), nullable=False, server_default=""),
    Column("county_code", String(6), nullable=False, server_default=""),
    Column("n", Integer, nullable=False, server_default="0"),
    Index("ix_stats_daily_counts_province", "province_code", "day"),
    Index("ix_stats_daily_counts_city", "city_code", "day"),
    Index("ix_stats_daily_counts_county", "county_code", "day"),
)
# Tables derived from the facts: dropped, recreated and rebuilt by migrations when their shape changes.
DERIVED_TABLES = (rollups, region_rollups, rollup_days_over, daily_counts)
outbox = outbox_table(metadata)
inbox = inbox_table(metadata)
