"""Query RPCs (``@read_only``) run on the server's query threads, at most ``query_workers`` at once.

Under 50 console clients every one of the 16 handler threads held a page's query and they took the
GIL from each other at every SQLite step (issue 17): the node's CPU per page rose by 20–40 % over the
one-client figure. The queries now have a small pool of their own; writes keep the handler threads.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

import grpc
import pytest

from services.common.db import read_only
from services.common.grpcserver import GrpcServer
from services.common.service import ServicerBinding
from services.common.settings import Settings

SERVICE = "test.v1.QueryService"


def _identity(data: bytes) -> bytes:
    return data


class QueryServicer:
    """``Lookup`` reads (``@read_only``), ``Store`` writes; each answers with its thread's name."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.inside = 0
        self.most = 0
        self._lock = threading.Lock()

    @read_only
    def Lookup(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        if request == b"hold":
            with self._lock:
                self.inside += 1
                self.most = max(self.most, self.inside)
            self.release.wait(20)
            with self._lock:
                self.inside -= 1
        return threading.current_thread().name.encode()

    def Store(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        return threading.current_thread().name.encode()


def _add(servicer: QueryServicer, server: grpc.Server) -> None:
    codec = {"request_deserializer": _identity, "response_serializer": _identity}
    handlers = {
        "Lookup": grpc.unary_unary_rpc_method_handler(servicer.Lookup, **codec),
        "Store": grpc.unary_unary_rpc_method_handler(servicer.Store, **codec),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))


@pytest.fixture
def servicer() -> QueryServicer:
    return QueryServicer()


@contextlib.contextmanager
def _serving(servicer: QueryServicer, **overrides: object) -> Iterator[grpc.Channel]:
    settings = Settings(node="510000", grpc_host="127.0.0.1", grpc_port=0, metrics_port=None)
    settings = settings.with_overrides(grpc_workers=8, **overrides)
    server = GrpcServer([ServicerBinding(add_to_server=_add, servicer=servicer, full_name=SERVICE)], settings).start()
    try:
        with grpc.insecure_channel(server.address) as ch:
            yield ch
    finally:
        servicer.release.set()
        server.stop(0)


@pytest.fixture
def channel(servicer: QueryServicer) -> Iterator[grpc.Channel]:
    with _serving(servicer, query_workers=2) as ch:
        yield ch


def _call(channel: grpc.Channel, method: str) -> grpc.UnaryUnaryMultiCallable:
    return channel.unary_unary(f"/{SERVICE}/{method}", request_serializer=_identity, response_deserializer=_identity)


def test_a_query_runs_on_the_query_threads_and_a_write_on_the_handler_threads(channel: grpc.Channel) -> None:
    assert _call(channel, "Lookup")(b"", timeout=10).startswith(b"grpc-query-510000")
    assert not _call(channel, "Store")(b"", timeout=10).startswith(b"grpc-query")


def test_at_most_query_workers_queries_run_at_once_and_writes_are_not_held_behind_them(
    channel: grpc.Channel, servicer: QueryServicer
) -> None:
    lookup = _call(channel, "Lookup")
    held = [lookup.future(b"hold", timeout=30) for _ in range(5)]  # type: ignore[attr-defined]
    deadline = time.monotonic() + 20
    while servicer.inside < 2:
        assert time.monotonic() < deadline, "two queries never ran"
        time.sleep(0.01)  # polling a condition with a deadline
    # Both query threads are taken: a write still answers, on a handler thread.
    assert not _call(channel, "Store")(b"", timeout=10).startswith(b"grpc-query")
    assert servicer.inside == 2
    servicer.release.set()
    assert [f.result(timeout=20).startswith(b"grpc-query") for f in held] == [True] * 5
    assert servicer.most == 2


def _most_at_once(channel: grpc.Channel, servicer: QueryServicer, expected: int) -> int:
    """Hold more queries than ``expected`` threads; once ``expected`` run, release them all."""
    held = [_call(channel, "Lookup").future(b"hold", timeout=30) for _ in range(expected + 2)]  # type: ignore[attr-defined]
    deadline = time.monotonic() + 20
    while servicer.inside < expected:
        assert time.monotonic() < deadline, f"{expected} queries never ran at once"
        time.sleep(0.01)  # polling a condition with a deadline
    servicer.release.set()
    for future in held:
        future.result(timeout=20)
    return servicer.most


@pytest.mark.parametrize(
    ("database_url", "threads"),
    [(None, 2), ("sqlite:///var/x/{service}.db", 2), ("postgresql+psycopg://db.example/{node}", 4)],
    ids=["embedded-sqlite", "sqlite-url", "postgresql"],
)
def test_unset_the_query_threads_follow_the_backend(database_url: str | None, threads: int) -> None:
    """SQLite reads hand the GIL to each other at every step, so fewer threads serve more pages there;
    PostgreSQL reads wait on the server, so more threads keep the cores busy (docs/web.md)."""
    servicer = QueryServicer()
    with _serving(servicer, query_workers=None, database_url=database_url) as ch:
        assert _most_at_once(ch, servicer, threads) == threads
