"""Each link's figures (lag, age of the oldest item, last contact, quarantined items), worked out once for
``LinkStatus`` and for the ``/metrics`` gauges alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from lianxin.exchange.v1 import exchange_service_pb2 as exchange_pb2

from services.exchange.handlers import Exchange
from services.exchange.link import LAG_EVENTS, LAG_SECONDS, LAST_CONTACT, QUARANTINED, ParentLink
from services.exchange.national import NATIONAL, NationalLink


@dataclass(frozen=True)
class LinkFigures:
    peer: str
    direction: int
    lag_events: int
    lag_seconds: float
    last_contact: datetime | None
    quarantined: int
    acked_position: int
    failing: bool


class LinkReporter:
    """Works out each link's figures once, for LinkStatus and for the /metrics gauges alike."""

    def __init__(
        self,
        store: Exchange,
        *,
        parent: ParentLink | None,
        national: NationalLink | None,
    ) -> None:
        self._store = store
        self._parent = parent
        self._national = national

    def figures(self) -> list[LinkFigures]:
        quarantined = self._store.quarantined_counts()
        out: list[LinkFigures] = []
        cursors = self._store.cursors()
        if self._parent is not None:
            peer = self._parent.parent_node
            up = self._store.cursor(peer, "up")
            lag, age = self._store.up_backlog(up.position)
            out.append(
                LinkFigures(
                    peer,
                    exchange_pb2.LINK_DIRECTION_UP,
                    lag,
                    age,
                    up.last_contact,
                    quarantined.get(peer, 0),
                    up.position,
                    self._parent.failing,
                )
            )
        if self._national is not None:
            up = self._store.cursor(NATIONAL, "national_up")
            lag, age = self._store.up_backlog(up.position)
            out.append(
                LinkFigures(
                    NATIONAL,
                    exchange_pb2.LINK_DIRECTION_UP,
                    lag,
                    age,
                    up.last_contact,
                    quarantined.get(NATIONAL, 0),
                    up.position,
                    self._national.backoff.failures > 0,
                )
            )
        children = sorted({peer for peer, kind, _ in cursors if kind in ("child_up", "child_down")})
        by_key = {(peer, kind): cursor for peer, kind, cursor in cursors}
        for child in children:
            pushed = by_key.get((child, "child_up"))
            pulled = by_key.get((child, "child_down"))
            acked_down = pulled.position if pulled else 0
            lag, age = self._store.down_backlog(child, acked_down)
            contacts = [c.last_contact for c in (pushed, pulled) if c is not None and c.last_contact is not None]
            out.append(
                LinkFigures(
                    child,
                    exchange_pb2.LINK_DIRECTION_DOWN,
                    lag,
                    age,
                    max(contacts) if contacts else None,
                    quarantined.get(child, 0),
                    pushed.position if pushed else 0,
                    False,
                )
            )
        return out

    def refresh_metrics(self) -> list[LinkFigures]:
        figures = self.figures()
        for f in figures:
            if f.peer != NATIONAL and f.peer not in self._store.regions:
                continue  # a label is a known region code, never what a caller once sent as one
            LAG_EVENTS.labels(f.peer).set(f.lag_events)
            LAG_SECONDS.labels(f.peer).set(f.lag_seconds)
            QUARANTINED.labels(f.peer).set(f.quarantined)
            if f.last_contact is not None:
                LAST_CONTACT.labels(f.peer).set(f.last_contact.timestamp())
        return figures
