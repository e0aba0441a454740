"""Stored cases for benchmarks and plan tests: years of a node's history, bulk-inserted in seconds.

``preload(settings, stored)`` writes ``stored`` cases (intake: the case, its public timeline) and
their work orders (routing: the work order, its history, the case's event version) straight into
the node's databases, with the skew real data has (issue 20): most cases carry no ID number, a few
heavy submitters send hundreds of cases each, phones repeat, dates spread over several years and
all but the last few weeks' cases are closed. Personal data is sealed and blind-indexed with the
node's own cipher (``cipher_from_env``), tracking codes are valid, so every preloaded case can be
read back through the RPCs. PostgreSQL takes the rows with COPY, SQLite with one ``executemany``
per table in one transaction; then PostgreSQL's tables are analysed, as autovacuum would (SQLite's
are not: nothing analyses a node's intake or routing file).

    .venv/bin/python -m bench.preload --stored 100000 --data-dir /tmp/n   # SQLite files of node 511102
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import multiprocessing
import os
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from lianxin.common.v1 import common_pb2
from sqlalchemy import Engine, Table, text

from services.common.categories import CATEGORIES
from services.common.crypto import cipher_from_env
from services.common.db import make_engine, service_database_url
from services.common.ids import format_case_id
from services.common.migrations import upgrade
from services.common.regions import RegionTree
from services.common.settings import Settings
from services.intake import dedup
from services.intake import models as intake_models
from services.intake.tracking import ALPHABET, check_character
from services.routing import models as routing_models
from services.routing.handlers import FAR_FUTURE, work_order_id_for
from services.routing.jurisdiction import load_catalogue

CHUNK = 20_000
HEAVY_SUBMITTERS = 20  # each sends about 0.1% of all cases (a petitioner writing every day)
HEAVY_SHARE = 0.02
PHONE_SHARE = 0.85  # the others came by letter or anonymously
# Optional on most channels: almost every stored ID number is empty, except the heavy submitters'.
ID_NUMBER_SHARE = 0.0005
DUPLICATE_SHARE = 0.01  # same text as the case before (a copy-pasted complaint)
CHANNELS = ("web", "app", "wechat", "hotline", "letter")
CLOSED_MIX = (("CLOSED", 0.93), ("WITHDRAWN", 0.03), ("MERGED", 0.02), ("REFUSED", 0.02))
OPEN_MIX = (("REGISTERED", 0.1), ("ASSIGNED", 0.25), ("ACCEPTED", 0.2), ("IN_PROGRESS", 0.3), ("REPLIED", 0.15))
# Routing's states for intake's (a work order is never REGISTERED once stored).
ROUTING_STATE = {"REGISTERED": "ASSIGNED", "WITHDRAWN": "WITHDRAWN", "MERGED": "MERGED", "REFUSED": "REFUSED"}
TEXTS = (
    ("小区停车难", "小区车位严重不足，夜里车辆停满消防通道，物业不管，请有关部门协调解决停车问题。"),
    ("拖欠工资", "在工地务工三个月，包工头一直拖欠工资不发，多次讨要无果，请劳动监察部门帮助追讨。"),
    ("噪音扰民", "附近工地夜间施工噪音很大，影响周边居民休息，希望环保部门查处夜间违规施工。"),
    ("路灯不亮", "嘉州大道部分路段路灯长期不亮，夜间行人和车辆通行很不安全，请尽快维修。"),
    ("学位申请", "孩子今年上小学，户籍和房产都在学区内却没有分到学位，请教育局核实说明。"),
    ("医保报销", "异地就医的医保报销材料提交两个月了还没有结果，请医保部门加快办理。"),
)

REPLY_TEXT = "您反映的问题已转交责任单位核查处理，现已整改完毕，感谢您对我们工作的监督。"


@dataclass
class Preloaded:
    """What a benchmark or test needs to know about the stored cases."""

    stored: int
    seconds: float
    heavy_phones: list[str] = field(default_factory=list)
    heavy_id_numbers: list[str] = field(default_factory=list)
    units: list[str] = field(default_factory=list)  # the units work orders went to, busiest first
    sample: list[tuple[str, str, str]] = field(default_factory=list)  # (case_id, tracking code, phone last 4)


def _tracking_code(number: int) -> str:
    # Valid codes (check character included) that a random one is as unlikely to hit as any other.
    payload = "".join(ALPHABET[(number >> (5 * k)) & 31] for k in range(10))[::-1]
    compact = payload + check_character(payload)
    return f"{compact[:5]}-{compact[5:]}"


_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)


def valid_id_number(first17: str) -> str:
    """A valid 18-digit ID number (GB 11643 check digit) starting with ``first17``."""
    total = sum(int(digit) * weight for digit, weight in zip(first17, _ID_WEIGHTS, strict=True))
    return first17 + "10X98765432"[total % 11]


def _pick(rng: random.Random, mix: Sequence[tuple[str, float]]) -> str:
    roll = rng.random()
    for value, share in mix:
        roll -= share
        if roll < 0:
            return value
    return mix[-1][0]


def _signed64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


class _Generator:
    """The rows of case ``i`` of ``stored``, the same for the same seed."""

    def __init__(
        self,
        *,
        node: str,
        stored: int,
        now: datetime,
        years: float,
        open_days: int,
        seed: int,
        regions_file: Any,
        key_dir: Path | None = None,
    ) -> None:
        self.node = node
        self.stored = stored
        self.rng = random.Random(seed)
        self.end = now - timedelta(days=1)  # today's case numbers stay free for new submits
        self.start = self.end - timedelta(days=365 * years)
        self.open_since = now - timedelta(days=open_days)
        # The node's own keyring (generated into its data directory on first use, so the node
        # started afterwards opens what was sealed here), unless the environment names one.
        self.cipher = cipher_from_env(os.environ, key_dir=key_dir)
        self.sealed: dict[tuple[str, str], bytes] = {}
        self.blind: dict[tuple[str, str], str] = {}
        self.heavy_phones = [f"1380000{n:04d}" for n in range(HEAVY_SUBMITTERS)]
        self.heavy_ids = [valid_id_number(f"51110219800101{n:03d}") for n in range(HEAVY_SUBMITTERS)]
        self.people = max(1, int(stored * 0.5))
        # The node's own dispatch catalogue: the units new submits go to (ListWorkOrders of one of them).
        catalogue = load_catalogue(node, RegionTree.load(regions_file))
        self.units = sorted(catalogue.units)
        self.unit_weights = [1.0 / (n + 1) for n in range(len(self.units))]  # a few busy units
        self.previous_fp = ""

    def _seal(self, field_name: str, value: str) -> bytes | None:
        if not value:
            return None
        # A small pool of distinct blobs per field: sealing is the slow part and the sizes are what matter.
        key = (field_name, value if len(self.sealed) < 400 else value[-1:])
        found = self.sealed.get(key)
        if found is None:
            found = self.sealed[key] = self.cipher.encrypt(value, context=f"cases.{field_name}")
        return found

    def _bidx(self, kind: str, value: str) -> str:
        if not value:
            return ""
        key = (kind, value)
        found = self.blind.get(key)
        if found is None:
            found = self.blind[key] = self.cipher.blind_index(kind, value)
        return found

    def case(self, i: int) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
        rng = self.rng
        at = self.start + (self.end - self.start) * (i / max(1, self.stored)) + timedelta(seconds=rng.randint(0, 59))
        # Numbered across days (still unique, increasing with the date): chunks are made apart.
        case_id = format_case_id(self.node, at.date(), i + 1)
        is_open = at >= self.open_since
        state = _pick(rng, OPEN_MIX if is_open else CLOSED_MIX)
        heavy = rng.random() < HEAVY_SHARE
        if heavy:
            who = rng.randrange(HEAVY_SUBMITTERS)
            phone, id_number = self.heavy_phones[who], self.heavy_ids[who]
        else:
            phone = f"139{rng.randrange(self.people):08d}" if rng.random() < PHONE_SHARE else ""
            id_number = f"5111{rng.randrange(10**14):014d}" if rng.random() < ID_NUMBER_SHARE else ""
        title, body = TEXTS[i % len(TEXTS)]
        if self.previous_fp and rng.random() < DUPLICATE_SHARE:
            fingerprint = self.previous_fp
        else:
            fingerprint = hashlib.sha256(f"preload-{i}".encode()).hexdigest()
        self.previous_fp = fingerprint
        simhash = rng.getrandbits(64)
        channel = CHANNELS[i % len(CHANNELS)]
        category = CATEGORIES[rng.randrange(len(CATEGORIES))]
        unit = rng.choices(self.units, self.unit_weights)[0]
        work_order_id = work_order_id_for(case_id, self.node)
        closed_at = at + timedelta(days=rng.randint(3, 30))
        case = {
            "case_id": case_id,
            "tracking_code": _tracking_code(i),
            "idempotency_key": f"{channel}:preload-{i}",
            "channel": channel,
            "channel_ref": f"preload-{i}",
            "title": f"{title}（{i}）",
            "body": body,
            "category": category,
            "category_auto": False,
            "region_code": self.node,
            "place_unresolved": False,
            "registering_node": self.node,
            "owner_node": self.node,
            "owner_epoch": 1,
            "state": state,
            "version": 3,
            "anonymous": not phone and not id_number,
            "repeat_of": "",
            "duplicate_of": "",
            # A third of the citizens consent to the publication of the reply (the public board).
            "flags": "publish_consent" if i % 3 == 0 else "",
            "hotline_operator_id": "",
            "name_sealed": self._seal("name", "张三" if phone or id_number else ""),
            "id_number_sealed": self._seal("id_number", id_number),
            "phone_sealed": self._seal("phone", phone),
            "address_sealed": None,
            "id_number_bidx": self._bidx("id_number", id_number),
            "phone_bidx": self._bidx("phone", phone),
            "phone_last4": phone[-4:],
            "submitted_at": at,
            "updated_at": at if is_open else closed_at,
            "received_at": at,
            "fingerprint": fingerprint,
            "simhash": _signed64(simhash),
            **{f"band{n}": (simhash >> (16 * n)) & 0xFFFF for n in range(dedup.BANDS)},
            "moderation_reasons": "",
            "handling_version": 2,
            "work_order_id": work_order_id,
            "unit_id": unit,
            "reply_count": 0 if is_open else 1,
            "replied_at": None if is_open else closed_at,
            "reply_text": "" if is_open or state != "CLOSED" else REPLY_TEXT,
            "evaluated_reply": 0,
            "satisfaction": "",
            "review_reply": 0,
        }
        timeline = [{"case_id": case_id, "at": at, "state": "REGISTERED", "summary": "已登记 registered"}]
        if not is_open:
            timeline.append({"case_id": case_id, "at": closed_at, "state": state, "summary": "已办结 closed"})
        routing_state = ROUTING_STATE.get(state, state)
        due = at + timedelta(days=15)
        data: dict[str, Any] = {
            "tier": "county",
            "category": category,
            "region_code": self.node,
            "unit_id": unit,
            "handling_kind": "settle",
            "deadlines": {"settle": due.isoformat()} if is_open else {},
            "windows": {},
            "clock_starts": {"settle": at.isoformat()},
            "pauses": [],
            "paused_since": None,
            "ext": [False, False, 0],
            "objection_barred": False,
            "reopen_count": 0,
            "reviewed": False,
            "reply": ["", [], None if is_open else closed_at.isoformat()],
            "merged_into": "",
            "transferred_to": "",
            "fired": [],
        }
        work_order = {
            "work_order_id": work_order_id,
            "case_id": case_id,
            "node": self.node,
            "unit_id": unit,
            "category": category,
            "region_code": self.node,
            "state": routing_state,
            "manual_queue": 0,
            "manual_reason": "",
            "hand_off_to": "",
            "data": json.dumps(data, ensure_ascii=False, separators=(",", ":")),
            "requested_days": 0,
            "provisional": "",
            "next_due": due if is_open else FAR_FUTURE,
            "next_sweep_at": due if is_open else None,
            "version": 2,
            "created_at": at,
            "updated_at": at if is_open else closed_at,
        }
        history = {
            "work_order_id": work_order_id,
            "at": at,
            "actor": "system",
            "action": "assign",
            "from_state": "REGISTERED",
            "to_state": "ASSIGNED",
            "reason": "",
        }
        return case, timeline, work_order, history


def _sqlite_value(value: Any) -> Any:
    # As SQLAlchemy's SQLite types store them (every stored instant is UTC).
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    if isinstance(value, bool):
        return int(value)
    return value


def _defaults(table: Table) -> dict[str, Any]:
    # Columns the generator does not know (added since) get their declared default, as an ORM insert would.
    out: dict[str, Any] = {}
    for column in table.columns:
        default: Any = column.default
        if default is not None and default.is_scalar:
            out[column.name] = default.arg
        elif column.nullable and not column.primary_key:
            out[column.name] = None
    return out


def _write(engine: Engine, table: str, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    missing = {k: v for k, v in _DEFAULTS[table].items() if k not in rows[0]}
    if missing:
        rows = [{**row, **missing} for row in rows]
    columns = list(rows[0])
    quoted = ", ".join(f'"{c}"' for c in columns)
    raw = engine.raw_connection()
    try:
        if engine.dialect.name == "postgresql":
            conn = raw.driver_connection
            assert conn is not None
            with conn.cursor() as cursor, cursor.copy(f"COPY {table} ({quoted}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row([row[c] for c in columns])
        else:
            cursor = raw.cursor()
            # Random keys (blind indexes, bands, tracking codes) touch index pages all over the file:
            # with SQLite's default 2 MB page cache each insert would read and write pages from disk.
            cursor.execute("PRAGMA cache_size = -262144")
            marks = ", ".join("?" for _ in columns)
            cursor.executemany(
                f"INSERT INTO {table} ({quoted}) VALUES ({marks})",
                [[_sqlite_value(row[c]) for c in columns] for row in rows],
            )
            cursor.close()
        raw.commit()
    finally:
        raw.close()


_DEFAULTS = {
    table.name: _defaults(table)
    for table in (
        intake_models.CaseRow.__table__,
        intake_models.TimelineRow.__table__,
        routing_models.WorkOrderRow.__table__,
        routing_models.WorkOrderHistoryRow.__table__,
        routing_models.CaseVersionRow.__table__,
        routing_models.CaseSnapshotRow.__table__,
    )
    if isinstance(table, Table)
}


def analyze_tables(engine: Engine, tables: Sequence[str]) -> None:
    # PostgreSQL only: autovacuum would analyse tables this size within minutes. Nothing analyses a
    # node's SQLite intake or routing file, so it is left without statistics, as a node's would be.
    if engine.dialect.name != "postgresql":
        return
    with engine.connect() as conn:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        for table in tables:
            conn.execute(text(f'VACUUM ANALYZE "{table}"'))  # the visibility map too: index-only scans


def _chunks(stored: int) -> Iterator[range]:
    for start in range(0, stored, CHUNK):
        yield range(start, min(stored, start + CHUNK))


@dataclass(frozen=True)
class _Plan:
    """What every chunk's generator needs (sent to the worker processes)."""

    node: str
    stored: int
    now: datetime
    years: float
    open_days: int
    seed: int
    regions_file: Any
    key_dir: Path


