"""ServerCalls: each method's handler built once from the layers, tracing per call, the query pool kept;
VerifiedTokens: a cached token answers as ``verify_token`` would (no server, no network)."""

from __future__ import annotations

from concurrent import futures
from typing import Any

import grpc
import pytest

from services.common.errors import Unauthenticated
from services.common.interceptors import QueryThreadsInterceptor
from services.common.security import issue_token, verify_token
from services.common.security_interceptor import VerifiedTokens
from services.common.server_calls import MAX_CACHED_METHODS, MethodInterceptor, ServerCalls

READ = "/test.v1.Things/GetThing"
WRITE = "/test.v1.Things/PutThing"
KEY = b"unit-test-key"


class _Details(grpc.HandlerCallDetails):  # type: ignore[misc]
    def __init__(self, method: str, metadata: tuple[tuple[str, str], ...] = ()) -> None:
        self.method = method
        self.invocation_metadata = metadata


class Recording(MethodInterceptor):
    """A layer that counts its ``wrap``s and writes its name into ``trail`` when a call passes it."""

    def __init__(self, name: str, trail: list[str]) -> None:
        self.name = name
        self.trail = trail
        self.wrapped: list[str] = []

    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        self.wrapped.append(method)
        inner = handler.unary_unary

        def behavior(request: Any, context: Any) -> Any:
            self.trail.append(self.name)
            return inner(request, context)

        return grpc.unary_unary_rpc_method_handler(behavior)


class Tracing(grpc.ServerInterceptor):  # type: ignore[misc]
    """Stands in for OpenTelemetry's interceptor: wraps per call, as it does."""

    def __init__(self, trail: list[str]) -> None:
        self.trail = trail
        self.calls = 0

    def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        self.calls += 1
        inner = continuation(details).unary_unary

        def behavior(request: Any, context: Any) -> Any:
            self.trail.append("tracing")
            return inner(request, context)

        return grpc.unary_unary_rpc_method_handler(behavior)


def _registered(trail: list[str]) -> grpc.RpcMethodHandler:
    def handle(request: Any, context: Any) -> Any:
        trail.append("servicer")
        return request

    return grpc.unary_unary_rpc_method_handler(handle)


def test_a_method_is_wrapped_once_and_every_call_passes_every_layer_in_order() -> None:
    trail: list[str] = []
    outer, inner = Recording("outer", trail), Recording("inner", trail)
    calls = ServerCalls([outer, inner])
    registered = _registered(trail)
    first = calls.intercept_service(lambda _d: registered, _Details(READ))
    second = calls.intercept_service(lambda _d: registered, _Details(READ))
    assert first is second
    assert first is not None
    assert outer.wrapped == inner.wrapped == [READ]
    assert first.unary_unary(b"x", None) == b"x"
    assert trail == ["outer", "inner", "servicer"]


def test_each_method_and_each_new_registered_handler_is_wrapped_anew() -> None:
    trail: list[str] = []
    layer = Recording("layer", trail)
    calls = ServerCalls([layer])
    registered = _registered(trail)
    calls.intercept_service(lambda _d: registered, _Details(READ))
    calls.intercept_service(lambda _d: registered, _Details(WRITE))
    replaced = _registered(trail)
    calls.intercept_service(lambda _d: replaced, _Details(READ))
    assert layer.wrapped == [READ, WRITE, READ]


def test_an_unknown_method_reaches_no_layer() -> None:
    layer = Recording("layer", [])
    assert ServerCalls([layer]).intercept_service(lambda _d: None, _Details("/no.Such/Method")) is None
    assert layer.wrapped == []


def test_the_cache_is_bounded() -> None:
    trail: list[str] = []
    layer = Recording("layer", trail)
    calls = ServerCalls([layer])
    registered = _registered(trail)
    for n in range(MAX_CACHED_METHODS + 1):
        calls.intercept_service(lambda _d: registered, _Details(f"/test.v1.Things/M{n}"))
    calls.intercept_service(lambda _d: registered, _Details(f"/test.v1.Things/M{MAX_CACHED_METHODS}"))
    assert len(layer.wrapped) == MAX_CACHED_METHODS + 2  # the one past the bound is built per call


@pytest.mark.parametrize("traced", [False, True])
def test_tracing_runs_per_traced_call_between_the_query_pool_and_the_layers(traced: bool) -> None:
    trail: list[str] = []
    tracing = Tracing(trail)
    pool = futures.ThreadPoolExecutor(max_workers=1)
    try:
        calls = ServerCalls(
            [Recording("layer", trail)],
            outer=QueryThreadsInterceptor({READ}, pool),
            tracing=tracing,
            traced=lambda _details: traced,
        )
        registered = _registered(trail)
        for _ in range(2):
            handler = calls.intercept_service(lambda _d: registered, _Details(READ))
            assert handler is not None
            assert handler.unary_unary.experimental_thread_pool is pool
            handler.unary_unary(b"x", None)
        assert tracing.calls == (2 if traced else 0)
        step = ["tracing", "layer", "servicer"] if traced else ["layer", "servicer"]
        assert trail == step * 2
    finally:
        pool.shutdown()


def test_a_verified_token_is_remembered_and_answers_as_verify_token() -> None:
    tokens = VerifiedTokens(KEY)
    token = issue_token(KEY, subject="li", node="511102", roles=["clerk"], ttl_s=60)
    assert tokens.principal(token) == verify_token(KEY, token)
    assert tokens.principal(token) is tokens.principal(token)


def test_a_remembered_token_still_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    tokens = VerifiedTokens(KEY)
    token = issue_token(KEY, subject="li", node="511102", roles=["clerk"], ttl_s=60)
    tokens.principal(token)
    later = time.time() + 61
    monkeypatch.setattr(time, "time", lambda: later)
    with pytest.raises(Unauthenticated, match="token expired"):
        tokens.principal(token)
    with pytest.raises(Unauthenticated, match="token expired"):
        verify_token(KEY, token)


def test_a_forged_token_is_refused_every_time_and_never_remembered() -> None:
    tokens = VerifiedTokens(KEY, size=2)
    forged = issue_token(b"another key", subject="li", node="511102", roles=["admin"], ttl_s=60)
    for _ in range(2):
        with pytest.raises(Unauthenticated, match="invalid token signature"):
            tokens.principal(forged)
    many = [issue_token(KEY, subject=f"op-{n}", node="511102", roles=["clerk"], ttl_s=60) for n in range(5)]
    assert [tokens.principal(token).subject for token in many] == [f"op-{n}" for n in range(5)]
