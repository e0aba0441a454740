"""exchange's persistence: the up-log, replicas, down-queues, cursors and quarantine (SQLAlchemy lives here)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from google.protobuf.message import DecodeError
from lianxin.events.v1 import events_pb2
from sqlalchemy import Table, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from services.common.db import transaction
from services.common.outbox import append_event
from services.common.regions import RegionTree
from services.common.service import BusEvent
from services.exchange import domain
from services.exchange.models import case_epoch, down_queue, inbox, link_cursor, outbox, quarantine, replica, up_log

ENVELOPE = "envelope"
COMMAND = "command"


@dataclass(frozen=True)
class Item:
    """One item crossing a link: its position on the sender's side and its serialized body."""

    position: int
    kind: str  # ENVELOPE | COMMAND
    body: bytes


@dataclass(frozen=True)
class Rejected:
    position: int
    reason: str


@dataclass(frozen=True)
class QuarantineRow:
    id: int
    peer_node: str
    direction: str
    reason: str
    summary: str
    received_at: datetime


@dataclass(frozen=True)
class ReplayOutcome:
    id: int
    applied: bool
    reason: str


@dataclass(frozen=True)
class Cursor:
    position: int
    token: str
    last_contact: datetime | None


def _aware(moment: datetime | None) -> datetime | None:
    if moment is None:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _insert(session: Session, table: Table) -> Any:
    """A dialect INSERT that supports ON CONFLICT (both our databases have it)."""
    if session.get_bind().dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def parse_envelope(body: bytes) -> events_pb2.EventEnvelope | None:
    env = events_pb2.EventEnvelope()
    try:
        env.ParseFromString(body)
    except DecodeError:
        return None
    return env if env.WhichOneof("payload") else None


def parse_command(body: bytes) -> events_pb2.Command | None:
    cmd = events_pb2.Command()
    try:
        cmd.ParseFromString(body)
    except DecodeError:
        return None
    return cmd if cmd.command_id and cmd.WhichOneof("body") else None