_TABLES: tuple[tuple[str, str], ...] = (
    ("intake", "cases"),
    ("intake", "case_timeline"),
    ("routing", "work_orders"),
    ("routing", "work_order_history"),
    ("routing", "case_versions"),
    ("routing", "case_snapshots"),
)


def _snapshot(case: dict[str, Any]) -> bytes:
    """The copy of the case routing keeps from its registration (no complainant): the inbox's titles."""
    submitted = Timestamp()
    submitted.FromDatetime(case["submitted_at"])
    return common_pb2.Case(
        case_id=case["case_id"],
        title=case["title"],
        body=case["body"],
        category=case["category"],
        region_code=case["region_code"],
        registering_node=case["registering_node"],
        submitted_at=submitted,
    ).SerializeToString()


def _chunk(plan: _Plan, chunk: range) -> tuple[dict[str, list[dict[str, Any]]], list[tuple[str, str, str]]]:
    """The rows of cases ``chunk`` by table, and the sample of them a benchmark reads back."""
    generator = _Generator(
        node=plan.node,
        stored=plan.stored,
        now=plan.now,
        years=plan.years,
        open_days=plan.open_days,
        seed=plan.seed * 1_000_003 + chunk.start,
        regions_file=plan.regions_file,
        key_dir=plan.key_dir,
    )
    rows: dict[str, list[dict[str, Any]]] = {table: [] for _, table in _TABLES}
    sample = []
    for i in chunk:
        case, entries, order, entry = generator.case(i)
        rows["cases"].append(case)
        rows["case_timeline"] += entries
        rows["work_orders"].append(order)
        rows["work_order_history"].append(entry)
        rows["case_versions"].append({"case_id": case["case_id"], "version": 2, "owner_epoch": 1})
        rows["case_snapshots"].append({"case_id": case["case_id"], "snapshot": _snapshot(case)})
        if i % max(1, plan.stored // 50) == 0:
            sample.append((case["case_id"], case["tracking_code"], case["phone_last4"]))
    return rows, sample


def _secondary_indexes(engine: Engine, tables: Sequence[str]) -> list[str]:
    """SQLite: drop the tables' declared indexes (not the UNIQUE constraints'), returning their DDL.

    Built once over a million sorted rows they cost a fraction of keeping them up to date row by row.
    """
    if engine.dialect.name != "sqlite":
        return []
    with engine.begin() as conn:
        found = conn.exec_driver_sql(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL AND tbl_name IN ({})".format(
                ", ".join(f"'{t}'" for t in tables)
            )
        ).all()
        for name, _ in found:
            conn.exec_driver_sql(f'DROP INDEX "{name}"')
    return [sql for _, sql in found]


