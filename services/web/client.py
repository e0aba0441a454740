"""The gateway's gRPC client of its node: one channel per service, the caller's token on every call.

The pages never decide what an operator may do: the node's security interceptor does, from the
token the operator signed in with; a refusal comes back here as a ``CallFailed`` with its code.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
import grpc.aio
from google.protobuf.message import Message
from lianxin.common.v1 import reads_pb2, reads_pb2_grpc
from lianxin.exchange.v1 import exchange_service_pb2_grpc as exchange_grpc
from lianxin.intake.v1 import intake_service_pb2_grpc as intake_grpc
from lianxin.routing.v1 import routing_service_pb2_grpc as routing_grpc
from lianxin.stats.v1 import stats_service_pb2_grpc as stats_grpc
from lianxin.video.v1 import video_service_pb2_grpc as video_grpc

from services.common.grpcclient import CHANNEL_OPTIONS, instrumented_channel, plain_channel, tracer_installed
from services.common.interceptors import FIELD_METADATA_KEY
from services.common.names import SERVICE_NAMES, SERVICES
from services.common.security import bearer_metadata
from services.web.config import WebSettings

Response = TypeVar("Response")

STUBS = {
    "intake": intake_grpc.IntakeServiceStub,
    "routing": routing_grpc.RoutingServiceStub,
    "exchange": exchange_grpc.ExchangeServiceStub,
    "video": video_grpc.VideoServiceStub,
    "stats": stats_grpc.StatsServiceStub,
}


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


_CODES = {code.value[0]: code for code in grpc.StatusCode}


def _answered(part: tuple[str, str, Message, type[Message]], answer: reads_pb2.ReadAnswer) -> Any:
    """A ReadTogether part's answer as its own call's: the response, or the ``CallFailed`` it raised."""
    if answer.code == 0:
        return part[3].FromString(answer.response)
    trailing = {trailer.key: trailer.value for trailer in answer.trailers}
    code = _CODES.get(answer.code, grpc.StatusCode.UNKNOWN)
    return CallFailed(code, answer.message, trailing.get(FIELD_METADATA_KEY, ""))


def _channel(target: str, credentials: grpc.ChannelCredentials | None) -> grpc.Channel:
    """A channel to one address, or spreading calls round robin over several api processes of a
    service (``ipv4:127.0.0.1:7502,127.0.0.1:7602``: gRPC's default policy would use the first only)."""
    spread = (("grpc.lb_policy_name", "round_robin"),) if "," in target else ()
    # The gateway sets up no tracing and serves its own metrics registry: the interceptors of an
    # instrumented channel would only cost each call (issue 17), unless a tracer is installed.
    make = instrumented_channel if tracer_installed() else plain_channel
    return make(target, credentials=credentials, options=spread)


class AioStubs:
    """The five services' grpc.aio stubs, bound to the event loop they were made on.

    A page that awaits these needs no worker thread: the sync stubs cost each page a hand-off to an
    anyio worker thread and back, and gRPC's own thread waking the one that waits (issue 17).
    """

    def __init__(self, settings: WebSettings, credentials: grpc.ChannelCredentials | None) -> None:
        self.loop = asyncio.get_running_loop()
        self.channels: dict[str, grpc.aio.Channel] = {}
        self.stubs: dict[str, Any] = {}
        for service in SERVICES:
            target = settings.target(service)
            if target not in self.channels:
                spread = (("grpc.lb_policy_name", "round_robin"),) if "," in target else ()
                options = [*CHANNEL_OPTIONS, *spread]
                self.channels[target] = (
                    grpc.aio.insecure_channel(target, options=options)
                    if credentials is None
                    else grpc.aio.secure_channel(target, credentials, options=options)
                )
            self.stubs[service] = STUBS[service](self.channels[target])
        self.reads = {target: reads_pb2_grpc.ReadsServiceStub(channel) for target, channel in self.channels.items()}

    async def close(self) -> None:
        for channel in self.channels.values():
            await channel.close()


@dataclass
class NodeClient:
    """Stubs of the node's five services; ``call`` adds the bearer token and maps errors."""

    settings: WebSettings
    # The node's client certificate when its port speaks mutual TLS (LIANXIN_TLS_DIR); None: plaintext.
    credentials: grpc.ChannelCredentials | None = None
    channels: dict[str, grpc.Channel] = field(default_factory=dict, init=False)
    _aio: AioStubs | None = field(default=None, init=False, repr=False)
    _together: bool = field(default=True, init=False, repr=False)  # the node answers ReadTogether

    def __post_init__(self) -> None:
        by_target: dict[str, grpc.Channel] = {}
        for service in SERVICES:
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
        # ReadTogether on each service's channel (the sync one: traced when a tracer is installed).
        self.reads = {service: reads_pb2_grpc.ReadsServiceStub(self.channels[service]) for service in SERVICES}

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

    async def acall(
        self, service: str, method: str, request: Any, token: str | None = None, *, timeout: float | None = None
    ) -> Any:
        """``call`` awaited on the event loop: ``service``'s ``method`` through its grpc.aio stub.

        With a tracer installed, the sync stub in a worker thread instead: only its channel carries
        the tracing and metrics interceptors.
        """
        if tracer_installed():
            from starlette.concurrency import run_in_threadpool

            return await run_in_threadpool(self.call, getattr(getattr(self, service), method), request, token)
        metadata = bearer_metadata(token) if token else ()
        try:
            return await getattr(self._aio_stubs().stubs[service], method)(
                request, timeout=timeout or self.settings.rpc_timeout_s, metadata=metadata
            )
        except grpc.RpcError as error:
            raise _failure(error) from None

    async def aread_together(
        self, parts: Sequence[tuple[str, str, Message, type[Message]]], token: str | None = None
    ) -> list[Any]:
        """Each ``(service, method, request, response type)``'s answer, or the ``CallFailed`` it raised
        (as ``asyncio.gather``'s ``return_exceptions``), asked in one ``ReadsService/ReadTogether``
        call when the services share one address (an embedded node serves them all in one process):
        gRPC's per-call machinery is paid once, not per part (issue 17). A part the process answering
        does not serve, and every part when its node has no ReadTogether, is asked on its own, so the
        answers are the same either way."""
        targets = {self.settings.target(service) for service, *_ in parts}
        if len(parts) < 2 or len(targets) > 1 or not self._together:
            return await self._each(parts, token)
        target = targets.pop()
        request = reads_pb2.ReadTogetherRequest(
            parts=[
                reads_pb2.ReadPart(method=f"/{SERVICE_NAMES[service]}/{method}", request=message.SerializeToString())
                for service, method, message, _ in parts
            ]
        )
        metadata = bearer_metadata(token) if token else ()
        try:
            if tracer_installed():  # the sync channel, which carries the tracing interceptor (see acall)
                from starlette.concurrency import run_in_threadpool

                stub = self.reads[parts[0][0]]
                reply = await run_in_threadpool(
                    stub.ReadTogether, request, timeout=self.settings.rpc_timeout_s, metadata=metadata
                )
            else:
                reply = (
                    await self._aio_stubs()
                    .reads[target]
                    .ReadTogether(request, timeout=self.settings.rpc_timeout_s, metadata=metadata)
                )
        except grpc.RpcError as error:
            if error.code() is not grpc.StatusCode.UNIMPLEMENTED:  # type: ignore[attr-defined]
                raise _failure(error) from None
            self._together = False  # a node from before ReadTogether: ask each on its own from now on
            return await self._each(parts, token)
        answers = [_answered(part, answer) for part, answer in zip(parts, reply.answers, strict=True)]
        unserved = [
            i for i, answer in enumerate(reply.answers) if answer.code == grpc.StatusCode.UNIMPLEMENTED.value[0]
        ]
        for i, again in zip(unserved, await self._each([parts[i] for i in unserved], token), strict=True):
            answers[i] = again
        return answers

    async def _each(self, parts: Sequence[tuple[str, str, Message, type[Message]]], token: str | None) -> list[Any]:
        calls = [self.acall(service, method, message, token) for service, method, message, _ in parts]
        return list(await asyncio.gather(*calls, return_exceptions=True))

    def _aio_stubs(self) -> AioStubs:
        # A channel of grpc.aio serves the loop it was made on; a new loop (a test's client) gets its own.
        if self._aio is None or self._aio.loop is not asyncio.get_running_loop():
            self._aio = AioStubs(self.settings, self.credentials)
        return self._aio

    async def aclose(self) -> None:
        if self._aio is not None and self._aio.loop is asyncio.get_running_loop():
            await self._aio.close()
        self._aio = None

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
