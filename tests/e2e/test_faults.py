"""The fault harness (issue #10, docs/faults.md): every ``lianxin faults`` scenario in a short version.

What runs: the TCP proxy against a tiny echo server (pass-through, cut, restore, delay); then node
511102 as ten processes (api + worker per service) on a PRIVATE PostgreSQL cluster and a PRIVATE
RabbitMQ node that the harness starts on free loopback ports — the machine's shared servers on
:5432 and :5672 are never stopped — with kill -9 of the intake api and of every worker, a RabbitMQ
shutdown and start, a PostgreSQL crash (stop -m immediate) and start; then county 511102 → city
511100 as embedded nodes with the county's parent link through the proxy, cut and delayed.

Each scenario submits cases at a steady rate with idempotency keys (retrying UNAVAILABLE and
DEADLINE_EXCEEDED with the same key), injects its fault mid-run, lets the load go on, waits until
the system is quiescent and asserts: every acknowledged case stored exactly once, one work order
and one statistics count per case, the parent holding each case once, no process crashing on its
own, and a recovery time measured.

Slow: about four minutes on two cores (most of it is starting Python processes and RabbitMQ).
Needs the PostgreSQL server binaries (initdb, pg_ctl) and rabbitmq-server; without them the
module skips, and with LIANXIN_REQUIRE_SERVICES=1 it fails.
"""

from __future__ import annotations

import socket
import socketserver
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.faults.infra import CapabilityMissing, PrivatePostgres, PrivateRabbitMQ
from bench.faults.proxy import TcpProxy
from bench.faults.scenarios import FederationStack, ProductionStack, ScenarioResult, Settings, run_scenario, started
from tests.support.services import unavailable

pytestmark = pytest.mark.slow

SHORT = Settings(duration_s=4.0, rate=5.0, outage_s=1.0, delay_ms=200.0, converge_timeout_s=90.0)
RUN_ID = uuid.uuid4().hex[:6]


# --------------------------------------------------------------------------- the proxy


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while True:
            try:
                data = self.request.recv(65536)
            except OSError:
                return
            if not data:
                return
            self.request.sendall(data)


class _EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


@pytest.fixture()
def echo() -> Iterator[str]:
    server = _EchoServer(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _connect(proxy: TcpProxy) -> socket.socket:
    return socket.create_connection(("127.0.0.1", proxy.port), timeout=5)


def _round_trip(sock: socket.socket, payload: bytes) -> bytes:
    sock.sendall(payload)
    got = b""
    while len(got) < len(payload):
        chunk = sock.recv(1 << 20)
        if not chunk:
            break
        got += chunk
    return got


def test_proxy_forwards_both_ways_and_passes_a_half_close_on(echo: str) -> None:
    with TcpProxy(echo) as proxy, _connect(proxy) as sock:
        payload = bytes(range(256)) * 4096  # 1 MiB: many chunks, in order
        assert _round_trip(sock, payload) == payload
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(10) == b""  # the echo server saw our EOF and closed its side
        assert proxy.stats.bytes_up == proxy.stats.bytes_down == len(payload)


def test_proxy_cut_resets_open_connections_and_refuses_new_ones_until_restored(echo: str) -> None:
    with TcpProxy(echo) as proxy:
        sock = _connect(proxy)
        assert _round_trip(sock, b"before") == b"before"
        proxy.cut()
        with pytest.raises(OSError):  # reset by peer (or EOF turned into an error on send)
            if sock.recv(10) == b"":
                raise ConnectionResetError("closed")
        sock.close()
        with pytest.raises(ConnectionRefusedError):
            _connect(proxy)
        proxy.restore()
        with _connect(proxy) as again:
            assert _round_trip(again, b"after") == b"after"
        assert proxy.stats.reset == 1


def test_proxy_delay_holds_every_chunk_in_each_direction(echo: str) -> None:
    with TcpProxy(echo) as proxy, _connect(proxy) as sock:
        proxy.set_delay(150)
        started_at = time.monotonic()
        assert _round_trip(sock, b"slow") == b"slow"
        assert time.monotonic() - started_at >= 0.3  # 150 ms up and 150 ms down
        proxy.set_delay(0)
        assert _round_trip(sock, b"fast") == b"fast"
        assert proxy.delay_ms == 0


# --------------------------------------------------------------------------- the scenarios


def _require_infrastructure() -> None:
    try:
        PrivatePostgres._find_bindir()
        PrivateRabbitMQ._find_binaries()
    except CapabilityMissing as missing:
        unavailable(missing.what, missing.why)


@pytest.fixture(scope="class")
def production(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProductionStack]:
    _require_infrastructure()
    with started("production", tmp_path_factory.mktemp("faults")) as stack:
        assert isinstance(stack, ProductionStack)
        yield stack


@pytest.fixture(scope="class")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FederationStack]:
    with started("federation", tmp_path_factory.mktemp("faults")) as stack:
        assert isinstance(stack, FederationStack)
        yield stack


