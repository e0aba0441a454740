"""The server's interceptors: domain errors to status codes in one place (unexpected errors hidden as
INTERNAL, an unreachable database as UNAVAILABLE), the RPC metrics, and the public port's filter.

``grpcserver.GrpcServer`` installs them; ``status_for`` is the one mapping from ``services.common.errors``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from concurrent import futures
from typing import Any, NoReturn

import grpc
import psycopg
import sqlalchemy.exc
from google.protobuf import descriptor_pool
from grpc_health.v1 import health
from prometheus_client import Counter, Histogram

from services.common.errors import (
    AlreadyExists,
    Conflict,
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    StaleOwner,
    Unauthenticated,
    Unavailable,
)
from services.common.server_calls import MethodInterceptor

log = logging.getLogger(__name__)

FIELD_METADATA_KEY = "lianxin-field"
INTERNAL_MESSAGE = "internal error"
HEALTH_SERVICE_NAME: str = health.SERVICE_NAME

# --------------------------------------------------------------------------- domain error mapping

_STATUS_BY_ERROR: dict[type[DomainError], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    StaleOwner: grpc.StatusCode.FAILED_PRECONDITION,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    Conflict: grpc.StatusCode.ABORTED,
    ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    # A rule violation nobody classified: the request was understood but the state refuses it.
    DomainError: grpc.StatusCode.FAILED_PRECONDITION,
}


def status_for(error: DomainError) -> grpc.StatusCode:
    """The one mapping from domain errors to gRPC status codes (the nearest mapped class wins)."""
    for cls in type(error).__mro__:
        code = _STATUS_BY_ERROR.get(cls)
        if code is not None:
            return code
    return grpc.StatusCode.FAILED_PRECONDITION


def trailing_metadata_for(error: DomainError) -> tuple[tuple[str, str], ...]:
    """Machine-readable detail a client can act on without parsing the message."""
    if isinstance(error, InvalidArgument):
        return ((FIELD_METADATA_KEY, error.field),)
    return ()


# --------------------------------------------------------------------------- metrics

# Registered on the default registry at import so business metrics and RPC metrics share one
# /metrics page; labels are the service and method names of registered handlers only.
STARTED = Counter(
    "lianxin_grpc_server_started_total",
    "RPCs started on the server",
    ["service", "method"],
)
HANDLED = Counter(
    "lianxin_grpc_server_handled_total",
    "RPCs completed on the server, by status code",
    ["service", "method", "code"],
)
HANDLING_SECONDS = Histogram(
    "lianxin_grpc_server_handling_seconds",
    "Time from the start of an RPC to its status (streams: until the stream ends)",
    ["service", "method"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)


def initialise_rpc_metrics(service_names: Sequence[str]) -> None:
    """Every method's RPC series at zero from the start (code OK), so rate() and increase() see the
    first call as an increase rather than as the series appearing (the grpc-ecosystem practice)."""
    pool = descriptor_pool.Default()
    for service in service_names:
        try:
            descriptor = pool.FindServiceByName(service)
        except KeyError:
            continue  # a service without a registered descriptor (a test's generic handler)
        for method in descriptor.methods:
            STARTED.labels(service, method.name)
            HANDLED.labels(service, method.name, grpc.StatusCode.OK.name)
            HANDLING_SECONDS.labels(service, method.name)


def split_method(full_method: str) -> tuple[str, str]:
    service, _, method = full_method.lstrip("/").partition("/")
    return service, method


# --------------------------------------------------------------------------- server interceptor

Behavior = Callable[[Any, grpc.ServicerContext], Any]


class _MethodMetrics:
    """One method's metric series, looked up once: ``labels()`` takes the metric's lock and builds a
    key on every use, three times a call before (issue 17)."""

    def __init__(self, service: str, method: str) -> None:
        self.service = service
        self.method = method
        self.started = STARTED.labels(service, method)
        self.seconds = HANDLING_SECONDS.labels(service, method)
        self._handled: dict[grpc.StatusCode, Any] = {}

    def handled(self, code: grpc.StatusCode) -> Any:
        child = self._handled.get(code)
        if child is None:
            # A race between two first calls with the same code looks the same child up twice: harmless.
            child = self._handled[code] = HANDLED.labels(self.service, self.method, code.name)
        return child


class _Outcome:
    """Which status an RPC ended with, worked out once for the metrics."""

    __slots__ = ("metrics", "start")

    def __init__(self, metrics: _MethodMetrics) -> None:
        self.metrics = metrics
        self.start = time.perf_counter()
        metrics.started.inc()

    def finish(self, code: grpc.StatusCode) -> None:
        self.metrics.handled(code).inc()
        self.metrics.seconds.observe(time.perf_counter() - self.start)


def _code_after_return(context: grpc.ServicerContext) -> grpc.StatusCode:
    # A handler may set a code without raising (the health servicer does for unknown services).
    code = context.code()
    return code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.OK


def _handle_exception(exc: Exception, context: grpc.ServicerContext, method: str) -> NoReturn:
    """Turn ``exc`` into the RPC's status; always ends by raising."""
    if isinstance(exc, DomainError):
        code = status_for(exc)
        metadata = trailing_metadata_for(exc)
        if metadata:
            context.set_trailing_metadata(metadata)
        context.abort(code, exc.message)
    if isinstance(exc, grpc.RpcError):
        if isinstance(exc, grpc.Call):
            # A downstream call failed and the handler let it escape: keep its status (a parent
            # node's UNAVAILABLE stays retryable) rather than grpcio's UNKNOWN with its text.
            context.abort(exc.code(), exc.details() or "")
        # Raised by grpcio itself on this call: the client is gone.
        raise exc
    if type(exc) is Exception and not exc.args and isinstance(context.code(), grpc.StatusCode):
        # context.abort() raises a bare Exception after recording the status: let it through.
        raise exc
    if database_unreachable(exc):
        # The database restarting or out of reach is a passing condition, not a bug: UNAVAILABLE
        # tells the client to retry (with the same idempotency key, so nothing is doubled).
        log.warning("database unavailable in %s: %s", method, type(exc).__name__)
        context.abort(grpc.StatusCode.UNAVAILABLE, "database unavailable, retry")
    log.error("unexpected error in %s", method, exc_info=exc)
    context.abort(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)
    raise AssertionError("unreachable: context.abort raises")  # pragma: no cover


