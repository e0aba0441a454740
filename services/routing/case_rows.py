"""The case's own rows at this node: its version and owner epoch, snapshot, repeats, merges, the owner
replicas name, and the supervisions (催办/督办) recorded or replicated here."""

from __future__ import annotations

import functools
from datetime import datetime
from typing import Any, cast

from lianxin.common.v1 import common_pb2
from sqlalchemy import Integer, Table, and_, bindparam, func, or_, select, tuple_
from sqlalchemy.dialects import postgresql, sqlite

from services.common.db import COUNT_LIMIT
from services.common.timeutil import to_utc
from services.routing.handlers import CaseOwner, Supervision
from services.routing.models import (
    CaseMergeRow,
    CaseOwnerRow,
    CaseSnapshotRow,
    RepeatRow,
    SupervisionRow,
)
from services.routing.work_order_rows import CASE_VERSION_OF, INSERT_CASE_VERSION, UPDATE_CASE_VERSION, SessionBound

_SNAPSHOTS = cast(Table, CaseSnapshotRow.__table__)
_MERGES = cast(Table, CaseMergeRow.__table__)
# The cases merged into a main case: built once, run on the session's connection (every placement).
_MERGED_INTO = (
    select(_MERGES.c.case_id)
    .where(_MERGES.c.main_case_id == bindparam("main_case_id"))
    .order_by(_MERGES.c.merged_at, _MERGES.c.case_id)
)
_SUPERVISIONS = cast(Table, SupervisionRow.__table__)


def case_title(snapshot: bytes | None) -> str:
    """The title in a case's snapshot ("" when routing kept no copy of the case)."""
    return "" if snapshot is None else common_pb2.Case.FromString(snapshot).title


@functools.lru_cache(maxsize=8)
def _supervision_statements(case: bool, region: bool, after: bool) -> tuple[Any, Any]:
    """A supervision list's count (bounded_count's, at most COUNT_LIMIT + 1 read) and page statements,
    with bound parameters, built once per shape: built per call (and run through the ORM) they were
    half of a case page's ListWorkOrders (issue 17)."""
    t = _SUPERVISIONS
    conditions: list[Any] = []
    if case:
        conditions.append(t.c.case_id == bindparam("case_id"))
    if region:
        conditions.append(t.c.region_code.startswith(bindparam("prefix")))
    count = select(func.count()).select_from(
        select(t.c.supervision_id).where(*conditions).limit(COUNT_LIMIT + 1).subquery()
    )
    if after:
        at = bindparam("after_at", type_=t.c.issued_at.type)
        last: Any = bindparam("after_id")
        conditions.append(or_(t.c.issued_at < at, and_(t.c.issued_at == at, t.c.supervision_id > last)))
    rows = (
        select(t)
        .where(*conditions)
        .order_by(t.c.issued_at.desc(), t.c.supervision_id)
        .limit(bindparam("limit", type_=Integer))
    )
    return count, rows


