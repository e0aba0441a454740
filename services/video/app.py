"""Composition of the video service for any host (embedded node, api process, worker).

Cross-node holds need the addresses of other nodes' video services: ``ctx.extras["video_peers"]``
maps node code → host:port, filled from ``LIANXIN_VIDEO_PEERS`` (``lianxin up`` gives every node
all the others) or passed directly by tests. The mapping is read at call time, so peers added after
start are used.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import replace
from datetime import timedelta

from google.protobuf.timestamp_pb2 import Timestamp
from lianxin.events.v1 import events_pb2
from lianxin.video.v1 import video_service_pb2_grpc as video_grpc

from services.common.calendar_store import node_calendar
from services.common.crypto import node_cipher
from services.common.events import decode
from services.common.service import (
    BusEvent,
    ServiceContext,
    ServiceParts,
    ServicerBinding,
    Subscription,
    Timer,
    utc_now,
)
from services.common.settings import parse_peers
from services.common.timeutil import from_timestamp
from services.common.tls import client_credentials
from services.video import handlers
from services.video.consult import Consultation, ConsultationState, Participant
from services.video.domain import DEFAULT_HOLD_TTL, OWNER_EVENTS, owner_named
from services.video.models import outbox
from services.video.servicer import GrpcRemoteRooms, VideoServicer
from services.video.store import VideoStore

log = logging.getLogger(__name__)

CONSULTATION_EVENTS = ("consultation_booked", "consultation_held", "consultation_cancelled")


def consultation_copy(env: events_pb2.EventEnvelope) -> Consultation | None:
    """The consultation a replicated event describes, as the copy a node above keeps of it."""
    kind = env.WhichOneof("payload")
    at = from_timestamp(env.occurred_at) or utc_now()

    def copy(
        consultation_id: str,
        host: str,
        topic: str,
        units: Iterable[events_pb2.ConsultationUnit],
        starts: Timestamp,
        ends: Timestamp,
        state: ConsultationState,
    ) -> Consultation:
        starts_at = from_timestamp(starts) or at
        return Consultation(
            consultation_id=consultation_id,
            case_id=env.case_id,
            host_node=host or env.origin_node,
            topic=topic,
            participants=[Participant(u.node, u.unit_id) for u in units],
            starts_at=starts_at,
            ends_at=from_timestamp(ends) or starts_at,
            state=state,
            replica=True,
            created_at=at,
        )

    if kind == "consultation_booked":
        b = env.consultation_booked
        return copy(b.consultation_id, b.host_node, b.topic, b.units, b.starts_at, b.ends_at, ConsultationState.BOOKED)
    if kind == "consultation_held":
        h = env.consultation_held
        held = copy(h.consultation_id, h.host_node, h.topic, h.units, h.starts_at, h.ends_at, ConsultationState.HELD)
        return replace(held, minutes=h.minutes, held_at=at)
    if kind == "consultation_cancelled":
        c = env.consultation_cancelled
        gone = copy(c.consultation_id, "", "", (), c.starts_at, c.starts_at, ConsultationState.CANCELLED)
        return replace(gone, cancel_reason=c.reason)
    return None


# Where the case events naming an owner come from: this node's own services, and exchange (replicas
# from the subtree, hand-offs from the parent).
OWNER_SOURCES = ("intake", "routing", "exchange")
SWEEP_TIMER = "video-sweep"
# An embedded node's sweep with nothing to look at (no hold, no half-done booking, no visit within a
# day) looks again after this long, or as soon as a commit gives it something.
IDLE_SWEEP_S = 120.0


def build(ctx: ServiceContext) -> ServiceParts:
    node = ctx.settings.node
    calendar = node_calendar(ctx)  # the node's, with the years its operators loaded
    cipher = node_cipher(ctx.settings)
    store = VideoStore(
        ctx.session_factory,
        cipher=cipher,
        node=node,
        calendar=calendar,
        clock=ctx.clock,
    )
    peers = ctx.extras.setdefault("video_peers", {})
    # LIANXIN_VIDEO_PEERS (set by `lianxin up` for every node of the embedded federation); peers a
    # host already put in extras win, and the mapping stays live for ones added later.
    for code, address in parse_peers(ctx.settings.video_peers).items():
        peers.setdefault(code, address)
    remote = GrpcRemoteRooms(node, peers, credentials=client_credentials(ctx.settings.tls_dir, node))
    hold_ttl = timedelta(seconds=float(ctx.extras.get("video_hold_ttl_s", DEFAULT_HOLD_TTL.total_seconds())))

    def notify() -> None:
        ctx.extras.get("notify_outbox", lambda: None)()

    def follow_owner(event: BusEvent) -> None:
        env = decode(event)
        hand_off = env.case_handed_off
        owner = owner_named(
            env.WhichOneof("payload") or "",
            env.owner_node,
            env.owner_epoch,
            hand_off_to=hand_off.to_node,
            hand_off_epoch=hand_off.new_owner_epoch,
        )
        if owner is not None:
            store.note_owner(env.case_id, owner)

    def copy_consultation(event: BusEvent) -> None:
        # A consultation booked at a node below (its events replicated up through exchange): this node
        # keeps a copy, so its office and the units that took part read it and its minutes here.
        copy = consultation_copy(decode(event))
        if copy is not None and copy.host_node != node:
            store.note_consultation_replica(copy)

    # Embedded: a commit of the servicer (a booking, a hold) wakes the sweep; with nothing to sweep it
    # runs only every IDLE_SWEEP_S. A worker, which nobody wakes, sweeps every interval.
    wake_timer: Callable[[str], None] = ctx.extras.get("wake_timer", lambda _name: None)
    every = min(ctx.settings.sweep_interval_s, 15.0)

    def after_commit() -> None:
        notify()
        wake_timer(SWEEP_TIMER)

    servicer = VideoServicer(store, remote, hold_ttl=hold_ttl, after_commit=after_commit, case_mac=cipher.blind_index)

    def sweep() -> float | None:
        if not store.has_sweep_work():
            return None  # an idle node: one read, and the next look after the idle interval
        result = handlers.sweep(store, remote, hold_ttl)
        if any(result.values()):
            log.info("video sweep", extra=result)
            notify()
        return every

    return ServiceParts(
        name="video",
        servicers=[
            ServicerBinding(video_grpc.add_VideoServiceServicer_to_server, servicer, "lianxin.video.v1.VideoService")
        ],
        subscriptions=[
            Subscription("video", source, event_type, follow_owner)
            for source in OWNER_SOURCES
            for event_type in OWNER_EVENTS
        ]
        + [Subscription("video", "exchange", event_type, copy_consultation) for event_type in CONSULTATION_EVENTS],
        timers=[Timer(SWEEP_TIMER, every, sweep, safety_interval_s=max(every, IDLE_SWEEP_S))],
        session_factory=ctx.session_factory,
        outbox=outbox,
    )
