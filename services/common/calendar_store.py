"""The node's official calendar years as loaded by its operators (``lianxin calendar load``), kept across restarts.

One calendar database per node, beside the services' own (``service_database_url(settings,
"calendar")``: a SQLite file, or the PostgreSQL schema ``calendar``), like the audit trail: every
service of the node counts days on the same calendar, so none of them owns it. A year loaded here
replaces the bundled ``chinese_calendar`` data and any ``LIANXIN_CALENDAR_FILES`` file for that year.

``NodeCalendar`` is the ``ChineseWorkingCalendar`` the services share. In the embedded node they hold
the very same object, so a load takes effect at once; a production process (routing worker, video api)
notices a load made through another process within ``refresh_interval_s``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import date, datetime

from prometheus_client import Gauge
from sqlalchemy import (
    Column,
    DateTime,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    delete,
    func,
    insert,
    select,
    text,
)
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError

from services.common.calendar import ChineseWorkingCalendar, OfficialYear, load_calendar_text, year_document
from services.common.db import make_engine, service_database_url
from services.common.service import ServiceContext
from services.common.timeutil import china_date

__all__ = ["CALENDAR_DAYS_LEFT", "CalendarStore", "NodeCalendar", "StoredYear", "node_calendar"]

log = logging.getLogger(__name__)

metadata = MetaData()

calendar_years = Table(
    "calendar_years",
    metadata,
    Column("year", Integer, primary_key=True, autoincrement=False),
    Column("body", Text, nullable=False),  # the year in the file format (calendar.year_document), JSON
    Column("source", String(500), nullable=False, default=""),  # the notice the file names
    Column("file_name", String(200), nullable=False, default=""),
    Column("loaded_by", String(128), nullable=False, default=""),
    Column("loaded_at", DateTime(timezone=True), nullable=False),
)

# Refreshed at scrape time from the node's calendar, so it counts down without a timer. The only label
# is the node's region code (docs/operations.md, Metrics), named "region": "node" is the scrape target's.
CALENDAR_DAYS_LEFT = Gauge(
    "lianxin_calendar_days_left",
    "Days from today (Asia/Shanghai) to the last day of the node's official holiday calendar; "
    "deadlines after it are provisional and video offers no slots after it",
    ["region"],
)

# The calendar whose function the gauge calls for each node: a stopped node removes its label only if
# a newer one of the same code (a restart in the same process) has not taken it over.
_GAUGE_OWNERS: dict[str, NodeCalendar] = {}


@dataclass(frozen=True)
class StoredYear:
    """A year loaded into the node, with who loaded it, when, and from which file."""

    year: OfficialYear
    file_name: str
    loaded_by: str
    loaded_at: datetime


class CalendarStore:
    """The ``calendar_years`` table of one node."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        with engine.begin() as conn:
            if engine.dialect.name == "postgresql":
                # Every process of the node (routing, video and stats apis and workers) opens this at
                # start, often at the same moment: one creates the table, the others wait and find it.
                conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('lianxin.calendar_years'))"))
            metadata.create_all(conn)

    @classmethod
    def open(cls, url: str) -> CalendarStore:
        """The node's calendar database at ``url``, its schema and table made if missing."""
        attempts = 20
        for attempt in range(attempts):
            try:
                return cls(make_engine(url, service="calendar"))
            except IntegrityError:
                # CREATE SCHEMA IF NOT EXISTS lost a race with another process of the node, which has
                # committed the schema by the time PostgreSQL reports it: opening again finds it.
                if attempt == attempts - 1:
                    raise
            except OperationalError as error:
                # SQLite: switching a new file to WAL or creating its table while other processes of the
                # node do the same answers "database is locked" at once, whatever the busy timeout.
                if "locked" not in str(error) or attempt == attempts - 1:
                    raise
                time.sleep(0.02 * (attempt + 1))
        raise AssertionError("unreachable")

    @property
    def engine(self) -> Engine:
        return self._engine

    def save(self, years: list[OfficialYear], *, file_name: str, loaded_by: str, at: datetime) -> None:
        """Store (or replace) whole years in one transaction."""
        with self._engine.begin() as conn:
            conn.execute(delete(calendar_years).where(calendar_years.c.year.in_([y.year for y in years])))
            conn.execute(
                insert(calendar_years),
                [
                    {
                        "year": y.year,
                        "body": json.dumps(year_document(y), ensure_ascii=False),
                        "source": y.source[:500],
                        "file_name": file_name[:200],
                        "loaded_by": loaded_by[:128],
                        "loaded_at": at,
                    }
                    for y in years
                ],
            )

    def years(self) -> list[StoredYear]:
        with self._engine.connect() as conn:
            rows = conn.execute(select(calendar_years).order_by(calendar_years.c.year)).all()
        out: list[StoredYear] = []
        for row in rows:
            # Stored only after validation, so it reads back; the source names the row if it does not.
            (year,) = load_calendar_text(row.body, f"calendar_years[{row.year}].json")
            out.append(StoredYear(year, row.file_name, row.loaded_by, row.loaded_at))
        return out

    def stamp(self) -> tuple[int, str]:
        """Changes whenever a year is loaded or replaced: (rows, latest loaded_at)."""
        with self._engine.connect() as conn:
            count, latest = conn.execute(
                select(func.count(), func.max(calendar_years.c.loaded_at)).select_from(calendar_years)
            ).one()
        return int(count), str(latest)


