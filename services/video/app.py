"""Composition of the video service for any host (embedded node, api process, worker).

Cross-node holds need the addresses of other nodes' video services: ``ctx.hooks.video_peers``
maps node code → host:port, filled from ``LIANXIN_VIDEO_PEERS`` (``lianxin up`` gives every node
all the others) or passed directly by tests. The mapping is read at call time, so peers added after
start are used.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta

from lianxin.video.v1 import video_service_pb2_grpc as video_grpc

from services.common.calendar_store import node_calendar
from services.common.crypto import node_cipher
from services.common.service import ServiceContext, ServiceParts, ServicerBinding, Timer
from services.common.settings import parse_peers
from services.common.tls import client_credentials
from services.video import handlers
from services.video.consumers import VideoConsumers
from services.video.domain import DEFAULT_HOLD_TTL
from services.video.models import outbox
from services.video.peers import GrpcRemoteRooms
from services.video.servicer import VideoServicer
from services.video.store import VideoStore

log = logging.getLogger(__name__)

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
    peers = ctx.hooks.video_peers
    # LIANXIN_VIDEO_PEERS (set by `lianxin up` for every node of the embedded federation); peers a
    # host already put in hooks.video_peers win, and the mapping stays live for ones added later.
    for code, address in parse_peers(ctx.settings.video_peers).items():
        peers.setdefault(code, address)
    remote = GrpcRemoteRooms(node, peers, credentials=client_credentials(ctx.settings.tls_dir, node))
    ttl_s = ctx.hooks.video_hold_ttl_s
    hold_ttl = DEFAULT_HOLD_TTL if ttl_s is None else timedelta(seconds=float(ttl_s))

    def notify() -> None:
        (ctx.hooks.notify_outbox or (lambda: None))()

    # Embedded: a commit of the servicer (a booking, a hold) wakes the sweep; with nothing to sweep it
    # runs only every IDLE_SWEEP_S. A worker, which nobody wakes, sweeps every interval.
    wake_timer: Callable[[str], None] = ctx.hooks.wake_timer or (lambda _name: None)
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
        subscriptions=VideoConsumers(store, node).subscriptions(),
        timers=[Timer(SWEEP_TIMER, every, sweep, safety_interval_s=max(every, IDLE_SWEEP_S))],
        session_factory=ctx.session_factory,
        outbox=outbox,
    )
