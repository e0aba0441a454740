"""Synthetic warehouse facts in bulk (benchmark, bulletin demos): plausible cases, no personal data.

Rows go straight into ``case_facts`` with executemany (SQLite) or COPY (PostgreSQL); they follow
the same column meanings as folded facts, with reply working days approximated as 5/7 of the
calendar days (the calendar is not the point of a volume test).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import Engine

from services.common.regions import RegionTree, Tier
from services.stats.domain import ONLINE_CHANNELS, StatsConfig, month_bounds, stat_month_of
from services.stats.handlers import region_columns

CATEGORIES = ("城乡建设", "劳动和社会保障", "教育文体", "商贸旅游", "卫生计生", "环境保护", "交通运输", "其他")
CHANNELS = ("hotline", "web", "app", "wechat", "letter", "leader_board", "walk_in")
CHANNEL_WEIGHTS = (0.45, 0.15, 0.12, 0.18, 0.04, 0.03, 0.03)
RATINGS = ("satisfied", "basically_satisfied", "unsatisfied", "")
RATING_WEIGHTS = (0.55, 0.2, 0.08, 0.17)
COLUMNS = (
    "case_id", "province_code", "city_code", "county_code", "region_code", "registering_node", "channel",
    "category", "state", "version", "submitted_at", "updated_at", "stat_month", "online", "is_repeat",
    "unit_id", "work_order_id", "accept_due", "accepted_at", "handling_due", "replied_at", "reply_workdays",
    "closed_at", "satisfaction", "rating_default_at", "supervision_count",
)  # fmt: skip


def counties_of(tree: RegionTree, root: str) -> list[str]:
    return [c for c in tree.subtree(root) if tree.get(c).tier is Tier.COUNTY] or [root]


def generate(
    n: int,
    *,
    tree: RegionTree,
    root: str,
    months: Sequence[str],
    config: StatsConfig,
    seed: int = 1,
    chunk: int = 50_000,
    start_index: int = 0,
) -> Iterator[list[tuple[Any, ...]]]:
    """Chunks of fact rows (tuples in ``COLUMNS`` order) spread over ``months`` and the counties under ``root``."""
    rng = np.random.default_rng(seed)
    counties = counties_of(tree, root)
    paths = {c: region_columns(tree, c, c) for c in counties}
    # Uneven county sizes, as in life: some districts send far more than others.
    county_weights = rng.pareto(1.5, len(counties)) + 0.2
    county_weights /= county_weights.sum()
    first, _ = month_bounds(months[0], config)
    _, last = month_bounds(months[-1], config)
    span = (last - first).total_seconds()
    done = 0
    while done < n:
        size = min(chunk, n - done)
        county_ix = rng.choice(len(counties), size, p=county_weights)
        offsets = rng.uniform(0, span, size)
        channel_ix = rng.choice(len(CHANNELS), size, p=CHANNEL_WEIGHTS)
        category_ix = rng.integers(0, len(CATEGORIES), size)
        accept_days = rng.exponential(1.5, size)
        reply_days = rng.gamma(2.0, 6.0, size)
        replied = rng.random(size) < 0.9
        closed = replied & (rng.random(size) < 0.85)
        rating_ix = rng.choice(len(RATINGS), size, p=RATING_WEIGHTS)
        repeat = rng.random(size) < 0.05
        supervised = rng.random(size) < 0.03
        rows: list[tuple[Any, ...]] = []
        for i in range(size):
            index = start_index + done + i
            county = counties[county_ix[i]]
            region, province, city, county_code = paths[county]
            submitted = first + timedelta(seconds=float(offsets[i]))
            category = CATEGORIES[category_ix[i]]
            channel = CHANNELS[channel_ix[i]]
            accepted = submitted + timedelta(days=float(accept_days[i]))
            reply_at = submitted + timedelta(days=float(reply_days[i])) if replied[i] else None
            close_at = reply_at + timedelta(days=1) if closed[i] and reply_at is not None else None
            state = "CLOSED" if close_at else ("REPLIED" if reply_at else "IN_PROGRESS")
            rows.append(
                (
                    f"{county}-{submitted:%Y%m%d}-{index:09d}",
                    province, city, county_code, region, county, channel, category, state, 5,
                    submitted, close_at or reply_at or accepted, stat_month_of(submitted, config),
                    channel in ONLINE_CHANNELS, bool(repeat[i]), f"{county}:{category}", f"wo-{index}",
                    submitted + timedelta(days=3), accepted, submitted + timedelta(days=20), reply_at,
                    int(reply_days[i] * 5 / 7) if reply_at else None, close_at,
                    RATINGS[rating_ix[i]] if reply_at else "",
                    reply_at + timedelta(days=28) if reply_at else None, int(supervised[i]),
                )
            )  # fmt: skip
        done += size
        yield rows


def _sqlite_value(value: Any) -> Any:
    # The text form SQLAlchemy's SQLite DateTime writes, so comparisons line up with ORM-written rows.
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    return value


def bulk_insert(engine: Engine, chunks: Iterator[list[tuple[Any, ...]]]) -> int:
    """Insert generated rows: COPY on PostgreSQL, executemany on SQLite. Returns the row count."""
    total = 0
    raw: Any = engine.raw_connection()
    try:
        if engine.dialect.name == "postgresql":
            cursor = raw.cursor()
            for rows in chunks:
                with cursor.copy(f"COPY case_facts ({', '.join(COLUMNS)}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
                raw.commit()
                total += len(rows)
        else:
            placeholders = ", ".join("?" for _ in COLUMNS)
            sql = f"INSERT INTO case_facts ({', '.join(COLUMNS)}) VALUES ({placeholders})"
            for rows in chunks:
                cursor = raw.cursor()
                cursor.execute("BEGIN")
                cursor.executemany(sql, [tuple(_sqlite_value(v) for v in row) for row in rows])
                cursor.execute("COMMIT")
                total += len(rows)
    finally:
        raw.close()
    return total