def database_unreachable(exc: BaseException) -> bool:
    """True when ``exc`` says the database connection failed (not that a statement was wrong).

    OperationalError (SQLAlchemy's wrapper or psycopg's own, raised by the direct submit path) is
    what a refused, reset or terminated connection raises; a constraint or syntax error is not one.
    """
    if isinstance(exc, sqlalchemy.exc.DBAPIError):
        return bool(exc.connection_invalidated) or isinstance(exc, sqlalchemy.exc.OperationalError)
    return isinstance(exc, psycopg.OperationalError)


def _abort_code(exc: BaseException, context: grpc.ServicerContext) -> grpc.StatusCode:
    code = context.code()
    if isinstance(code, grpc.StatusCode) and code is not grpc.StatusCode.OK:
        return code
    if isinstance(exc, grpc.RpcError) and not isinstance(exc, grpc.Call):
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.UNKNOWN


def _wrap_unary_response(behavior: Behavior, metrics: _MethodMetrics, full: str) -> Behavior:
    def wrapper(request: Any, context: grpc.ServicerContext) -> Any:
        outcome = _Outcome(metrics)
        failure: Exception | None = None
        try:
            response = behavior(request, context)
        except Exception as exc:
            failure = exc
        if failure is not None:
            # Handled outside the except block so the abort is not chained to ``failure``: the
            # tracing interceptor records the traceback, and a chained domain error would carry
            # client input (an ID number in a "not found" message) into exported spans.
            try:
                _handle_exception(failure, context, full)
            except BaseException as final:
                outcome.finish(_abort_code(final, context))
                raise
        outcome.finish(_code_after_return(context))
        return response

    return wrapper


