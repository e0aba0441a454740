"""Composition of the video service. First release: the service is registered and healthy; its
RPCs answer UNIMPLEMENTED until scheduling and booking land (issue: video visits)."""

from __future__ import annotations

from lianxin.video.v1 import video_service_pb2_grpc as video_grpc

from services.common.service import ServiceContext, ServiceParts, ServicerBinding
from services.video.models import outbox


def build(ctx: ServiceContext) -> ServiceParts:
    return ServiceParts(
        name="video",
        servicers=[
            ServicerBinding(
                video_grpc.add_VideoServiceServicer_to_server,
                video_grpc.VideoServiceServicer(),
                "lianxin.video.v1.VideoService",
            )
        ],
        session_factory=ctx.session_factory,
        outbox=outbox,
    )
