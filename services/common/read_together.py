"""``ReadsService/ReadTogether``: several query RPCs of one process in one gRPC call.

A console case page reads three services of its node (intake's GetCase, routing's ListWorkOrders,
video's GetCaseVideo). Measured on a node of 100,000 cases (issue 17, docs/web.md), the three
handlers cost ~0.6 ms of CPU and the three calls through grpcio ~2.7 ms: four fifths of the node's
share of a page was gRPC's per-call machinery (the polling thread, the hand-off to a pool thread,
HTTP/2 framing, the client's side), paid once per call. Asked together, it is paid once.

A part is not a shortcut around a method's checks: it runs the handler grpcio would have run for a
call of its own method, with every layer of this server (``ServerCalls.handler``: errors and
metrics, the security rule of that method with the outer call's token and certificate, the request
rules, the masking of the answer), and answers what that call would have answered, status and
trailing metadata included. Only ``@read_only`` methods of this process's own services may be parts
(a write stays one call, audited on its own); anything else is refused part by part, so the client
asks it alone.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from lianxin.common.v1 import reads_pb2

from services.common.errors import InvalidArgument
from services.common.server_calls import ServerCalls

SERVICE = "lianxin.common.v1.ReadsService"
METHOD = f"/{SERVICE}/ReadTogether"
# A page reads three or four services; more parts than this is a client bug, not a page.
MAX_PARTS = 16


class _PartContext(grpc.ServicerContext):  # type: ignore[misc]
    """The servicer context one part runs with: the caller, its metadata, certificate and deadline
    are the outer call's; the status, details and trailing metadata are the part's own."""

    def __init__(self, outer: grpc.ServicerContext) -> None:
        self._outer = outer
        self._code: grpc.StatusCode | None = None
        self._details = ""
        self._trailing: tuple[tuple[str, Any], ...] = ()

    # -- the caller: the outer call's
    def invocation_metadata(self) -> Any:
        return self._outer.invocation_metadata()

    def peer(self) -> str:
        return str(self._outer.peer())

    def peer_identities(self) -> Any:
        return self._outer.peer_identities()

    def peer_identity_key(self) -> Any:
        return self._outer.peer_identity_key()

    def auth_context(self) -> Any:
        return self._outer.auth_context()

    def is_active(self) -> bool:
        return bool(self._outer.is_active())

    def time_remaining(self) -> Any:
        return self._outer.time_remaining()

    def cancel(self) -> None:
        self._outer.cancel()

    def add_callback(self, callback: Callable[[], None]) -> bool:
        return bool(self._outer.add_callback(callback))

    # -- the part's own answer
    def send_initial_metadata(self, initial_metadata: Any) -> None:
        pass  # one answer carries every part: a part's initial metadata has nowhere to go

    def set_trailing_metadata(self, trailing_metadata: Any) -> None:
        self._trailing = tuple(trailing_metadata or ())

    def trailing_metadata(self) -> Any:
        return self._trailing

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def set_details(self, details: str) -> None:
        self._details = details

    def details(self) -> str:
        return self._details

    def set_compression(self, compression: Any) -> None:
        pass

    def disable_next_message_compression(self) -> None:
        pass

    def abort(self, code: grpc.StatusCode, details: str) -> Any:
        if code is grpc.StatusCode.OK:
            raise ValueError("abort() needs a status other than OK")  # as grpcio
        self._code, self._details = code, details
        # A bare Exception, as grpcio's own abort raises: the error layer lets exactly that through.
        raise Exception()

    def abort_with_status(self, status: Any) -> Any:
        self.set_trailing_metadata(status.trailing_metadata)
        self.abort(status.code, status.details)

    def answer(self, response: bytes = b"") -> reads_pb2.ReadAnswer:
        code = self._code or grpc.StatusCode.OK
        trailers = [
            reads_pb2.ReadTrailer(key=str(key), value=str(value))
            for key, value in self._trailing
            if not str(key).endswith("-bin")  # binary trailers (none of ours) do not fit a string
        ]
        if code is not grpc.StatusCode.OK:
            return reads_pb2.ReadAnswer(code=code.value[0], message=self._details, trailers=trailers)
        return reads_pb2.ReadAnswer(code=0, response=response, trailers=trailers)


def _refused(code: grpc.StatusCode, message: str) -> reads_pb2.ReadAnswer:
    return reads_pb2.ReadAnswer(code=code.value[0], message=message)


class ReadTogether:
    """The ``ReadTogether`` behaviour of one server: its registered handlers, through its own layers."""

    def __init__(
        self, calls: ServerCalls, registered: Mapping[str, grpc.RpcMethodHandler], queries: Collection[str]
    ) -> None:
        self._calls = calls
        self._registered = dict(registered)
        self._queries = frozenset(queries)

    def __call__(self, request: reads_pb2.ReadTogetherRequest, context: grpc.ServicerContext) -> Any:
        if not request.parts:
            raise InvalidArgument("parts", "name at least one read")
        if len(request.parts) > MAX_PARTS:
            raise InvalidArgument("parts", f"at most {MAX_PARTS} reads in one call")
        return reads_pb2.ReadTogetherResponse(answers=[self._answer(part, context) for part in request.parts])

    def _answer(self, part: reads_pb2.ReadPart, context: grpc.ServicerContext) -> reads_pb2.ReadAnswer:
        registered = self._registered.get(part.method)
        if registered is None or registered.unary_unary is None:
            return _refused(grpc.StatusCode.UNIMPLEMENTED, f"{part.method} is not served here: call it on its own")
        if part.method not in self._queries:
            return _refused(grpc.StatusCode.PERMISSION_DENIED, "only read-only methods can be read together")
        handler = self._calls.handler(part.method, registered)
        try:
            message = handler.request_deserializer(part.request) if handler.request_deserializer else part.request
        except DecodeError:
            return _refused(grpc.StatusCode.INVALID_ARGUMENT, f"parts.request: not a request of {part.method}")
        part_context = _PartContext(context)
        try:
            response = handler.unary_unary(message, part_context)
        except Exception:
            # The error layer has already turned the failure into the part's status (abort), as a
            # call of its own would have answered; anything else it would have made INTERNAL.
            if part_context.code() is None:
                part_context.set_code(grpc.StatusCode.INTERNAL)
            return part_context.answer()
        if part_context.code() not in (None, grpc.StatusCode.OK):
            return part_context.answer()  # the handler set a status without raising
        body = handler.response_serializer(response) if handler.response_serializer else response
        return part_context.answer(body)


class _Recorder:
    """Passes a generated ``add_XServicer_to_server``'s registrations on to the server and keeps each
    method's handler by name: the very objects grpcio then hands the server's interceptor, so a part
    and a call of its own share one built handler (``ServerCalls`` keys its cache by that object)."""

    def __init__(self, server: grpc.Server) -> None:
        self._server = server
        self.handlers: dict[str, grpc.RpcMethodHandler] = {}

    def add_generic_rpc_handlers(self, handlers: Sequence[Any]) -> None:
        self._server.add_generic_rpc_handlers(handlers)

    def add_registered_method_handlers(self, service: str, handlers: Mapping[str, grpc.RpcMethodHandler]) -> None:
        self._server.add_registered_method_handlers(service, handlers)
        self.handlers.update({f"/{service}/{name}": handler for name, handler in handlers.items()})


def add_servicers(server: grpc.Server, bindings: Sequence[Any]) -> dict[str, grpc.RpcMethodHandler]:
    """Add each binding's servicer to ``server``; ``/package.Service/Method`` → the handler it registered."""
    recorder = _Recorder(server)
    for binding in bindings:
        binding.add_to_server(binding.servicer, recorder)
    return recorder.handlers


def add_to_server(server: grpc.Server, together: ReadTogether) -> None:
    handler = grpc.unary_unary_rpc_method_handler(
        together,
        request_deserializer=reads_pb2.ReadTogetherRequest.FromString,
        response_serializer=reads_pb2.ReadTogetherResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {"ReadTogether": handler}),))