class CaseTables(SessionBound):
    """``case_versions``, ``case_snapshots``, ``repeats``, ``case_merges``, ``case_owners``, ``supervisions``."""

    def start_case(self, case_id: str, *, version: int, owner_epoch: int) -> None:
        connection = self.session.connection()
        known = self.case_version(case_id)
        if known is None:
            connection.execute(
                INSERT_CASE_VERSION, {"case_id": case_id, "version": version, "owner_epoch": owner_epoch}
            )
        elif owner_epoch >= known[1]:
            # The case came back (hand-off down again): continue from the newer of the two versions.
            version = max(known[0], version)
            connection.execute(
                UPDATE_CASE_VERSION, {"b_case_id": case_id, "version": version, "owner_epoch": owner_epoch}
            )
        else:
            return
        self._versions[case_id] = [version, owner_epoch]

    def case_version(self, case_id: str) -> tuple[int, int] | None:
        row = self.session.connection().execute(CASE_VERSION_OF[False], {"case_id": case_id}).first()
        return None if row is None else (row.version, row.owner_epoch)

    def keep_snapshot(self, case_id: str, snapshot: bytes) -> None:
        connection = self.session.connection()
        connection.execute(_snapshot_upsert(connection.dialect.name), {"case_id": case_id, "snapshot": snapshot})

    def case_snapshot(self, case_id: str) -> bytes:
        row = self.session.get(CaseSnapshotRow, case_id)
        return b"" if row is None else bytes(row.snapshot)

    def record_repeat(self, original_case_id: str, repeat_case_id: str) -> int:
        dialect = self.session.get_bind().dialect.name
        insert: Any = postgresql.insert(RepeatRow) if dialect == "postgresql" else sqlite.insert(RepeatRow)
        self.session.execute(
            insert.values(original_case_id=original_case_id, repeat_case_id=repeat_case_id).on_conflict_do_nothing()
        )
        count = self.session.scalar(
            select(func.count()).select_from(RepeatRow).where(RepeatRow.original_case_id == original_case_id)
        )
        return int(count or 0)

    def record_merge(self, case_id: str, main_case_id: str, *, at: datetime) -> None:
        self.session.merge(CaseMergeRow(case_id=case_id, main_case_id=main_case_id, merged_at=to_utc(at)))
        self.session.flush()

    def remove_merge(self, case_id: str) -> None:
        row = self.session.get(CaseMergeRow, case_id)
        if row is not None:
            self.session.delete(row)
            self.session.flush()

    def merged_into(self, main_case_id: str) -> list[str]:
        return list(self.session.connection().execute(_MERGED_INTO, {"main_case_id": main_case_id}).scalars())

    def case_owner(self, case_id: str) -> CaseOwner | None:
        row = self.session.get(CaseOwnerRow, case_id)
        return None if row is None else CaseOwner(case_id, row.owner_node, row.owner_epoch, row.version)

    def note_owner(self, owner: CaseOwner) -> None:
        # One upsert, kept only when (epoch, version) is above the stored one: every replica of the
        # subtree's handling comes through here, and a read, an ORM change and a flush cost about
        # twice the statement (built once per dialect: building it per call cost as much again).
        connection = self.session.connection()  # Core, not the ORM's statement machinery: a plain upsert
        connection.execute(
            _owner_upsert(connection.dialect.name),
            {"case_id": owner.case_id, "node": owner.owner_node, "epoch": owner.owner_epoch, "version": owner.version},
        )

    def add_supervision(self, supervision: Supervision) -> None:
        self.session.add(SupervisionRow(**supervision_values(supervision)))
        self.session.flush()

    def has_supervision(self, supervision_id: str) -> bool:
        return self.session.get(SupervisionRow, supervision_id) is not None

    def list_supervisions(
        self, *, case_id: str, region_prefix: str, after: tuple[datetime, str] | None, limit: int
    ) -> tuple[list[Supervision], int]:
        count_sql, rows_sql = _supervision_statements(bool(case_id), bool(region_prefix), after is not None)
        params: dict[str, Any] = {"case_id": case_id, "prefix": region_prefix, "limit": limit}
        if after is not None:
            params["after_at"], params["after_id"] = after
        connection = self._connection()  # Core rows: a case page reads them for every view
        rows = connection.execute(rows_sql, params).all()
        if after is None and len(rows) < limit and len(rows) <= COUNT_LIMIT:
            total = len(rows)  # the first page holds them all (a case's few): no count statement
        else:
            found = connection.execute(count_sql, params).scalar() or 0
            total = -1 if found > COUNT_LIMIT else int(found)
        return [
            Supervision(
                supervision_id=r.supervision_id,
                case_id=r.case_id,
                work_order_id=r.work_order_id,
                level=r.level,
                by_node=r.by_node,
                by_actor=r.by_actor,
                demand=r.demand,
                due_at=to_utc(r.due_at),
                issued_at=to_utc(r.issued_at),
                region_code=r.region_code,
                outcome=r.outcome,
                state=r.state,
            )
            for r in rows
        ], total


def supervision_values(s: Supervision) -> dict[str, Any]:
    return {
        "supervision_id": s.supervision_id,
        "case_id": s.case_id,
        "work_order_id": s.work_order_id,
        "level": s.level,
        "by_node": s.by_node,
        "by_actor": s.by_actor,
        "demand": s.demand,
        "due_at": to_utc(s.due_at),
        "issued_at": to_utc(s.issued_at),
        "region_code": s.region_code,
        "outcome": s.outcome,
        "state": s.state,
    }


_OWNER_UPSERTS: dict[str, Any] = {}


def _owner_upsert(dialect: str) -> Any:
    """The case owner's insert-or-raise statement of ``dialect``, built on first use."""
    built = _OWNER_UPSERTS.get(dialect)
    if built is None:
        insert: Any = postgresql.insert(CaseOwnerRow) if dialect == "postgresql" else sqlite.insert(CaseOwnerRow)
        insert = insert.values(
            case_id=bindparam("case_id"),
            owner_node=bindparam("node"),
            owner_epoch=bindparam("epoch"),
            version=bindparam("version"),
        )
        built = _OWNER_UPSERTS[dialect] = insert.on_conflict_do_update(
            index_elements=[CaseOwnerRow.case_id],
            set_={
                "owner_node": insert.excluded.owner_node,
                "owner_epoch": insert.excluded.owner_epoch,
                "version": insert.excluded.version,
            },
            where=tuple_(CaseOwnerRow.owner_epoch, CaseOwnerRow.version)
            < tuple_(insert.excluded.owner_epoch, insert.excluded.version),
        )
    return built


_SNAPSHOT_UPSERTS: dict[str, Any] = {}


def _snapshot_upsert(dialect: str) -> Any:
    """The case snapshot's insert-or-replace of ``dialect`` (what ``Session.merge`` did in two
    statements and a flush), built on first use."""
    built = _SNAPSHOT_UPSERTS.get(dialect)
    if built is None:
        insert_: Any = postgresql.insert(_SNAPSHOTS) if dialect == "postgresql" else sqlite.insert(_SNAPSHOTS)
        built = _SNAPSHOT_UPSERTS[dialect] = insert_.on_conflict_do_update(
            index_elements=[_SNAPSHOTS.c.case_id], set_={"snapshot": insert_.excluded.snapshot}
        )
    return built
