"""The gateway's gRPC client of its node: one channel per service, the caller's token on every call.

The pages never decide what an operator may do: the node's security interceptor does, from the
token the operator signed in with; a refusal comes back here as a ``CallFailed`` with its code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
from lianxin.exchange.v1 import exchange_service_pb2_grpc as exchange_grpc
from lianxin.intake.v1 import intake_service_pb2_grpc as intake_grpc
from lianxin.routing.v1 import routing_service_pb2_grpc as routing_grpc
from lianxin.stats.v1 import stats_service_pb2_grpc as stats_grpc
from lianxin.video.v1 import video_service_pb2_grpc as video_grpc

from services.common.grpcclient import instrumented_channel, plain_channel, tracer_installed
from services.common.interceptors import FIELD_METADATA_KEY
from services.common.security import bearer_metadata
from services.web.config import WebSettings

Response = TypeVar("Response")


class CallFailed(Exception):
    """A gRPC call answered with an error status; ``field`` is set for INVALID_ARGUMENT."""

    def __init__(self, code: grpc.StatusCode, message: str, field: str = "") -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.field = field

    @property
    def status(self) -> int:
        """The HTTP status a page answers with for this failure."""
        return _HTTP_STATUS.get(self.code, 502)


_HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


def _failure(error: grpc.RpcError) -> CallFailed:
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = (error.details() if hasattr(error, "details") else "") or ""
    trailing = dict(error.trailing_metadata() or ()) if hasattr(error, "trailing_metadata") else {}
    return CallFailed(code, details, str(trailing.get(FIELD_METADATA_KEY, "")))


def _channel(target: str, credentials: grpc.ChannelCredentials | None) -> grpc.Channel:
    """A channel to one address, or spreading calls round robin over several api processes of a
    service (``ipv4:127.0.0.1:7502,127.0.0.1:7602``: gRPC's default policy would use the first only)."""
    spread = (("grpc.lb_policy_name", "round_robin"),) if "," in target else ()
    # The gateway sets up no tracing and serves its own metrics registry: the interceptors of an
    # instrumented channel would only cost each call (issue 17), unless a tracer is installed.
    make = instrumented_channel if tracer_installed() else plain_channel
    return make(target, credentials=credentials, options=spread)


@dataclass
class NodeClient:
    """Stubs of the node's five services; ``call`` adds the bearer token and maps errors."""

    settings: WebSettings
    # The node's client certificate when its port speaks mutual TLS (LIANXIN_TLS_DIR); None: plaintext.
    credentials: grpc.ChannelCredentials | None = None
    channels: dict[str, grpc.Channel] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        by_target: dict[str, grpc.Channel] = {}
        for service in ("intake", "routing", "exchange", "video", "stats"):
            target = self.settings.target(service)
            if target not in by_target:
                by_target[target] = _channel(target, self.credentials)
            self.channels[service] = by_target[target]
        self.intake = intake_grpc.IntakeServiceStub(self.channels["intake"])
        self.routing = routing_grpc.RoutingServiceStub(self.channels["routing"])
        self.exchange = exchange_grpc.ExchangeServiceStub(self.channels["exchange"])
        self.video = video_grpc.VideoServiceStub(self.channels["video"])
        self.stats = stats_grpc.StatsServiceStub(self.channels["stats"])
        # Citizens' calls (Page.public) on the node's public port when there is one.
        for service in ("intake", "video"):
            target = self.settings.public_target(service)
            if target not in by_target:
                by_target[target] = _channel(target, self.credentials)
            self.channels[f"public_{service}"] = by_target[target]
        self.public_intake = intake_grpc.IntakeServiceStub(self.channels["public_intake"])
        self.public_video = video_grpc.VideoServiceStub(self.channels["public_video"])

    def call(
        self,
        method: Callable[..., Response],
        request: Any,
        token: str | None = None,
        *,
        metadata: tuple[tuple[str, str], ...] = (),
        timeout: float | None = None,
    ) -> Response:
        """``method(request)`` with the operator's token; raises ``CallFailed`` on an error status."""
        metadata = (*bearer_metadata(token), *metadata) if token else metadata
        try:
            return method(request, timeout=timeout or self.settings.rpc_timeout_s, metadata=metadata)
        except grpc.RpcError as error:
            raise _failure(error) from None

    def start(self, method: Any, request: Any, token: str | None = None) -> Any:
        """Start a call without waiting (``.future``), so a page can ask several things at once."""
        metadata = bearer_metadata(token) if token else ()
        return method.future(request, timeout=self.settings.rpc_timeout_s, metadata=metadata)

    @staticmethod
    def result(future: Any) -> Any:
        try:
            return future.result()
        except grpc.RpcError as error:
            raise _failure(error) from None

    def close(self) -> None:
        for channel in set(self.channels.values()):
            channel.close()
