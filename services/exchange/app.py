"""Composition of the exchange service. First release: it reports the link to the parent node.

Replication over the link (PushEvents/PullDown with cursors) arrives with the exchange work;
until then those RPCs answer UNIMPLEMENTED rather than pretend.
"""

from __future__ import annotations

from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from lianxin.exchange.v1 import exchange_service_pb2 as exchange_pb2
from lianxin.exchange.v1 import exchange_service_pb2_grpc as exchange_grpc

from services.common.grpcserver import instrumented_channel
from services.common.service import ServiceContext, ServiceParts, ServicerBinding
from services.common.timeutil import to_timestamp
from services.exchange.models import outbox


class ExchangeServicer(exchange_grpc.ExchangeServiceServicer):
    def __init__(self, ctx: ServiceContext) -> None:
        self._ctx = ctx

    def LinkStatus(self, request: exchange_pb2.LinkStatusRequest, context: Any) -> exchange_pb2.LinkStatusResponse:
        parent = self._ctx.settings.parent
        if not parent:
            return exchange_pb2.LinkStatusResponse()
        parent_node = self._ctx.regions.parent(self._ctx.settings.node) or ""
        link = exchange_pb2.Link(peer_node=parent_node, direction=exchange_pb2.LINK_DIRECTION_UP)
        with instrumented_channel(parent) as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service="lianxin.exchange.v1.ExchangeService"), timeout=2.0
                )
                serving = reply.status == health_pb2.HealthCheckResponse.SERVING
            except grpc.RpcError:
                serving = False
        link.state = exchange_pb2.LINK_STATE_HEALTHY if serving else exchange_pb2.LINK_STATE_UNREACHABLE
        if serving:
            link.last_contact.CopyFrom(to_timestamp(self._ctx.clock()))
        return exchange_pb2.LinkStatusResponse(links=[link])


def build(ctx: ServiceContext) -> ServiceParts:
    return ServiceParts(
        name="exchange",
        servicers=[
            ServicerBinding(
                exchange_grpc.add_ExchangeServiceServicer_to_server,
                ExchangeServicer(ctx),
                "lianxin.exchange.v1.ExchangeService",
            )
        ],
        session_factory=ctx.session_factory,
        outbox=outbox,
    )
