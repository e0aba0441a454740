"""Synthetic warehouse facts in bulk (benchmark, bulletin demos): plausible cases, no personal data.

Rows go straight into ``case_facts`` with executemany (SQLite) or COPY (PostgreSQL); they follow
the same column meanings as folded facts, with reply working days approximated as 5/7 of the
calendar days (the calendar is not the point of a volume test). The derived tables (rollups,
region rollups, daily counts) are then rebuilt from the facts set-based.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from services.common.categories import CATEGORIES
from services.common.regions import RegionTree, Tier
from services.stats.domain import ONLINE_CHANNELS, StatsConfig, month_bounds, region_columns
from services.stats.models import metadata
from services.stats.store import SqlWarehouse

CHANNELS = ("hotline", "web", "app", "wechat", "letter", "leader_board", "walk_in")
CHANNEL_WEIGHTS = (0.45, 0.15, 0.12, 0.18, 0.04, 0.03, 0.03)
RATINGS = ("satisfied", "basically_satisfied", "unsatisfied", "")
RATING_WEIGHTS = (0.55, 0.2, 0.08, 0.17)
COLUMNS = (
    "case_id", "province_code", "city_code", "county_code", "region_code", "registering_node", "channel",
    "category", "state", "version", "submitted_at", "updated_at", "stat_month", "online", "is_repeat",
    "unit_id", "work_order_id", "accept_due", "accepted_at", "handling_due", "replied_at", "reply_workdays",
    "closed_at", "satisfaction", "rating_default_at", "supervision_count", "rolled_at", "next_window_at",
    "assist_late_units", "instructed_at", "tp_month", "tp_rating", "consulted_at",
    "notices_sent", "notices_failed", "notices_off",
)  # fmt: skip


def counties_of(tree: RegionTree, root: str) -> list[str]:
    return [c for c in tree.subtree(root) if tree.get(c).tier is Tier.COUNTY] or [root]


def _as_text(values: Any, present: Any) -> list[str | None]:
    """UTC datetime64 values as 'YYYY-MM-DD HH:MM:SS.ffffff' (SQLite's form; PostgreSQL loads it in UTC)."""
    text = np.char.replace(np.datetime_as_string(values, unit="us"), "T", " ").astype(object)
    text[~present] = None
    return list(text.tolist())


def generate(
    n: int,
    *,
    tree: RegionTree,
    root: str,
    months: Sequence[str],
    config: StatsConfig,
    seed: int = 1,
    chunk: int = 200_000,
    start_index: int = 0,
    rolled_at: datetime | None = None,
) -> Iterator[list[tuple[Any, ...]]]:
    """Chunks of fact rows (tuples in ``COLUMNS`` order) spread over ``months`` and the counties under ``root``.

    Column-wise with numpy (about a million rows in a few seconds): datetimes come out as UTC text.
    ``rolled_at`` (default now) is the moment the rows' rollup contribution is computed at.
    """
    rng = np.random.default_rng(seed)
    counties = counties_of(tree, root)
    paths = [region_columns(tree, c, c) for c in counties]
    # Uneven county sizes, as in life: some districts send far more than others.
    county_weights = rng.pareto(1.5, len(counties)) + 0.2
    county_weights /= county_weights.sum()
    first, _ = month_bounds(months[0], config)
    _, last = month_bounds(months[-1], config)
    span = (last - first).total_seconds()
    rolled = (rolled_at or datetime.now(UTC)).astimezone(UTC)
    rolled_np = np.datetime64(rolled.replace(tzinfo=None), "us")
    rolled_text = rolled.replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f")
    first_np = np.datetime64(first.astimezone(UTC).replace(tzinfo=None), "us")
    day_us = np.timedelta64(86_400_000_000, "us")
    never = np.datetime64("9999-01-01", "us")
    done = 0
    while done < n:
        size = min(chunk, n - done)
        county_ix = rng.choice(len(counties), size, p=county_weights)
        # In submission order, as cases arrive: each chunk covers its own stretch of the period,
        # so a month's facts lie together in the table as they do in a warehouse filled live.
        offsets = np.sort(rng.uniform(span * done / n, span * (done + size) / n, size))
        channel_ix = rng.choice(len(CHANNELS), size, p=CHANNEL_WEIGHTS)
        category_ix = rng.integers(0, len(CATEGORIES), size)
        accept_days = rng.exponential(1.5, size)
        reply_days = rng.gamma(2.0, 6.0, size)
        replied = rng.random(size) < 0.9
        closed = replied & (rng.random(size) < 0.85)
        rating_ix = rng.choice(len(RATINGS), size, p=RATING_WEIGHTS)
        repeat = rng.random(size) < 0.05
        supervised = rng.random(size) < 0.03
        submitted = first_np + (offsets * 1e6).astype("timedelta64[us]")
        accepted = submitted + (accept_days * 86_400e6).astype("timedelta64[us]")
        reply_at = submitted + (reply_days * 86_400e6).astype("timedelta64[us]")
        close_at = reply_at + day_us
        accept_due = submitted + 3 * day_us
        handling_due = submitted + 20 * day_us
        rating_due = reply_at + 28 * day_us
        # The statistical month of the Shanghai calendar day of submission.
        local = submitted + np.timedelta64(8, "h")
        month_start = local.astype("datetime64[M]")
        day_of_month = (local.astype("datetime64[D]") - month_start.astype("datetime64[D]")).astype(int) + 1
        if config.month_start_day > 1:
            month_start = month_start + (day_of_month >= config.month_start_day).astype("timedelta64[M]")
        stat_months = np.datetime_as_string(month_start, unit="M").tolist()
        # The first deadline still ahead of rolled_at (see store.py "Rollups").
        ahead = np.stack([accept_due, handling_due, np.where(replied, rating_due, never)])
        ahead = np.where(ahead >= rolled_np, ahead, never).min(axis=0)
        everyone = np.ones(size, dtype=bool)
        submitted_t = _as_text(submitted, everyone)
        reply_t = _as_text(reply_at, replied)
        close_t = _as_text(close_at, closed)
        last_t = _as_text(np.where(closed, close_at, np.where(replied, reply_at, accepted)), everyone)
        accept_due_t = _as_text(accept_due, everyone)
        accepted_t = _as_text(accepted, everyone)
        handling_t = _as_text(handling_due, everyone)
        rating_t = _as_text(rating_due, replied)
        window_t = _as_text(ahead, ahead != never)
        days = np.where(replied, (reply_days * 5 / 7).astype(int), -1).tolist()
        dates = np.datetime_as_string(submitted.astype("datetime64[D]")).tolist()
        rows: list[tuple[Any, ...]] = []
        for i, (c_ix, ch_ix, cat_ix, r_ix) in enumerate(
            zip(county_ix.tolist(), channel_ix.tolist(), category_ix.tolist(), rating_ix.tolist(), strict=True)
        ):
            index = start_index + done + i
            region, province, city, county_code = paths[c_ix]
            county = counties[c_ix]
            category = CATEGORIES[cat_ix]
            channel = CHANNELS[ch_ix]
            is_replied = days[i] >= 0
            state = "CLOSED" if close_t[i] else ("REPLIED" if is_replied else "IN_PROGRESS")
            if not is_replied and index % 50 == 7:
                state = "MERGED"  # 并单: a few unreplied cases merged into another (no extra draw: same stream)
            rows.append(
                (
                    f"{county}-{dates[i].replace('-', '')}-{index:09d}",
                    province, city, county_code, region, county, channel, category, state, 5,
                    submitted_t[i], last_t[i], stat_months[i],
                    channel in ONLINE_CHANNELS, bool(repeat[i]), f"{county}:{category}", f"wo-{index}",
                    accept_due_t[i], accepted_t[i], handling_t[i], reply_t[i],
                    days[i] if is_replied else None, close_t[i],
                    RATINGS[r_ix] if is_replied else "", rating_t[i], int(supervised[i]),
                    rolled_text, window_t[i],
                    f",{county}:assist," if index % 40 == 3 else "",  # 协办 late (no extra draw)
                    accepted_t[i] if index % 60 == 11 else None,  # 领导批示 (no extra draw)
                    stat_months[i] if index % 25 == 7 else "",  # 第三方评价 sampled (no extra draw)
                    RATINGS[index % 3] if index % 50 == 7 else "",  # and rated
                    reply_t[i] if index % 70 == 13 else None,  # 远程会商 held (no extra draw)
                    # 办事进度推送 (no extra draw): accepted and replied notices, a few given up, a few opted out
                    0 if index % 20 == 9 else 1 + int(is_replied) + int(bool(close_t[i])),
                    1 if index % 45 == 4 else 0,
                    index % 20 == 9,
                )
            )  # fmt: skip
        done += size
        yield rows


def bulk_insert(
    engine: Engine,
    chunks: Iterator[list[tuple[Any, ...]]],
    *,
    defer_indexes: bool = False,
    progress: Callable[[str], None] | None = None,
) -> int:
    """Insert generated rows (COPY on PostgreSQL, executemany in one transaction per chunk on
    SQLite), then rebuild the derived tables from all facts set-based. Returns the row count.

    ``defer_indexes`` drops the fact table's secondary indexes for the load and builds them after
    (much faster for millions of rows into an empty table). ``progress`` gets a line per chunk
    and per phase.
    """
    say = progress or (lambda _line: None)
    indexes = list(metadata.tables["case_facts"].indexes) if defer_indexes else []
    with engine.begin() as conn:
        for index in indexes:
            index.drop(conn)
    total = 0
    started = time.perf_counter()
    raw: Any = engine.raw_connection()
    try:
        if engine.dialect.name == "postgresql":
            cursor = raw.cursor()
            cursor.execute("SET TIME ZONE 'UTC'")  # the text timestamps are UTC
            for rows in chunks:
                with cursor.copy(f"COPY case_facts ({', '.join(COLUMNS)}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
                raw.commit()
                total += len(rows)
                say(_rate("facts", total, started))
            cursor.execute("RESET TIME ZONE")
            raw.commit()
        else:
            placeholders = ", ".join("?" for _ in COLUMNS)
            sql = f"INSERT INTO case_facts ({', '.join(COLUMNS)}) VALUES ({placeholders})"
            cursor = raw.cursor()
            cursor.execute("PRAGMA synchronous=OFF")  # for the load only; a crash means loading again
            for rows in chunks:
                cursor.execute("BEGIN")
                cursor.executemany(sql, rows)
                cursor.execute("COMMIT")
                total += len(rows)
                say(_rate("facts", total, started))
            cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        raw.close()
    for index in indexes:
        step = time.perf_counter()
        with engine.begin() as conn:
            index.create(conn)
        say(f"index {index.name}: {time.perf_counter() - step:.0f} s")
    step = time.perf_counter()
    with Session(engine) as session, session.begin():
        SqlWarehouse(session).rebuild_rollups()
    say(f"derived tables (rollups, region rollups, daily counts): {time.perf_counter() - step:.0f} s")
    return total


def _rate(what: str, done: int, started: float) -> str:
    elapsed = time.perf_counter() - started
    return f"{what}: {done:,} in {elapsed:.0f} s ({done / max(elapsed, 1e-9):,.0f} rows/s)"


# CATEGORIES: the vocabulary the rows are generated with (services.common.categories), checked by the tests.
__all__ = ["CATEGORIES", "CHANNELS", "COLUMNS", "RATINGS", "bulk_insert", "counties_of", "generate"]
