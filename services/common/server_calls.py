"""One interceptor for every call of a server: each method's wrapped handler is built once, not per call.

grpcio runs every interceptor's ``intercept_service`` for every call, one after the other in the
server's polling thread, and the chain of five (query threads, tracing, errors and metrics, security,
request rules) built fresh closures and a fresh handler at each level: 15–25 µs of that thread per call
before the handler even started (issue 17: a case page is three calls; issue 21: every PushEvents,
PullDown and ListReplicas between tiers). Nothing in that work depends on the call, only on the method.

So each layer is a ``MethodInterceptor``: ``wrap`` decides once what it does to a method, and what
differs from call to call (the caller's metadata, its certificate) is read from the ServicerContext
while the call runs. ``ServerCalls`` composes the layers once per method, keeps the result, and hands
a call to OpenTelemetry's interceptor only when there is something to trace.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeAlias

import grpc

Handler: TypeAlias = "grpc.RpcMethodHandler | None"
Continuation: TypeAlias = Callable[[grpc.HandlerCallDetails], Handler]

# More distinct method names than any server registers: beyond it a handler is built per call (still
# correct), so a generic handler answering arbitrary names cannot grow the cache without end.
MAX_CACHED_METHODS = 4096


class MethodInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """A layer whose work on a method does not depend on the call: ``wrap`` is asked once per method.

    It is still an ordinary grpcio interceptor (``intercept_service`` wraps per call), so a layer can
    be installed alone; ``ServerCalls`` is what makes the wrapping happen once.
    """

    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """The handler this layer makes of ``handler`` (the layers inside it applied) for ``method``
        (``/package.Service/Method``). Per-call data must be read from the context when the call runs."""
        raise NotImplementedError

    def intercept_service(self, continuation: Continuation, details: grpc.HandlerCallDetails) -> Handler:
        handler = continuation(details)
        return None if handler is None else self.wrap(details.method, handler)


@dataclass(frozen=True)
class _Built:
    registered: grpc.RpcMethodHandler  # what the servicer registered (the cache holds while it is the same)
    inner: grpc.RpcMethodHandler  # every layer applied: what tracing wraps
    served: grpc.RpcMethodHandler  # with the outer layer too: what an untraced call runs


class ServerCalls(grpc.ServerInterceptor):  # type: ignore[misc]
    """The server's only grpcio interceptor: ``outer`` ∘ tracing (when ``traced``) ∘ ``layers`` (outermost first).

    The order and the handlers are those of the chain it replaces (QueryThreadsInterceptor,
    OpenTelemetry's, then ``layers``), so every call sees the same checks in the same order.
    """

    def __init__(
        self,
        layers: Sequence[MethodInterceptor],
        *,
        outer: MethodInterceptor | None = None,
        tracing: grpc.ServerInterceptor | None = None,
        traced: Callable[[grpc.HandlerCallDetails], bool] = lambda _details: True,
    ) -> None:
        self._layers = tuple(reversed(layers))  # innermost first: the order they are applied in
        self._outer = outer
        self._tracing = tracing
        self._traced = traced
        self._built: dict[str, _Built] = {}

    def intercept_service(self, continuation: Continuation, details: grpc.HandlerCallDetails) -> Handler:
        registered = continuation(details)
        if registered is None:
            return None  # unknown method: grpcio answers UNIMPLEMENTED, as every layer let it
        method: str = details.method
        built = self._built.get(method)
        if built is None or built.registered is not registered:
            built = self._build(method, registered)
        if self._tracing is not None and self._traced(details):
            # OpenTelemetry's wrapper reads the call's details (span name, remote context): per call.
            inner = built.inner
            traced: Handler = self._tracing.intercept_service(lambda _details: inner, details)
            if traced is None or self._outer is None:
                return traced
            return self._outer.wrap(method, traced)
        return built.served

    def handler(self, method: str, registered: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """``registered`` (``method``'s handler) with every layer applied, for a call made inside another
        call of this server (read_together): no thread hand-off of its own, no span of its own."""
        built = self._built.get(method)
        if built is None or built.registered is not registered:
            built = self._build(method, registered)
        return built.inner

    def _build(self, method: str, registered: grpc.RpcMethodHandler) -> _Built:
        inner = registered
        for layer in self._layers:
            inner = layer.wrap(method, inner)
        served = inner if self._outer is None else self._outer.wrap(method, inner)
        built = _Built(registered, inner, served)
        if len(self._built) < MAX_CACHED_METHODS:
            self._built[method] = built
        return built
