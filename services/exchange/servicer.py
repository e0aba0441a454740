"""ExchangeService over gRPC: translates requests to ``handlers.Exchange`` and reports links; no rules live here."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import grpc
from lianxin.common.v1 import common_pb2
from lianxin.exchange.v1 import exchange_service_pb2 as exchange_pb2
from lianxin.exchange.v1 import exchange_service_pb2_grpc as exchange_grpc

from services.common.errors import InvalidArgument
from services.common.timeutil import from_timestamp, to_timestamp
from services.exchange import domain, mapping
from services.exchange.handlers import Exchange
from services.exchange.link import LAG_EVENTS, LAG_SECONDS, LAST_CONTACT, QUARANTINED, ParentLink
from services.exchange.national import NATIONAL, NationalLink

DEFAULT_PULL = 500
MAX_PULL = 2000
MAX_WAIT_MS = 60_000  # the longest a PullDown long poll is held
# No contact for this long and the link counts as unreachable; this many items behind, as lagging.
UNREACHABLE_AFTER_S = 30.0
LAGGING_EVENTS = 1000


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


def _state(f: LinkFigures, now: datetime) -> int:
    if f.failing or f.last_contact is None or (now - f.last_contact).total_seconds() > UNREACHABLE_AFTER_S:
        return exchange_pb2.LINK_STATE_UNREACHABLE
    if f.lag_events > LAGGING_EVENTS:
        return exchange_pb2.LINK_STATE_LAGGING
    return exchange_pb2.LINK_STATE_HEALTHY


class ExchangeServicer(exchange_grpc.ExchangeServiceServicer):
    """``long_polls``: how many PullDown calls may wait at once (each holds a server thread while it
    waits); 0 when another process writes the down-queue (a production api: nothing here would
    wake the call), so PullDown answers at once."""

    def __init__(self, store: Exchange, reporter: LinkReporter, *, clock: Any, long_polls: int = 0) -> None:
        self._store = store
        self._reporter = reporter
        self._clock = clock
        self._long_polls = threading.BoundedSemaphore(long_polls) if long_polls > 0 else None

    def _direct_child(self, child: str) -> str:
        if not child:
            raise InvalidArgument("child_node", "required")
        regions = self._store.regions
        if child not in regions or regions.parent(child) != self._store.node:
            raise InvalidArgument("child_node", f"{child} is not a direct child of {self._store.node}")
        return child

    def PushEvents(self, request: exchange_pb2.PushEventsRequest, context: Any) -> exchange_pb2.PushEventsResponse:
        # Only a direct child pushes (as PullDown and AckDown): a junk or foreign child_node would
        # otherwise get a link cursor, quarantine rows and a peer label on /metrics.
        child = self._direct_child(request.child_node)
        acked, rejected = self._store.receive_push(child, mapping.pushed_items(request.items))
        if request.HasField("audit_head") and request.audit_head.sequence > 0:
            head = request.audit_head
            at = from_timestamp(head.at, "audit_head.at") if head.HasField("at") else None
            self._store.record_anchor(child, head.sequence, head.hash, at)
        return exchange_pb2.PushEventsResponse(
            acked_position=acked,
            rejections=[exchange_pb2.Rejection(position=r.position, reason=r.reason) for r in rejected],
        )

    def PullDown(self, request: exchange_pb2.PullDownRequest, context: Any) -> exchange_pb2.PullDownResponse:
        child = self._direct_child(request.child_node)
        if request.after_position < 0:
            raise InvalidArgument("after_position", "must not be negative")
        if request.wait_ms < 0:
            raise InvalidArgument("wait_ms", "must not be negative")
        limit = min(request.max_items or DEFAULT_PULL, MAX_PULL)
        changes = self._store.down_changes
        seen = changes.seen(child)  # before reading: a commit between the read and the wait is not missed
        items, head = self._store.pull_down(child, request.after_position, limit)
        if not items and request.wait_ms > 0 and self._long_polls is not None and self._long_polls.acquire(False):
            try:
                ended = threading.Event()

                def call_ended() -> None:  # cancelled, deadline, client gone, or the server stopping
                    ended.set()
                    changes.wake_all()

                changed = context.add_callback(call_ended) and changes.wait(
                    child, seen, min(request.wait_ms, MAX_WAIT_MS) / 1000.0, gone=ended.is_set
                )
            finally:
                self._long_polls.release()
            if changes.closed:
                # The node is stopping: the child learns the link is down (and retries), not "nothing new".
                context.abort(grpc.StatusCode.UNAVAILABLE, "node stopping")
            if changed:
                items, head = self._store.pull_down(child, request.after_position, limit)
        return exchange_pb2.PullDownResponse(items=mapping.down_items(items), head_position=head)

    def AckDown(self, request: exchange_pb2.AckDownRequest, context: Any) -> exchange_pb2.AckDownResponse:
        child = self._direct_child(request.child_node)
        return exchange_pb2.AckDownResponse(acked_position=self._store.ack_down(child, request.position))

    def LinkStatus(self, request: exchange_pb2.LinkStatusRequest, context: Any) -> exchange_pb2.LinkStatusResponse:
        now = self._clock()
        links = []
        for f in self._reporter.refresh_metrics():
            if request.peer_node and f.peer != request.peer_node:
                continue
            link = exchange_pb2.Link(
                peer_node=f.peer,
                direction=f.direction,  # type: ignore[arg-type]
                lag_events=f.lag_events,
                lag_seconds=f.lag_seconds,
                quarantined=f.quarantined,
                state=_state(f, now),  # type: ignore[arg-type]
                acked_position=f.acked_position,
            )
            if f.last_contact is not None:
                link.last_contact.CopyFrom(to_timestamp(f.last_contact))
            links.append(link)
        return exchange_pb2.LinkStatusResponse(links=links)

    def ListQuarantine(
        self, request: exchange_pb2.ListQuarantineRequest, context: Any
    ) -> exchange_pb2.ListQuarantineResponse:
        token = request.page.page_token
        if token and not token.isdigit():
            raise InvalidArgument("page.page_token", "not a token from a previous page")
        size = min(request.page.page_size or 100, 1000)
        rows, total = self._store.list_quarantine(request.peer_node, after_id=int(token or 0), limit=size)
        return exchange_pb2.ListQuarantineResponse(
            items=[
                exchange_pb2.QuarantinedItem(
                    id=str(r.id),
                    peer_node=r.peer_node,
                    reason=r.reason,
                    received_at=to_timestamp(r.received_at),
                    payload_summary=r.summary,
                )
                for r in rows
            ],
            page=common_pb2.PageResponse(
                next_page_token=str(rows[-1].id) if len(rows) == size else "", total_size=total
            ),
        )

    def ReplayQuarantine(
        self, request: exchange_pb2.ReplayQuarantineRequest, context: Any
    ) -> exchange_pb2.ReplayQuarantineResponse:
        outcomes = self._store.replay(_quarantine_ids(request.ids))
        return exchange_pb2.ReplayQuarantineResponse(
            results=[exchange_pb2.ReplayResult(id=str(o.id), applied=o.applied, reason=o.reason) for o in outcomes]
        )

    def DiscardQuarantine(
        self, request: exchange_pb2.DiscardQuarantineRequest, context: Any
    ) -> exchange_pb2.DiscardQuarantineResponse:
        ids = _quarantine_ids(request.ids)
        if not request.actor.strip():
            raise InvalidArgument("actor", "say who discards (recorded with the discard)")
        if not request.reason.strip():
            raise InvalidArgument("reason", "say why the items are discarded (recorded with the discard)")
        outcomes = self._store.discard(ids, actor=request.actor.strip(), note=request.reason)
        return exchange_pb2.DiscardQuarantineResponse(
            results=[
                exchange_pb2.DiscardResult(
                    id=str(o.id),
                    discarded=o.discarded,
                    reason=o.reason,
                    released_ids=[str(i) for i in o.released],
                    still_held_ids=[str(i) for i in o.still_held],
                )
                for o in outcomes
            ]
        )

    def _check_subtree(self, subtree_node: str) -> None:
        if subtree_node and subtree_node not in self._store.regions:
            raise InvalidArgument("subtree_node", f"unknown region {subtree_node}")

    def DigestCases(self, request: exchange_pb2.DigestCasesRequest, context: Any) -> exchange_pb2.DigestCasesResponse:
        self._check_subtree(request.subtree_node)
        if len(request.case_ids) > 1000:
            raise InvalidArgument("case_ids", f"at most 1000 cases, got {len(request.case_ids)}")
        if not 0 <= request.page_size <= 5000:
            raise InvalidArgument("page_size", f"must be 1..5000 (0 for 500), got {request.page_size}")
        limit = request.page_size or 500
        summaries = self._store.case_digests(
            subtree=request.subtree_node, case_ids=request.case_ids, after=request.page_token, limit=limit
        )
        more = not request.case_ids and len(summaries) == limit
        return exchange_pb2.DigestCasesResponse(
            node=self._store.node,
            cases=[
                exchange_pb2.CaseDigest(
                    case_id=s.case_id,
                    events=s.events,
                    version=s.version,
                    owner_node=s.owner_node,
                    owner_epoch=s.owner_epoch,
                    state=_case_state(s.state),
                    work_orders=[
                        exchange_pb2.WorkOrderDigest(work_order_id=wo, state=_case_state(state))
                        for wo, state in s.work_orders
                    ],
                    digest=s.digest,
                )
                for s in summaries
            ],
            next_page_token=summaries[-1].case_id if more else "",
        )

    def ListAuditAnchors(
        self, request: exchange_pb2.ListAuditAnchorsRequest, context: Any
    ) -> exchange_pb2.ListAuditAnchorsResponse:
        child = self._direct_child(request.child_node)
        return exchange_pb2.ListAuditAnchorsResponse(
            anchors=[
                exchange_pb2.AuditAnchor(
                    head=exchange_pb2.AuditHead(
                        sequence=sequence, hash=chain_hash, at=to_timestamp(at) if at is not None else None
                    ),
                    received_at=to_timestamp(received_at),
                )
                for sequence, chain_hash, at, received_at in self._store.anchors(child)
            ]
        )

    def ListReplicas(
        self, request: exchange_pb2.ListReplicasRequest, context: Any
    ) -> exchange_pb2.ListReplicasResponse:
        self._check_subtree(request.subtree_node)
        held = self._store.holdings(subtree=request.subtree_node, case_id=request.case_id)
        return exchange_pb2.ListReplicasResponse(
            entries=[
                exchange_pb2.ReplicaEntry(
                    case_id=h.case_id,
                    version=h.version,
                    event_type=h.event_type,
                    origin_node=h.origin_node,
                    event_id=h.event_id,
                    case_sequence=h.case_sequence,
                )
                for h in held[: max(0, request.max_items)]
            ],
            count=len(held),
            digest=domain.digest(held),
        )


def _case_state(name: str) -> common_pb2.CaseState.ValueType:
    return common_pb2.CaseState.Value(f"CASE_STATE_{name}") if name else common_pb2.CASE_STATE_UNSPECIFIED


def _quarantine_ids(ids: Sequence[str]) -> list[int]:
    """The quarantine ids a replay or a discard names, refused whole when one is not an id."""
    if not ids:
        raise InvalidArgument("ids", "at least one id is required")
    bad = [i for i in ids if not i.isdigit()]
    if bad:
        raise InvalidArgument("ids", f"not a quarantine id: {bad[0]}")
    return [int(i) for i in ids]
