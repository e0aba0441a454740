"""exchange's persistence, continued: what the links and the operators read (backlogs, holdings, the
down-queue, cursors) and the quarantine with its skips and the children's audit anchors.

A part of ``store.SqlExchangeUnitOfWork`` (its base class), kept apart so each module stays readable.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Table, bindparam, func, literal_column, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from services.exchange.bulk import Bulk
from services.exchange.digests import Held
from services.exchange.models import audit_anchor, down_queue, link_cursor, quarantine, replica, sequence_skip, up_log
from services.exchange.ports import ENVELOPE, Cursor, HeldRow, Item, Quarantined, QuarantineRow, Refused


def aware(moment: datetime | None) -> datetime | None:
    if moment is None:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def insert_or_skip(session: Session, table: Table) -> Any:
    """A dialect INSERT that supports ON CONFLICT (both our databases have it)."""
    if session.get_bind().dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


# Built once: a link reads its cursor before each push and each long poll it opens.
_CURSOR = select(link_cursor).where(link_cursor.c.peer == bindparam("peer"), link_cursor.c.kind == bindparam("kind"))


class ExchangeReads:
    """The queries and the quarantine of one transaction; ``session`` and ``_clock`` come from the unit of work."""

    _clock: Callable[[], datetime]

    @property
    def session(self) -> Session:
        raise NotImplementedError

    def bulk(self) -> Bulk:
        return Bulk(self.session)

    def _age(self, oldest: datetime | None) -> float:
        return (self._clock() - (aware(oldest) or self._clock())).total_seconds() if oldest else 0.0

    # ------------------------------------------------------------------ cursors and the up-log

    def cursor(self, peer: str, kind: str) -> Cursor | None:
        row = self.session.execute(_CURSOR, {"peer": peer, "kind": kind}).one_or_none()
        return None if row is None else Cursor(int(row.position), row.token, aware(row.last_contact))

    def cursors(self) -> list[tuple[str, str, Cursor]]:
        rows = self.session.execute(select(link_cursor)).all()
        return [(r.peer, r.kind, Cursor(int(r.position), r.token, aware(r.last_contact))) for r in rows]

    def pending_up(self, after: int, limit: int, *, envelopes_only: bool) -> list[Item]:
        only = f" AND kind = '{ENVELOPE}'" if envelopes_only else ""
        rows = self.bulk().rows(
            f"SELECT position, body, case_sequence, kind FROM up_log WHERE position > ?{only}"
            " ORDER BY position LIMIT ?",
            after,
            limit,
        )
        return [Item(int(position), kind, body, int(number)) for position, body, number, kind in rows]

    def up_backlog(self, after: int) -> tuple[int, float]:
        count, oldest = self.session.execute(
            select(func.count(), func.min(up_log.c.created_at)).where(up_log.c.position > after)
        ).one()
        return int(count), max(0.0, self._age(oldest))

    def head_up(self) -> int:
        return int(self.session.execute(select(func.coalesce(func.max(up_log.c.position), 0))).scalar_one())

    def holdings(self, *, origins: Sequence[str] | None, case_id: str) -> list[Held]:
        c = up_log.c
        # The kind as a literal, as in ux_up_log_envelope_case_sequence's WHERE: a bound parameter
        # keeps that partial index from serving one case's events (the whole up-log was read).
        query = select(
            c.case_id, c.version, c.event_type, c.origin_node, c.event_id, c.case_sequence, c.created_at
        ).where(c.kind == literal_column(f"'{ENVELOPE}'"))
        if case_id:
            query = query.where(c.case_id == case_id)
        if origins is not None:
            query = query.where(c.origin_node.in_(list(origins)))
        rows = self.session.execute(query.order_by(c.case_id, c.version, c.event_id)).all()
        return [Held(r[0], int(r[1]), r[2], r[3], r[4], int(r[5]), aware(r[6])) for r in rows]

    def _digest_where(self, origins: Sequence[str] | None) -> list[Any]:
        c = up_log.c
        # The kind as a literal, as in holdings(): a bound parameter kept the partial index from
        # serving the page's cases, and PostgreSQL's generic plan read the whole up-log (issue 20).
        where: list[Any] = [c.kind == literal_column(f"'{ENVELOPE}'")]
        if origins is not None:
            where.append(c.origin_node.in_(list(origins)))
        return where

    def digest_page(self, *, origins: Sequence[str] | None, after: str, limit: int) -> list[str]:
        c = up_log.c
        return list(
            self.session.execute(
                select(c.case_id)
                .where(*self._digest_where(origins), c.case_id > after)
                .group_by(c.case_id)
                .order_by(c.case_id)
                .limit(limit)
            ).scalars()
        )

    def held_rows(self, *, origins: Sequence[str] | None, case_ids: Sequence[str]) -> list[HeldRow]:
        c = up_log.c
        rows = self.session.execute(
            select(c.case_id, c.version, c.event_type, c.origin_node, c.event_id, c.case_sequence, c.body).where(
                *self._digest_where(origins), c.case_id.in_(case_ids)
            )
        ).all()
        return [HeldRow(Held(r[0], int(r[1]), r[2], r[3], r[4], int(r[5])), r[6]) for r in rows]

    # ------------------------------------------------------------------ the down-queue

    def pull_down(self, child: str, after: int, limit: int) -> tuple[list[Item], int]:
        session = self.session
        rows = session.execute(
            select(down_queue.c.position, down_queue.c.kind, down_queue.c.body)
            .where(down_queue.c.child_node == child, down_queue.c.position > after)
            .order_by(down_queue.c.position)
            .limit(limit)
        ).all()
        head = session.execute(
            select(func.coalesce(func.max(down_queue.c.position), 0)).where(down_queue.c.child_node == child)
        ).scalar_one()
        return [Item(int(r.position), r.kind, r.body) for r in rows], int(head)

    def down_backlog(self, child: str, after: int) -> tuple[int, float]:
        count, oldest = self.session.execute(
            select(func.count(), func.min(down_queue.c.created_at)).where(
                down_queue.c.child_node == child, down_queue.c.position > after
            )
        ).one()
        return int(count), max(0.0, self._age(oldest))

    # ------------------------------------------------------------------ quarantine

    def quarantine(self, peer: str, direction: str, refused: Sequence[Refused]) -> None:
        if not refused:
            return
        now = self._clock()
        rows = [
            {
                "peer_node": peer,
                "direction": direction,
                "kind": r.item.kind,
                "reason": r.reason,
                "summary": r.summary,
                "body": r.item.body,
                "case_sequence": r.item.case_sequence,
                "received_at": now,
            }
            for r in refused
        ]
        self.session.execute(quarantine.insert(), rows)

    def quarantined(self, quarantine_id: int) -> Quarantined | None:
        row = self.session.execute(select(quarantine).where(quarantine.c.id == quarantine_id)).one_or_none()
        if row is None:
            return None
        return Quarantined(
            int(row.id),
            row.peer_node,
            row.direction,
            row.kind,
            row.body,
            int(row.case_sequence),
            row.summary,
            row.resolved_at is not None,
        )

    def set_quarantine_reason(self, quarantine_id: int, reason: str) -> None:
        self.session.execute(update(quarantine).where(quarantine.c.id == quarantine_id).values(reason=reason))

    def resolve_quarantine(
        self, quarantine_id: int, *, disposition: str, at: datetime, actor: str = "", note: str = ""
    ) -> None:
        values: dict[str, Any] = {"resolved_at": at, "disposition": disposition}
        if disposition == "discarded":
            values.update(resolved_by=actor[:64], note=note)
        self.session.execute(update(quarantine).where(quarantine.c.id == quarantine_id).values(**values))

    def held_up(self, peer: str, *, exclude: int) -> list[tuple[int, int, bytes]]:
        rows = self.session.execute(
            select(quarantine.c.id, quarantine.c.case_sequence, quarantine.c.body).where(
                quarantine.c.peer_node == peer,
                quarantine.c.direction == "up",
                quarantine.c.kind == ENVELOPE,
                quarantine.c.resolved_at.is_(None),
                quarantine.c.id != exclude,
            )
        ).all()
        return [(int(qid), int(number), body) for qid, number, body in rows]

    def last_passed(self, child: str, case_id: str) -> int:
        session = self.session
        stored = session.execute(
            select(func.max(replica.c.case_sequence)).where(replica.c.child_node == child, replica.c.case_id == case_id)
        ).scalar_one_or_none()
        skipped = session.execute(
            select(func.max(sequence_skip.c.case_sequence)).where(
                sequence_skip.c.child_node == child, sequence_skip.c.case_id == case_id
            )
        ).scalar_one_or_none()
        return max(int(stored or 0), int(skipped or 0))

    def record_skip(self, child: str, case_id: str, case_sequence: int, quarantine_id: int, at: datetime) -> None:
        self.session.execute(
            sequence_skip.insert().values(
                child_node=child,
                case_id=case_id,
                case_sequence=case_sequence,
                quarantine_id=quarantine_id,
                skipped_at=at,
            )
        )

    def list_quarantine(self, peer: str, *, after_id: int, limit: int) -> tuple[list[QuarantineRow], int]:
        where = [quarantine.c.resolved_at.is_(None), quarantine.c.id > after_id]
        if peer:
            where.append(quarantine.c.peer_node == peer)
        session = self.session
        rows = session.execute(select(quarantine).where(*where).order_by(quarantine.c.id).limit(limit)).all()
        total = session.execute(select(func.count()).select_from(quarantine).where(*where[:1], *where[2:])).scalar_one()
        return (
            [
                QuarantineRow(
                    int(r.id), r.peer_node, r.direction, r.reason, r.summary, aware(r.received_at) or self._clock()
                )
                for r in rows
            ],
            int(total),
        )

    def quarantined_counts(self) -> dict[str, int]:
        rows = self.session.execute(
            select(quarantine.c.peer_node, func.count())
            .where(quarantine.c.resolved_at.is_(None))
            .group_by(quarantine.c.peer_node)
        ).all()
        return {r[0]: int(r[1]) for r in rows}

    # ------------------------------------------------------------------ audit anchors of children

    def record_anchor(self, child: str, sequence: int, chain_hash: str, at: datetime | None) -> None:
        session = self.session
        session.execute(
            insert_or_skip(session, audit_anchor)
            .values(child_node=child, sequence=sequence, hash=chain_hash, at=at, received_at=self._clock())
            .on_conflict_do_nothing()
        )

    def anchors(self, child: str) -> list[tuple[int, str, datetime | None, datetime]]:
        rows = self.session.execute(
            select(audit_anchor).where(audit_anchor.c.child_node == child).order_by(audit_anchor.c.sequence)
        ).all()
        return [(int(r.sequence), r.hash, aware(r.at), aware(r.received_at) or self._clock()) for r in rows]