def _wrap_stream_response(behavior: Behavior, metrics: _MethodMetrics, full: str) -> Behavior:
    def wrapper(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        outcome = _Outcome(metrics)
        failure: Exception | None = None
        try:
            yield from behavior(request, context)
        except GeneratorExit:
            # grpcio dropped the stream (client cancelled or server stopped).
            outcome.finish(grpc.StatusCode.CANCELLED)
            raise
        except Exception as exc:
            failure = exc
        if failure is not None:
            # Outside the except block, as in _wrap_unary_response (no chained client input in spans).
            try:
                _handle_exception(failure, context, full)
            except BaseException as final:
                outcome.finish(_abort_code(final, context))
                raise
        outcome.finish(_code_after_return(context))

    return wrapper


class LianxinServerInterceptor(MethodInterceptor):
    """Maps domain errors to status codes, hides unexpected errors as INTERNAL, records RPC metrics."""

    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        # Unknown methods never get here (grpcio answers UNIMPLEMENTED; their names are client input).
        metrics = _MethodMetrics(*split_method(method))
        if handler.request_streaming and handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(
                _wrap_stream_response(handler.stream_stream, metrics, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.request_streaming:
            return grpc.stream_unary_rpc_method_handler(
                _wrap_unary_response(handler.stream_unary, metrics, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_stream_response(handler.unary_stream, metrics, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return grpc.unary_unary_rpc_method_handler(
            _wrap_unary_response(handler.unary_unary, metrics, method),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


class PublicOnlyInterceptor(MethodInterceptor):
    """The public port serves the citizen methods and health, nothing else: an operator's or a
    node's method there is PERMISSION_DENIED before any handler (or the security policy) runs."""

    def __init__(self, public_methods: Collection[str]) -> None:
        self._public = frozenset(public_methods)

    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        # ``method`` is "/package.Service/Method"; unknown ones never get here (UNIMPLEMENTED, as on the main port).
        if method.lstrip("/") in self._public or method.startswith(f"/{HEALTH_SERVICE_NAME}/"):
            return handler
        return _refusal(handler)


def _refusal(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A handler of the same shape as ``handler`` that refuses without reading past the first message."""

    def refuse(_request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(grpc.StatusCode.PERMISSION_DENIED, "not a public method: use the node's port")

    shape = (handler.request_streaming, handler.response_streaming)
    make = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }[shape]
    return make(
        refuse, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
    )


class QueryThreadsInterceptor(MethodInterceptor):
    """The read-only query RPCs (``@read_only``: the console's and portal's reads) run on a small pool
    of their own; writes, node-to-node calls and long polls keep the server's handler threads.

    Under 50 console clients each of the 16 handler threads held a page's query at once, and each
    time one released the GIL (every SQLite step, every call into gRPC's core) another took it over:
    the node's context switches per case page went from ~60 with one client to 95–175, its CPU per
    page up by 20–40 % (issue 17; docs/web.md, sixth pass). grpcio runs a method on the pool its
    behaviour names (``experimental_thread_pool``), so this layer, applied outermost (after tracing),
    names the query pool; a query waiting for one of its threads waits in the pool's queue, asleep.
    """

    def __init__(self, methods: Collection[str], pool: futures.ThreadPoolExecutor) -> None:
        self._methods = frozenset(methods)
        self._pool = pool

    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        if handler.unary_unary is None or method not in self._methods:
            return handler
        inner = handler.unary_unary

        def behavior(request: Any, context: grpc.ServicerContext) -> Any:
            return inner(request, context)

        behavior.experimental_thread_pool = self._pool  # type: ignore[attr-defined]
        return grpc.unary_unary_rpc_method_handler(
            behavior, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
        )


def read_only_methods(servicers: Iterable[tuple[str, Any]]) -> frozenset[str]:
    """``/package.Service/Method`` of every ``@read_only`` method of ``(full service name, servicer)``."""
    return frozenset(
        f"/{name}/{attr}"
        for name, servicer in servicers
        for attr in dir(type(servicer))
        if getattr(getattr(type(servicer), attr, None), "lianxin_read_only", False)
    )
