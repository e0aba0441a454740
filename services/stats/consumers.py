"""The stats service's event subscriptions: every event the warehouse folds, from this node's
services and (source "exchange") replicated up from the subtree, decoded and ingested once.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from sqlalchemy.orm import Session, sessionmaker

from services.common.calendar import WorkingCalendar
from services.common.events import decode
from services.common.inbox import before_commit, consume_once
from services.common.regions import RegionTree
from services.common.service import BusEvent, Subscription
from services.stats import handlers
from services.stats.domain import CachedCalendar, StatsConfig
from services.stats.models import inbox
from services.stats.store import PendingFacts, SqlWarehouse
from services.stats.translate import case_events_of, case_text

# Events the warehouse folds, by emitting service. "exchange" carries the subtree's replicas.
SUBSCRIBED: tuple[tuple[str, str], ...] = (
    ("intake", "case_registered"),
    ("intake", "case_evaluated"),
    ("intake", "case_withdrawn"),
    ("intake", "case_merged"),
    ("intake", "progress_notice_settled"),  # 办事进度推送, sent from the registering node
    ("intake", "progress_notices_set"),
    ("routing", "work_order_created"),
    ("routing", "work_order_changed"),
    ("routing", "supervision_issued"),
    ("routing", "case_handed_off"),
    ("routing", "case_merged"),
    ("routing", "case_withdrawn"),
    ("routing", "case_evaluated"),
    ("routing", "deadline_warning"),
    ("routing", "case_sampled"),
    ("routing", "third_party_rated"),
    ("exchange", "case_registered"),
    ("exchange", "work_order_created"),
    ("exchange", "work_order_changed"),
    ("exchange", "case_evaluated"),
    ("exchange", "supervision_issued"),
    ("exchange", "case_handed_off"),
    ("exchange", "case_merged"),
    ("exchange", "case_withdrawn"),
    ("exchange", "deadline_warning"),
    ("exchange", "case_sampled"),
    ("exchange", "third_party_rated"),
    ("exchange", "progress_notice_settled"),
    ("exchange", "progress_notices_set"),
)


def make_ingestor(
    *,
    session_factory: sessionmaker[Session],
    regions: RegionTree,
    config: StatsConfig,
    calendar: WorkingCalendar,
    clock: Callable[[], datetime] | None = None,
) -> Callable[[BusEvent], bool]:
    """The one entry for every source (own services or exchange); idempotent by event id and by version."""
    calendar = CachedCalendar(calendar)

    def ingest_event(event: BusEvent) -> bool:
        # Translated through the cache ``events_of`` reads: the case's refold then finds this body
        # already translated. Only a registration's text needs the envelope again.
        case_events = case_events_of(event.body)
        if not case_events:
            return False
        text = case_text(decode(event)) if case_events[0].kind == "case_registered" else ""

        def apply(session: Session) -> None:
            handlers.ingest(
                SqlWarehouse(session, clock=clock, pending=_pending(session)),
                case_events,
                source=event.source,
                body=event.body,
                text=text,
                tree=regions,
                config=config,
                calendar=calendar,
            )

        return consume_once(session_factory, inbox, "stats", event, apply)

    return ingest_event


_PENDING = "stats_pending_facts"


def _pending(session: Session) -> PendingFacts:
    """The facts the transaction's events saved so far, written once just before it commits: a
    relay's batch of events (``consume_batch``) then costs one upsert per derived table, not one per
    event each (about eight statements an event before)."""
    pending = session.info.get(_PENDING)
    if pending is None:
        gathered = pending = session.info[_PENDING] = PendingFacts()

        def write() -> None:
            del session.info[_PENDING]
            SqlWarehouse(session).write_pending(gathered)

        before_commit(session, "stats", write)
    return pending


def subscriptions(ingest_event: Callable[[BusEvent], bool]) -> list[Subscription]:
    """One subscription per (source, event type) of ``SUBSCRIBED``, all into ``ingest_event``."""

    def handle(event: BusEvent) -> None:
        ingest_event(event)

    return [Subscription("stats", source, kind, handle) for source, kind in SUBSCRIBED]
