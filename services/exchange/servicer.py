"""ExchangeService over gRPC: translates requests to ``handlers.Exchange`` and the link figures of
``reporting.LinkReporter`` to replies; no rules live here."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import grpc
from lianxin.common.v1 import common_pb2
from lianxin.exchange.v1 import exchange_service_pb2 as exchange_pb2
from lianxin.exchange.v1 import exchange_service_pb2_grpc as exchange_grpc

from services.common.errors import InvalidArgument
from services.common.timeutil import from_timestamp, to_timestamp
from services.exchange import digests, domain, mapping
from services.exchange.handlers import Exchange
from services.exchange.reporting import LinkFigures, LinkReporter

DEFAULT_PULL = 500
MAX_PULL = 2000
MAX_WAIT_MS = 60_000  # the longest a PullDown long poll is held


def _state(f: LinkFigures, now: datetime) -> int:
    silent = (now - f.last_contact).total_seconds() if f.last_contact is not None else None
    return _LINK_STATES[domain.link_state(failing=f.failing, silent_for_s=silent, lag_events=f.lag_events)]


_LINK_STATES = {
    domain.LinkState.HEALTHY: exchange_pb2.LINK_STATE_HEALTHY,
    domain.LinkState.LAGGING: exchange_pb2.LINK_STATE_LAGGING,
    domain.LinkState.UNREACHABLE: exchange_pb2.LINK_STATE_UNREACHABLE,
}


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
                    appended_at=to_timestamp(h.appended_at),
                )
                for h in held[: max(0, request.max_items)]
            ],
            count=len(held),
            digest=digests.digest(held),
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
