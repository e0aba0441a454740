"""Composition of the video service for any host (embedded node, api process, worker).

Cross-node holds need the addresses of other nodes' video services: ``ctx.extras["video_peers"]``
maps node code → host:port (the lead wires it to node discovery; tests pass it directly). The
mapping is read at call time, so peers added after start are used.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from lianxin.video.v1 import video_service_pb2_grpc as video_grpc

from services.common.calendar import ChineseWorkingCalendar
from services.common.crypto import cipher_from_env
from services.common.service import ServiceContext, ServiceParts, ServicerBinding, Timer
from services.common.tls import client_credentials
from services.video import handlers
from services.video.domain import DEFAULT_HOLD_TTL
from services.video.models import outbox
from services.video.servicer import GrpcRemoteRooms, VideoServicer
from services.video.store import VideoStore

log = logging.getLogger(__name__)


def build(ctx: ServiceContext) -> ServiceParts:
    node = ctx.settings.node
    calendar = ctx.extras.get("calendar") or ChineseWorkingCalendar()
    store = VideoStore(ctx.session_factory, cipher=cipher_from_env(), node=node, calendar=calendar, clock=ctx.clock)
    peers = ctx.extras.setdefault("video_peers", {})
    remote = GrpcRemoteRooms(node, peers, credentials=client_credentials(ctx.settings.tls_dir, node))
    hold_ttl = timedelta(seconds=float(ctx.extras.get("video_hold_ttl_s", DEFAULT_HOLD_TTL.total_seconds())))

    def notify() -> None:
        ctx.extras.get("notify_outbox", lambda: None)()

    servicer = VideoServicer(store, remote, hold_ttl=hold_ttl, after_commit=notify)

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
        timers=[Timer("video-sweep", min(ctx.settings.sweep_interval_s, 15.0), sweep)],
        session_factory=ctx.session_factory,
        outbox=outbox,
    )
