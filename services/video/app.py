"""Composition of the video service for any host (embedded node, api process, worker).

Cross-node holds need the addresses of other nodes' video services: ``ctx.extras["video_peers"]``
maps node code → host:port, filled from ``LIANXIN_VIDEO_PEERS`` (``lianxin up`` gives every node
all the others) or passed directly by tests. The mapping is read at call time, so peers added after
start are used.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from lianxin.video.v1 import video_service_pb2_grpc as video_grpc

from services.common.calendar_store import node_calendar
from services.common.crypto import cipher_from_env
from services.common.events import decode
from services.common.service import BusEvent, ServiceContext, ServiceParts, ServicerBinding, Subscription, Timer
from services.common.settings import parse_peers
from services.common.tls import client_credentials
from services.video import handlers
from services.video.domain import DEFAULT_HOLD_TTL, OWNER_EVENTS, owner_named
from services.video.models import outbox
from services.video.servicer import GrpcRemoteRooms, VideoServicer
from services.video.store import VideoStore

log = logging.getLogger(__name__)

# Where the case events naming an owner come from: this node's own services, and exchange (replicas
# from the subtree, hand-offs from the parent).
OWNER_SOURCES = ("intake", "routing", "exchange")


def build(ctx: ServiceContext) -> ServiceParts:
    node = ctx.settings.node
    calendar = node_calendar(ctx)  # the node's, with the years its operators loaded
    cipher = cipher_from_env(key_dir=ctx.settings.data_dir / ctx.settings.node)
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

    servicer = VideoServicer(store, remote, hold_ttl=hold_ttl, after_commit=notify, case_mac=cipher.blind_index)

    def sweep() -> None:
        result = handlers.sweep(store, remote, hold_ttl)
        if any(result.values()):
            log.info("video sweep", extra=result)
            notify()

    return ServiceParts(
        name="video",
        servicers=[
            ServicerBinding(video_grpc.add_VideoServiceServicer_to_server, servicer, "lianxin.video.v1.VideoService")
        ],
        subscriptions=[
            Subscription("video", source, event_type, follow_owner)
            for source in OWNER_SOURCES
            for event_type in OWNER_EVENTS
        ],
        timers=[Timer("video-sweep", min(ctx.settings.sweep_interval_s, 15.0), sweep)],
        session_factory=ctx.session_factory,
        outbox=outbox,
    )