class ExchangeStore:
    """All of exchange's reads and writes for one node; every public method is one transaction."""

    def __init__(
        self,
        session_factory: sessionmaker[Session],
        *,
        node: str,
        regions: RegionTree,
        clock: Callable[[], datetime],
        notify: Callable[[], None] = lambda: None,
    ) -> None:
        self._sf = session_factory
        self.node = node
        self.regions = regions
        self._clock = clock
        self._notify = notify

    # ------------------------------------------------------------------ up-log (local events)

    def record_local(self, env: events_pb2.EventEnvelope, body: bytes) -> bool:
        """Append a local case event to the up-log (idempotent by event id); a hand-off down is also queued."""
        with transaction(self._sf) as session:
            added = self._append_up(session, env, body)
            if env.WhichOneof("payload") == "case_handed_off":
                self._note_epoch(session, env.case_id, env.case_handed_off.new_owner_epoch, env.case_handed_off.to_node)
                route = domain.route_down(env.case_handed_off.to_node, here=self.node, regions=self.regions)
                if route is not None and not route.local:
                    self._enqueue_down(session, route.next_child, env.event_id, ENVELOPE, body)
        return added

    def _append_up(self, session: Session, env: events_pb2.EventEnvelope, body: bytes) -> bool:
        stmt = (
            _insert(session, up_log)
            .values(
                event_id=env.event_id,
                case_id=env.case_id,
                version=env.version,
                event_type=env.WhichOneof("payload") or "",
                origin_node=env.origin_node,
                body=body,
                created_at=self._clock(),
            )
            .on_conflict_do_nothing()
            .returning(up_log.c.position)
        )
        return session.execute(stmt).scalar_one_or_none() is not None

    def pending_up(self, after: int, limit: int) -> list[Item]:
        with self._sf() as session:
            rows = session.execute(
                select(up_log.c.position, up_log.c.body)
                .where(up_log.c.position > after)
                .order_by(up_log.c.position)
                .limit(limit)
            ).all()
        return [Item(int(r.position), ENVELOPE, r.body) for r in rows]

    def pending_up_rows(self, after: int, limit: int) -> list[tuple[int, bytes, datetime]]:
        with self._sf() as session:
            rows = session.execute(
                select(up_log.c.position, up_log.c.body, up_log.c.created_at)
                .where(up_log.c.position > after)
                .order_by(up_log.c.position)
                .limit(limit)
            ).all()
        return [(int(r.position), r.body, _aware(r.created_at) or self._clock()) for r in rows]

    def up_backlog(self, after: int) -> tuple[int, float]:
        """(items after ``after``, age in seconds of the oldest) for lag figures."""
        with self._sf() as session:
            count, oldest = session.execute(
                select(func.count(), func.min(up_log.c.created_at)).where(up_log.c.position > after)
            ).one()
        age = (self._clock() - (_aware(oldest) or self._clock())).total_seconds() if oldest else 0.0
        return int(count), max(0.0, age)

    def head_up(self) -> int:
        with self._sf() as session:
            return int(session.execute(select(func.coalesce(func.max(up_log.c.position), 0))).scalar_one())

    # ------------------------------------------------------------------ cursors

    def cursor(self, peer: str, kind: str) -> Cursor:
        with self._sf() as session:
            row = session.execute(
                select(link_cursor).where(link_cursor.c.peer == peer, link_cursor.c.kind == kind)
            ).one_or_none()
        if row is None:
            return Cursor(0, "", None)
        return Cursor(int(row.position), row.token, _aware(row.last_contact))

    def save_cursor(self, peer: str, kind: str, *, position: int | None = None, token: str | None = None) -> None:
        with transaction(self._sf) as session:
            self._save_cursor(session, peer, kind, position=position, token=token)

    def _save_cursor(
        self, session: Session, peer: str, kind: str, *, position: int | None = None, token: str | None = None
    ) -> int:
        """Store a cursor that never moves back; returns the stored position."""
        now = self._clock()
        row = session.execute(
            select(link_cursor.c.position).where(link_cursor.c.peer == peer, link_cursor.c.kind == kind)
        ).one_or_none()
        if row is None:
            stored = position or 0
            session.execute(
                link_cursor.insert().values(peer=peer, kind=kind, position=stored, token=token or "", last_contact=now)
            )
            return stored
        stored = max(int(row.position), position or 0)
        values: dict[str, Any] = {"position": stored, "last_contact": now}
        if token is not None:
            values["token"] = token
        session.execute(
            update(link_cursor).where(link_cursor.c.peer == peer, link_cursor.c.kind == kind).values(**values)
        )
        return stored

    def cursors(self) -> list[tuple[str, str, Cursor]]:
        with self._sf() as session:
            rows = session.execute(select(link_cursor)).all()
        return [(r.peer, r.kind, Cursor(int(r.position), r.token, _aware(r.last_contact))) for r in rows]

    # ------------------------------------------------------------------ up: receiving a child's push

    def receive_push(self, child: str, items: Sequence[Item]) -> tuple[int, list[Rejected]]:
        """Store a child's batch: replicas applied once, bad items quarantined; returns (acked, rejections)."""
        rejections: list[Rejected] = []
        applied_any = False
        with transaction(self._sf) as session:
            stored = self._cursor_position(session, child, "child_up")
            acked = stored
            for item in items:
                if item.position <= stored:
                    continue  # a resend of what we already hold (the child lost our ack)
                reason = self._accept_from_child(session, child, item)
                if reason is None:
                    applied_any = True
                elif reason:
                    self._quarantine(session, child, "up", item, reason)
                    rejections.append(Rejected(item.position, reason))
                acked = max(acked, item.position)
            self._save_cursor(session, child, "child_up", position=acked)
        if applied_any:
            self._notify()
        return acked, rejections

    def _cursor_position(self, session: Session, peer: str, kind: str) -> int:
        value = session.execute(
            select(link_cursor.c.position).where(link_cursor.c.peer == peer, link_cursor.c.kind == kind)
        ).scalar_one_or_none()
        return int(value or 0)

    def _accept_from_child(self, session: Session, child: str, item: Item) -> str | None:
        """None = applied; "" = duplicate (nothing to do); otherwise the refusal reason."""
        if item.kind == COMMAND:
            return self._route_command(session, item.body, came_from_parent=False)
        env = parse_envelope(item.body)
        if env is None:
            return "malformed payload: not an event envelope"
        event = domain.InboundEvent(
            event_id=env.event_id,
            case_id=env.case_id,
            version=env.version,
            owner_epoch=env.owner_epoch,
            owner_node=env.owner_node,
            origin_node=env.origin_node,
            event_type=env.WhichOneof("payload") or "",
        )
        decision = domain.judge_event_from_child(
            event, child=child, receiver=self.node, regions=self.regions, known=self._knowledge(session, event)
        )
        if decision.verdict is domain.Verdict.DUPLICATE:
            return ""
        if decision.verdict is domain.Verdict.REFUSE:
            return decision.reason
        session.execute(
            replica.insert().values(
                case_id=env.case_id,
                version=env.version,
                event_id=env.event_id,
                event_type=event.event_type,
                origin_node=env.origin_node,
                owner_node=env.owner_node,
                owner_epoch=env.owner_epoch,
                child_node=child,
                body=item.body,
                received_at=self._clock(),
            )
        )
        self._note_epoch(session, env.case_id, env.owner_epoch, env.owner_node)
        # Multi-hop: what the child sent travels on to our parent; and our own services see it.
        self._append_up(session, env, item.body)
        append_event(
            session,
            outbox,
            BusEvent(event_id=env.event_id, source="exchange", event_type=event.event_type, body=item.body),
            env.case_id,
        )
        return None

    def _knowledge(self, session: Session, event: domain.InboundEvent) -> domain.CaseKnowledge:
        at_version = session.execute(
            select(replica.c.event_id).where(replica.c.case_id == event.case_id, replica.c.version == event.version)
        ).scalar_one_or_none()
        already = (
            session.execute(select(replica.c.case_id).where(replica.c.event_id == event.event_id)).first() is not None
        )
        last = session.execute(
            select(func.max(replica.c.version)).where(replica.c.case_id == event.case_id)
        ).scalar_one_or_none()
        epoch = session.execute(
            select(case_epoch.c.owner_epoch).where(case_epoch.c.case_id == event.case_id)
        ).scalar_one_or_none()
        return domain.CaseKnowledge(
            event_id_at_version=at_version,
            last_version=int(last) if last is not None else None,
            known_epoch=int(epoch) if epoch is not None else None,
            already_stored=already,
        )

    def _note_epoch(self, session: Session, case_id: str, epoch: int, owner: str) -> None:
        current = session.execute(
            select(case_epoch.c.owner_epoch).where(case_epoch.c.case_id == case_id)
        ).scalar_one_or_none()
        if current is None:
            session.execute(case_epoch.insert().values(case_id=case_id, owner_epoch=epoch, owner_node=owner))
        elif epoch > int(current):
            session.execute(
                update(case_epoch).where(case_epoch.c.case_id == case_id).values(owner_epoch=epoch, owner_node=owner)
            )

    # ------------------------------------------------------------------ down

    def _enqueue_down(self, session: Session, child: str, item_id: str, kind: str, body: bytes) -> None:
        session.execute(
            _insert(session, down_queue)
            .values(child_node=child, item_id=item_id, kind=kind, body=body, created_at=self._clock())
            .on_conflict_do_nothing()
        )

    def enqueue_command(self, command: events_pb2.Command) -> str | None:
        """Route a locally issued command toward its target; returns a refusal reason, None when routed."""
        with transaction(self._sf) as session:
            reason = self._route_command(session, command.SerializeToString(), came_from_parent=False)
        if reason is None:
            self._notify()
        return reason or None

    def _route_command(self, session: Session, body: bytes, *, came_from_parent: bool) -> str | None:
        cmd = parse_command(body)
        if cmd is None:
            return "malformed payload: not a command"
        route = domain.route_down(cmd.target_node, here=self.node, regions=self.regions)
        if route is None:
            if came_from_parent:
                return f"out of subtree: command target {cmd.target_node or '-'} is not under {self.node}"
            return f"unroutable: command target {cmd.target_node or '-'} is not under {self.node}"
        known = session.execute(
            select(case_epoch.c.owner_epoch).where(case_epoch.c.case_id == cmd.case_id)
        ).scalar_one_or_none()
        if known is not None and 0 < cmd.owner_epoch_seen < int(known) and route.local:
            # The case moved on since the issuer looked; the new owner must decide (DESIGN §3).
            return f"stale owner: command saw epoch {cmd.owner_epoch_seen} < known {known}"
        if route.local:
            append_event(
                session,
                outbox,
                BusEvent(event_id=cmd.command_id, source="exchange", event_type="command", body=body),
                cmd.case_id,
            )
        else:
            self._enqueue_down(session, route.next_child, cmd.command_id, COMMAND, body)
        return None

    def pull_down(self, child: str, after: int, limit: int) -> tuple[list[Item], int]:
        with transaction(self._sf) as session:
            rows = session.execute(
                select(down_queue.c.position, down_queue.c.kind, down_queue.c.body)
                .where(down_queue.c.child_node == child, down_queue.c.position > after)
                .order_by(down_queue.c.position)
                .limit(limit)
            ).all()
            head = session.execute(
                select(func.coalesce(func.max(down_queue.c.position), 0)).where(down_queue.c.child_node == child)
            ).scalar_one()
            self._save_cursor(session, child, "child_down", position=None)  # records the contact
        return [Item(int(r.position), r.kind, r.body) for r in rows], int(head)

    def ack_down(self, child: str, position: int) -> int:
        with transaction(self._sf) as session:
            return self._save_cursor(session, child, "child_down", position=position)

    def down_backlog(self, child: str, after: int) -> tuple[int, float]:
        with self._sf() as session:
            count, oldest = session.execute(
                select(func.count(), func.min(down_queue.c.created_at)).where(
                    down_queue.c.child_node == child, down_queue.c.position > after
                )
            ).one()
        age = (self._clock() - (_aware(oldest) or self._clock())).total_seconds() if oldest else 0.0
        return int(count), max(0.0, age)

    def apply_down(self, parent: str, items: Sequence[Item], *, cursor_kind: str = "down") -> int:
        """Apply pulled items exactly once (the cursor moves in the same transaction); returns the new cursor."""
        applied_any = False
        with transaction(self._sf) as session:
            stored = self._cursor_position(session, parent, cursor_kind)
            position = stored
            for item in items:
                if item.position <= stored:
                    continue
                reason = self._accept_from_parent(session, item)
                if reason:
                    self._quarantine(session, parent, "down", item, reason)
                else:
                    applied_any = True
                position = max(position, item.position)
            position = self._save_cursor(session, parent, cursor_kind, position=position)
        if applied_any:
            self._notify()
        return position

    def _accept_from_parent(self, session: Session, item: Item) -> str | None:
        if item.kind == COMMAND:
            return self._route_command(session, item.body, came_from_parent=True)
        env = parse_envelope(item.body)
        if env is None or env.WhichOneof("payload") != "case_handed_off":
            return "malformed payload: only case_handed_off envelopes travel down"
        hand_off = env.case_handed_off
        known = session.execute(
            select(case_epoch.c.owner_epoch).where(case_epoch.c.case_id == env.case_id)
        ).scalar_one_or_none()
        if known is not None and hand_off.new_owner_epoch < int(known):
            return f"stale owner: hand-off epoch {hand_off.new_owner_epoch} < known {known}"
        route = domain.route_down(hand_off.to_node, here=self.node, regions=self.regions)
        if route is None:
            return f"out of subtree: hand-off to {hand_off.to_node or '-'} is not under {self.node}"
        self._note_epoch(session, env.case_id, hand_off.new_owner_epoch, hand_off.to_node)
        if route.local:
            append_event(
                session,
                outbox,
                BusEvent(event_id=env.event_id, source="exchange", event_type="case_handed_off", body=item.body),
                env.case_id,
            )
        else:
            self._enqueue_down(session, route.next_child, env.event_id, ENVELOPE, item.body)
        return None

    def apply_transfers(self, items: Sequence[tuple[str, bytes]]) -> None:
        """National transfers as hand-off envelopes: each transfer id once (the national side may duplicate)."""
        applied_any = False
        with transaction(self._sf) as session:
            for transfer_id, body in items:
                first = session.execute(
                    _insert(session, inbox)
                    .values(consumer="national", event_id=transfer_id[:36], received_at=self._clock())
                    .on_conflict_do_nothing()
                    .returning(inbox.c.event_id)
                ).scalar_one_or_none()
                if first is None:
                    continue
                reason = self._accept_from_parent(session, Item(0, ENVELOPE, body))
                if reason:
                    self._quarantine(session, "national", "down", Item(0, ENVELOPE, body), reason)
                else:
                    applied_any = True
            self._save_cursor(session, "national", "national_down")  # records the contact
        if applied_any:
            self._notify()

    # ------------------------------------------------------------------ quarantine

    def _quarantine(self, session: Session, peer: str, direction: str, item: Item, reason: str) -> None:
        summary = "unreadable item"
        env = parse_envelope(item.body) if item.kind == ENVELOPE else None
        if env is not None:
            summary = domain.payload_summary(env.WhichOneof("payload") or "", env.case_id, env.version)
        elif item.kind == COMMAND and (cmd := parse_command(item.body)) is not None:
            summary = f"command {cmd.WhichOneof('body')} {cmd.case_id} → {cmd.target_node}"
        session.execute(
            quarantine.insert().values(
                peer_node=peer,
                direction=direction,
                kind=item.kind,
                reason=reason,
                summary=summary,
                body=item.body,
                received_at=self._clock(),
            )
        )

    def list_quarantine(
        self, peer: str = "", *, after_id: int = 0, limit: int = 100
    ) -> tuple[list[QuarantineRow], int]:
        where = [quarantine.c.resolved_at.is_(None), quarantine.c.id > after_id]
        if peer:
            where.append(quarantine.c.peer_node == peer)
        with self._sf() as session:
            rows = session.execute(select(quarantine).where(*where).order_by(quarantine.c.id).limit(limit)).all()
            total = session.execute(
                select(func.count()).select_from(quarantine).where(*where[:1], *where[2:])
            ).scalar_one()
        return (
            [
                QuarantineRow(
                    int(r.id), r.peer_node, r.direction, r.reason, r.summary, _aware(r.received_at) or self._clock()
                )
                for r in rows
            ],
            int(total),
        )

    def quarantined_counts(self) -> dict[str, int]:
        with self._sf() as session:
            rows = session.execute(
                select(quarantine.c.peer_node, func.count())
                .where(quarantine.c.resolved_at.is_(None))
                .group_by(quarantine.c.peer_node)
            ).all()
        return {r[0]: int(r[1]) for r in rows}

    def replay(self, ids: Sequence[int]) -> list[ReplayOutcome]:
        """Retry quarantined items in the order they arrived; those that pass are applied and resolved."""
        outcomes: list[ReplayOutcome] = []
        applied_any = False
        for qid in sorted(ids):
            with transaction(self._sf) as session:
                row = session.execute(select(quarantine).where(quarantine.c.id == qid)).one_or_none()
                if row is None or row.resolved_at is not None:
                    outcomes.append(ReplayOutcome(qid, False, "not in quarantine"))
                    continue
                item = Item(0, row.kind, row.body)
                if row.direction == "up":
                    reason = self._accept_from_child(session, row.peer_node, item)
                else:
                    reason = self._accept_from_parent(session, item)
                if reason:
                    session.execute(update(quarantine).where(quarantine.c.id == qid).values(reason=reason))
                    outcomes.append(ReplayOutcome(qid, False, reason))
                    continue
                session.execute(update(quarantine).where(quarantine.c.id == qid).values(resolved_at=self._clock()))
                applied_any = applied_any or reason is None
                outcomes.append(ReplayOutcome(qid, True, ""))
        if applied_any:
            self._notify()
        return outcomes

    # ------------------------------------------------------------------ what this node holds

    def holdings(self, *, subtree: str = "", case_id: str = "") -> list[tuple[str, int, str, str, str]]:
        """(case_id, version, event_type, origin_node, event_id) of each case event held, by case and version."""
        query = select(up_log.c.case_id, up_log.c.version, up_log.c.event_type, up_log.c.origin_node, up_log.c.event_id)
        if case_id:
            query = query.where(up_log.c.case_id == case_id)
        if subtree:
            query = query.where(up_log.c.origin_node.in_(list(self.regions.subtree(subtree))))
        with self._sf() as session:
            rows = session.execute(query.order_by(up_log.c.case_id, up_log.c.version, up_log.c.event_id)).all()
        return [(r[0], int(r[1]), r[2], r[3], r[4]) for r in rows]


def digest(pairs: Sequence[tuple[str, int]]) -> str:
    """SHA-256 over the sorted "case:version" lines: equal on two nodes iff they hold the same events."""
    h = hashlib.sha256()
    for case_id, version in sorted(pairs):
        h.update(f"{case_id}:{version}\n".encode())
    return h.hexdigest()
