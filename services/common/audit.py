"""Append-only audit trail of what people and peers change, keyed and chained so a changed or deleted record shows.

Each record holds actor, node, time, method, target and outcome, plus ``prev_hash`` and
``hash = HMAC-SM3(audit key, prev_hash || canonical JSON of the record)``. ``verify`` walks the
chain from the first record: an edited row no longer matches its hash, a deleted row breaks the
next row's ``prev_hash`` (and leaves a gap in ``seq``). The key is the node's own
(``LIANXIN_AUDIT_KEY``, else generated into ``<data_dir>/<node>/audit-key``), so a chain cannot be
recomputed without it; and the node's exchange sends its chain head (sequence, hash) to the parent
node as an anchor, so even a rewrite with the key, or deleting the newest records, is found against
the anchors held above (``verify(anchors=...)``, ``lianxin audit verify``).

One audit database per node (``service_database_url(settings, "audit")``: a SQLite file beside the
services' files, or the PostgreSQL schema ``audit``). On PostgreSQL ``protect_postgres`` adds a
trigger refusing UPDATE/DELETE/TRUNCATE for everybody and grants the services' role INSERT and
SELECT only.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import BigInteger, Column, DateTime, Engine, Integer, MetaData, String, Table, select, text
from sqlalchemy.exc import DBAPIError, ProgrammingError

from services.common.crypto import node_secret, sm3, sm3_hmac
from services.common.settings import Settings

GENESIS = "0" * 64
AUDIT_ROLE = "lianxin_service"

metadata = MetaData()


def audit_table(md: MetaData, name: str = "audit_log") -> Table:
    """The audit table for ``md`` (like ``outbox_table``), so a service could keep its own trail too."""
    return Table(
        name,
        md,
        Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=False),
        Column("at", DateTime(timezone=True), nullable=False),
        Column("actor", String(128), nullable=False),
        Column("node", String(6), nullable=False),
        Column("method", String(200), nullable=False),
        Column("target", String(128), nullable=False, default=""),
        Column("outcome", String(32), nullable=False),
        Column("prev_hash", String(64), nullable=False),
        Column("hash", String(64), nullable=False),
    )


audit_log = audit_table(metadata)


@dataclass(frozen=True)
class AuditRecord:
    seq: int
    at: datetime
    actor: str
    node: str
    method: str
    target: str
    outcome: str
    prev_hash: str
    hash: str


def _canonical(seq: int, at: datetime, actor: str, node: str, method: str, target: str, outcome: str) -> bytes:
    when = at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ") if at.tzinfo else at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    body = {
        "seq": seq,
        "at": when,
        "actor": actor,
        "node": node,
        "method": method,
        "target": target,
        "outcome": outcome,
    }
    return json.dumps(body, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode("utf-8")


def chain_hash(prev_hash: str, canonical: bytes, key: bytes | None = None) -> str:
    data = prev_hash.encode("ascii") + canonical
    return (sm3_hmac(key, data) if key else sm3(data)).hex()


AUDIT_KEY_FILE = "audit-key"


def load_audit_key(settings: Settings) -> bytes:
    """The node's audit key: ``LIANXIN_AUDIT_KEY`` (a value or a file), else its own generated one."""
    configured = settings.keys.audit_key
    if configured:
        path = Path(configured)
        return path.read_bytes().strip() if len(configured) < 256 and path.is_file() else configured.encode()
    return node_secret(Path(settings.data_dir) / settings.node, AUDIT_KEY_FILE)


@dataclass(frozen=True)
class Anchor:
    """A head of this node's chain as the parent holds it."""

    seq: int
    hash: str


@dataclass(frozen=True)
class VerifyReport:
    checked: int
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