@dataclass
class NodeCalendar(ChineseWorkingCalendar):
    """The package's years, then ``LIANXIN_CALENDAR_FILES``, then the years loaded into the node (latest wins)."""

    store: CalendarStore | None = None
    file_years: dict[int, OfficialYear] = field(default_factory=dict)
    loaded: dict[int, StoredYear] = field(default_factory=dict)
    refresh_interval_s: float = 30.0
    node: str = ""  # region code, once it feeds the gauge
    _stamp: tuple[int, str] = (0, "")
    _next_refresh: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def load_years(self, years: list[OfficialYear], *, file_name: str, loaded_by: str, at: datetime) -> None:
        """Store ``years`` for the node and count on them from now on."""
        # Under the lock, so a refresh that read the table just before this save cannot put the old
        # set of years back over the new one.
        with self._lock:
            if self.store is not None:
                self.store.save(years, file_name=file_name, loaded_by=loaded_by, at=at)
            self.loaded = {**self.loaded, **{y.year: StoredYear(y, file_name, loaded_by, at) for y in years}}
            self.add_years(years)

    def refresh(self, *, force: bool = False) -> None:
        """Read the years loaded through another process of this node (at most every ``refresh_interval_s``)."""
        if self.store is None:
            return
        now = time.monotonic()
        if not force and now < self._next_refresh:
            return
        # A load or another refresh under way: count on the years in memory rather than wait.
        if not self._lock.acquire(blocking=force):
            return
        try:
            self._next_refresh = now + self.refresh_interval_s
            stamp = self.store.stamp()
            if stamp == self._stamp:
                return
            stored = self.store.years()
            self.loaded = {s.year.year: s for s in stored}
            self.years = {**self.file_years, **{s.year.year: s.year for s in stored}}
            self._stamp = stamp
        except SQLAlchemyError:
            # Counting goes on with the years in memory (a metrics scrape or a deadline must not fail
            # because the calendar database is out of reach); the next refresh tries again.
            log.warning("calendar database unreachable; using the years already loaded", exc_info=True)
        finally:
            self._lock.release()

    def knows_year(self, year: int) -> bool:
        self.refresh()
        return super().knows_year(year)

    def known_range(self) -> tuple[date, date]:
        self.refresh()  # video cuts its slot search here
        return super().known_range()

    def origin(self, year: int) -> str:
        """Where the node's arrangement for ``year`` comes from: "loaded", "file", "package" or ""."""
        if year in self.loaded:
            return "loaded"
        if year in self.file_years:
            return "file"
        return "package" if super().knows_year(year) else ""

    def days_left(self, today: date) -> int:
        return (self.covered_until(today) - today).days

    def close(self) -> None:
        if self.node and _GAUGE_OWNERS.get(self.node) is self:
            del _GAUGE_OWNERS[self.node]
            CALENDAR_DAYS_LEFT.remove(self.node)
        if self.store is not None:
            self.store.engine.dispose()


def node_calendar(ctx: ServiceContext, files: list[str] | None = None) -> NodeCalendar:
    """The node's shared calendar, opened by the first service of the process that asks for it.

    ``files`` (``LIANXIN_CALENDAR_FILES``) are read only when it is opened; a bad file fails the start.
    """
    existing = ctx.hooks.calendar
    if isinstance(existing, NodeCalendar):
        return existing
    calendar = NodeCalendar(store=CalendarStore.open(service_database_url(ctx.settings, "calendar")))
    calendar.add_years(ChineseWorkingCalendar.with_files(files or []).years.values())
    if isinstance(existing, ChineseWorkingCalendar):
        calendar.add_years(existing.years.values())  # a calendar handed in by a test or a host
    calendar.file_years = dict(calendar.years)
    calendar.refresh(force=True)
    ctx.hooks.calendar = calendar
    node = ctx.settings.node
    if node in ctx.regions:  # labels are known region codes only
        calendar.node = node
        _GAUGE_OWNERS[node] = calendar
        CALENDAR_DAYS_LEFT.labels(region=node).set_function(lambda: calendar.days_left(china_date(ctx.clock())))
    return calendar