def _assert_nothing_lost_or_doubled(result: ScenarioResult) -> None:
    assert result.acked > 0, result.problems
    assert result.stored == result.acked, result.problems
    assert result.lost == 0, result.problems
    assert result.doubled == 0, result.problems
    assert result.failed == 0, result.problems  # only retryable statuses while the fault lasted
    assert result.crashed == [], result.problems  # nothing died that the harness did not kill
    assert result.ack_recovery_s is not None, "no case acknowledged after the fault was cleared"
    assert result.converged_s is not None, "never converged after the fault was cleared"


class TestProductionNode:
    """Ten processes on the private PostgreSQL and RabbitMQ; the stack is shared by the class, then torn down."""

    def test_private_servers_are_not_the_shared_ones(self, production: ProductionStack) -> None:
        assert production.postgres is not None and production.rabbit is not None
        assert production.postgres.port != 5432
        assert production.rabbit.port != 5672
        assert Path(production.rabbit.root).exists()

    def test_kill_9_of_the_intake_api_under_load(self, production: ProductionStack) -> None:
        result = run_scenario(production, "kill-intake-api", SHORT, run_id=RUN_ID)
        _assert_nothing_lost_or_doubled(result)
        assert result.codes.get("UNAVAILABLE", 0) > 0  # the clients did see the api go away, and retried

    @pytest.mark.parametrize("service", ["intake", "routing", "exchange", "video", "stats"])
    def test_kill_9_of_each_worker_under_load(self, production: ProductionStack, service: str) -> None:
        result = run_scenario(production, f"kill-{service}-worker", SHORT, run_id=RUN_ID)
        _assert_nothing_lost_or_doubled(result)

    def test_rabbitmq_shut_down_and_started_under_load(self, production: ProductionStack) -> None:
        result = run_scenario(production, "rabbitmq-restart", SHORT, run_id=RUN_ID)
        _assert_nothing_lost_or_doubled(result)

    def test_postgresql_crash_and_restart_under_load(self, production: ProductionStack) -> None:
        result = run_scenario(production, "postgres-restart", SHORT, run_id=RUN_ID)
        _assert_nothing_lost_or_doubled(result)
        assert result.retries > 0  # the intake api could not write while the database was down


class TestParentLink:
    """County → proxy → city, embedded nodes; the link is cut, then delayed."""

    def test_parent_link_cut_and_restored_under_load(self, federation: FederationStack) -> None:
        result = run_scenario(federation, "link-cut", SHORT, run_id=RUN_ID)
        _assert_nothing_lost_or_doubled(result)
        assert federation.proxy is not None and federation.proxy.stats.reset > 0  # the link really broke

    def test_parent_link_delayed_under_load(self, federation: FederationStack) -> None:
        result = run_scenario(federation, "link-delay", SHORT, run_id=RUN_ID)
        _assert_nothing_lost_or_doubled(result)