class AuditLog:
    """Writes and verifies one node's audit chain."""

    def __init__(self, engine: Engine, node: str, key: bytes | None = None) -> None:
        self._engine = engine
        self._node = node
        self._key = key
        # One writer at a time inside the process; across processes the transaction lock below.
        self._lock = threading.Lock()

    @property
    def engine(self) -> Engine:
        return self._engine

    def create(self) -> None:
        metadata.create_all(self._engine)
        if self._engine.dialect.name == "postgresql":
            protect_postgres(self._engine)

    def record(self, *, actor: str, method: str, target: str, outcome: str, at: datetime | None = None) -> AuditRecord:
        when = at or datetime.now(UTC)
        with self._lock, self._engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                # Serialises writers of the chain across api replicas for this transaction.
                conn.execute(text("SELECT pg_advisory_xact_lock(7337001)"))
            last = conn.execute(
                select(audit_log.c.seq, audit_log.c.hash).order_by(audit_log.c.seq.desc()).limit(1)
            ).first()
            seq = 1 if last is None else int(last.seq) + 1
            prev = GENESIS if last is None else str(last.hash)
            digest = chain_hash(prev, _canonical(seq, when, actor, self._node, method, target, outcome), self._key)
            row = AuditRecord(seq, when, actor, self._node, method, target, outcome, prev, digest)
            conn.execute(audit_log.insert().values(**row.__dict__))
        return row

    def records(self) -> Iterator[AuditRecord]:
        with self._engine.connect() as conn:
            for r in conn.execute(select(audit_log).order_by(audit_log.c.seq)):
                at = r.at if r.at.tzinfo else r.at.replace(tzinfo=UTC)
                yield AuditRecord(r.seq, at, r.actor, r.node, r.method, r.target, r.outcome, r.prev_hash, r.hash)

    def head(self) -> AuditRecord | None:
        """The newest record (the chain head), or None before the first (or before the table exists)."""
        try:
            with self._engine.connect() as conn:
                row = conn.execute(select(audit_log).order_by(audit_log.c.seq.desc()).limit(1)).first()
        except DBAPIError:
            return None  # the server has not created the table yet
        if row is None:
            return None
        at = row.at if row.at.tzinfo else row.at.replace(tzinfo=UTC)
        return AuditRecord(
            row.seq, at, row.actor, row.node, row.method, row.target, row.outcome, row.prev_hash, row.hash
        )

    def verify(self, anchors: Sequence[Anchor] = ()) -> VerifyReport:
        """Walk the chain; with ``anchors`` (heads held by the parent) also find rewrites and truncation."""
        problems: list[str] = []
        hashes: dict[int, str] = {}
        prev = GENESIS
        expected_seq = 1
        checked = 0
        for rec in self.records():
            checked += 1
            if rec.seq != expected_seq:
                problems.append(f"record {expected_seq}..{rec.seq - 1} missing (deleted)")
            if rec.prev_hash != prev:
                problems.append(f"record {rec.seq}: chain broken (previous record changed or deleted)")
            canonical = _canonical(rec.seq, rec.at, rec.actor, rec.node, rec.method, rec.target, rec.outcome)
            if chain_hash(rec.prev_hash, canonical, self._key) != rec.hash:
                problems.append(f"record {rec.seq}: contents changed")
            prev = rec.hash
            expected_seq = rec.seq + 1
            hashes[rec.seq] = rec.hash
        last = expected_seq - 1
        for anchor in sorted(anchors, key=lambda a: a.seq):
            if anchor.seq > last:
                problems.append(
                    f"chain ends at record {last} but the parent holds record {anchor.seq}: "
                    "newest records deleted (truncated)"
                )
                break
            held = hashes.get(anchor.seq)
            if held is not None and held != anchor.hash:
                problems.append(f"record {anchor.seq}: differs from the anchor held by the parent (rewritten)")
        return VerifyReport(checked, problems)


# One statement each: psycopg 3 sends parameterless statements one at a time.
_PG_GUARD = (
    """CREATE OR REPLACE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'audit_log is append-only (%% refused)', TG_OP;
END $$""",
    "DROP TRIGGER IF EXISTS audit_log_no_update ON audit_log",
    """CREATE TRIGGER audit_log_no_update BEFORE UPDATE OR DELETE ON audit_log
  FOR EACH ROW EXECUTE FUNCTION audit_log_append_only()""",
    "DROP TRIGGER IF EXISTS audit_log_no_truncate ON audit_log",
    """CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
  FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only()""",
)


def protect_postgres(engine: Engine, role: str = AUDIT_ROLE) -> None:
    """Trigger against UPDATE/DELETE/TRUNCATE, and the services' role limited to INSERT + SELECT."""
    with engine.begin() as conn:
        for statement in _PG_GUARD:
            conn.exec_driver_sql(statement)
    with engine.begin() as conn:
        exists = conn.execute(text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role}).first()
        if exists is None:
            try:
                with conn.begin_nested():
                    conn.exec_driver_sql(f'CREATE ROLE "{role}" NOLOGIN')
            except ProgrammingError:
                pass  # created concurrently by another node's start
            except Exception as exc:  # duplicate role from a race surfaces as IntegrityError on some drivers
                if "already exists" not in str(exc):
                    raise
        schema = conn.execute(text("SELECT current_schema()")).scalar_one()
        conn.exec_driver_sql(f'GRANT USAGE ON SCHEMA "{schema}" TO "{role}"')
        conn.exec_driver_sql(f'REVOKE ALL ON audit_log FROM "{role}"')
        conn.exec_driver_sql(f'GRANT SELECT, INSERT ON audit_log TO "{role}"')