def preload(
    settings: Settings,
    stored: int,
    *,
    now: datetime | None = None,
    years: float = 4.0,
    open_days: int = 20,
    seed: int = 20,
    progress: Any = None,
    processes: int = 3,
) -> Preloaded:
    """Write ``stored`` cases and their work orders into the node's intake and routing databases.

    The schemas are migrated first (idempotent), so this can run before the node starts. The rows are
    made in ``processes`` worker processes (0: in this one) and written here. ``progress`` is called
    with (done, stored) after each chunk.
    """
    began = time.monotonic()
    key_dir = Path(settings.data_dir) / settings.node
    key_dir.mkdir(parents=True, exist_ok=True)
    cipher_from_env(os.environ, key_dir=key_dir)  # the keyring made here, before the worker processes read it
    plan = _Plan(
        settings.node, stored, now or datetime.now(UTC), years, open_days, seed, settings.regions_file, key_dir
    )
    engines = {name: make_engine(service_database_url(settings, name), service=name) for name in ("intake", "routing")}
    pool = multiprocessing.get_context("fork").Pool(processes) if processes and stored > CHUNK else None
    try:
        for name, engine in engines.items():
            upgrade(engine, name)
        dropped = {
            name: _secondary_indexes(engine, [t for s, t in _TABLES if s == name]) for name, engine in engines.items()
        }
        sample: list[tuple[str, str, str]] = []
        chunks = list(_chunks(stored))
        made = pool.imap(functools.partial(_chunk, plan), chunks) if pool else (_chunk(plan, c) for c in chunks)
        for chunk, (rows, seen) in zip(chunks, made, strict=True):
            for service, table in _TABLES:
                _write(engines[service], table, rows[table])
            sample += seen
            if progress is not None:
                progress(chunk.stop, stored)
        for name, statements in dropped.items():
            with engines[name].begin() as conn:
                for statement in statements:
                    conn.exec_driver_sql(statement)
        analyze_tables(engines["intake"], ("cases", "case_timeline"))
        analyze_tables(engines["routing"], ("work_orders", "work_order_history", "case_versions", "case_snapshots"))
    finally:
        if pool is not None:
            pool.terminate()
        for engine in engines.values():
            engine.dispose()
    generator = _Generator(
        node=plan.node,
        stored=1,
        now=plan.now,
        years=years,
        open_days=open_days,
        seed=seed,
        regions_file=plan.regions_file,
    )
    return Preloaded(
        stored=stored,
        seconds=time.monotonic() - began,
        heavy_phones=generator.heavy_phones,
        heavy_id_numbers=generator.heavy_ids,
        units=generator.units,
        sample=sample,
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stored", type=int, default=100_000, help="cases to write (default 100000)")
    parser.add_argument("--node", default="511102")
    parser.add_argument("--data-dir", default=".lianxin", help="the node's data directory (SQLite files)")
    parser.add_argument("--database-url", default=None, help="PostgreSQL URL instead of SQLite files")
    args = parser.parse_args(argv)
    settings = Settings(node=args.node, data_dir=args.data_dir, database_url=args.database_url)
    done = preload(settings, args.stored, progress=lambda n, total: print(f"{n}/{total}", flush=True))
    print(f"{done.stored} cases stored in {done.seconds:.1f} s")


if __name__ == "__main__":
    main()
