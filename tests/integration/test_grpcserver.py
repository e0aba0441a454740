"""The shared gRPC server on real ports: health, reflection, error mapping, metrics, drain, tracing."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
import sqlalchemy as sa
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from opentelemetry.trace import SpanKind
from prometheus_client.parser import text_string_to_metric_families

from services.common.errors import FailedPrecondition, InvalidArgument, NotFound, StaleOwner
from services.common.grpcclient import instrumented_channel
from services.common.grpcserver import GrpcServer
from services.common.interceptors import FIELD_METADATA_KEY, INTERNAL_MESSAGE, status_for
from services.common.service import ServicerBinding
from services.common.settings import Settings
from services.common.telemetry import setup_tracing
from services.common.tls import NodeTls, write_dev_pki

ECHO = "test.v1.EchoService"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _identity(data: bytes) -> bytes:
    return data


def _fail_on(request: bytes) -> None:
    """Requests name the failure the test wants the handler to raise."""
    if request == b"invalid":
        raise InvalidArgument("case_id", "must not be empty")
    if request == b"precondition":
        raise FailedPrecondition("a registered case cannot be closed", current_state="REGISTERED")
    if request == b"stale":
        raise StaleOwner("511102-20261122-000123", epoch=1, current_epoch=2)
    if request == b"missing":
        raise NotFound("case", "511102-20261122-000123")
    if request == b"boom":
        raise RuntimeError("secret database password in 13812345678")
    if request == b"db-down":
        # A real connection refused: nothing listens on port 1.
        sa.create_engine("postgresql+psycopg://lianxin@127.0.0.1:1/none").connect()
    if request == b"db-constraint":
        engine = sa.create_engine("sqlite://")
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE t (k INTEGER PRIMARY KEY)"))
            conn.execute(sa.text("INSERT INTO t VALUES (1), (1)"))


class EchoServicer:
    """A bytes-in, bytes-out test service so these tests need no generated protos."""

    def echo(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        if request == b"abort":
            context.abort(grpc.StatusCode.PERMISSION_DENIED, "aborted by the handler")
        _fail_on(request)
        return request

    def count(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        # "3:missing" yields three messages, then fails.
        n, _, failure = request.partition(b":")
        for i in range(int(n)):
            yield str(i).encode()
        _fail_on(failure)

    def join(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        parts = []
        for request in requests:
            _fail_on(request)
            parts.append(request)
        return b",".join(parts)

    def chat(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        for request in requests:
            _fail_on(request)
            yield request.upper()


def add_echo_to_server(servicer: EchoServicer, server: grpc.Server) -> None:
    kw: dict[str, Any] = {"request_deserializer": _identity, "response_serializer": _identity}
    handlers = {
        "Echo": grpc.unary_unary_rpc_method_handler(servicer.echo, **kw),
        "Count": grpc.unary_stream_rpc_method_handler(servicer.count, **kw),
        "Join": grpc.stream_unary_rpc_method_handler(servicer.join, **kw),
        "Chat": grpc.stream_stream_rpc_method_handler(servicer.chat, **kw),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(ECHO, handlers),))


@dataclass
class Readiness:
    ready: bool = True
    calls: list[bool] = field(default_factory=list)

    def __call__(self) -> bool:
        self.calls.append(self.ready)
        return self.ready


def _settings(**changes: object) -> Settings:
    return Settings(
        node="510000", grpc_host="127.0.0.1", grpc_port=0, metrics_port=0, grpc_workers=8, readiness_interval_s=0.05
    ).with_overrides(**changes)


@pytest.fixture
def readiness() -> Readiness:
    return Readiness()


@pytest.fixture
def server(readiness: Readiness) -> Iterator[GrpcServer]:
    binding = ServicerBinding(add_to_server=add_echo_to_server, servicer=EchoServicer(), full_name=ECHO)
    srv = GrpcServer([binding], _settings(), ready=readiness).start()
    yield srv
    srv.stop(0)


@pytest.fixture
def channel(server: GrpcServer) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.address) as ch:
        yield ch


_CODEC: dict[str, Any] = {"request_serializer": _identity, "response_deserializer": _identity}


def _unary(channel: grpc.Channel, method: str) -> grpc.UnaryUnaryMultiCallable:
    return channel.unary_unary(f"/{ECHO}/{method}", **_CODEC)


def _wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        time.sleep(0.01)


def _check(channel: grpc.Channel, service: str) -> int:
    request = health_pb2.HealthCheckRequest(service=service)
    status: int = health_pb2_grpc.HealthStub(channel).Check(request, timeout=5).status
    return status


# ------------------------------------------------------------------------- health and reflection


def test_health_is_serving_for_registered_service_and_overall(channel: grpc.Channel) -> None:
    assert _check(channel, ECHO) == SERVING
    assert _check(channel, "") == SERVING


def test_readiness_turns_not_serving_when_not_ready_while_liveness_stays_serving(
    server: GrpcServer, channel: grpc.Channel, readiness: Readiness
) -> None:
    """The business service's name is readiness; the overall name "" is liveness (the process answers)."""
    readiness.ready = False
    assert server.refresh_health() is False
    assert _check(channel, ECHO) == NOT_SERVING
    assert _check(channel, "") == SERVING
    readiness.ready = True
    server.refresh_health()
    assert _check(channel, ECHO) == SERVING


def test_readiness_is_checked_again_without_anyone_asking(channel: grpc.Channel, readiness: Readiness) -> None:
    """The server re-checks readiness on its own (settings.readiness_interval_s; 0.05 s here)."""
    readiness.ready = False
    _wait_for(lambda: _check(channel, ECHO) == NOT_SERVING)
    readiness.ready = True
    _wait_for(lambda: _check(channel, ECHO) == SERVING)


def test_health_is_not_serving_when_readiness_check_raises(server: GrpcServer, channel: grpc.Channel) -> None:
    def broken() -> bool:
        raise ConnectionError("database down")

    server._ready = broken
    assert server.refresh_health() is False
    assert _check(channel, ECHO) == NOT_SERVING


def test_reflection_lists_business_health_and_reflection_services(channel: grpc.Channel) -> None:
    services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
    assert services == {ECHO, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"}


# ------------------------------------------------------------------------- error mapping


def test_invalid_argument_carries_field_and_reason(channel: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        _unary(channel, "Echo")(b"invalid", timeout=5)
    error: Any = caught.value
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "case_id: must not be empty"
    assert (FIELD_METADATA_KEY, "case_id") in tuple(error.trailing_metadata())


@pytest.mark.parametrize(
    ("request_bytes", "code", "details"),
    [
        (b"precondition", grpc.StatusCode.FAILED_PRECONDITION, "current state: REGISTERED"),
        (b"stale", grpc.StatusCode.FAILED_PRECONDITION, "stale owner epoch 1"),
        (b"missing", grpc.StatusCode.NOT_FOUND, "case 511102-20261122-000123 not found"),
    ],
)
def test_domain_errors_become_their_status(
    channel: grpc.Channel, request_bytes: bytes, code: grpc.StatusCode, details: str
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        _unary(channel, "Echo")(request_bytes, timeout=5)
    error: Any = caught.value
    assert error.code() is code
    assert details in error.details()


def test_handler_abort_passes_through(channel: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        _unary(channel, "Echo")(b"abort", timeout=5)
    error: Any = caught.value
    assert error.code() is grpc.StatusCode.PERMISSION_DENIED
    assert error.details() == "aborted by the handler"


def test_unexpected_exception_is_internal_without_leaking_its_message(
    channel: grpc.Channel, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, "services.common.grpcserver"), pytest.raises(grpc.RpcError) as caught:
        _unary(channel, "Echo")(b"boom", timeout=5)
    error: Any = caught.value
    assert error.code() is grpc.StatusCode.INTERNAL
    assert error.details() == INTERNAL_MESSAGE
    logged = [r for r in caplog.records if r.exc_info and "Echo" in r.getMessage()]
    assert logged and isinstance(logged[0].exc_info[1], RuntimeError)  # type: ignore[index]


def test_a_database_out_of_reach_is_unavailable_so_clients_retry(channel: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        _unary(channel, "Echo")(b"db-down", timeout=10)
    error: Any = caught.value
    assert error.code() is grpc.StatusCode.UNAVAILABLE
    assert "database unavailable" in error.details()


def test_a_failing_statement_is_still_internal(channel: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        _unary(channel, "Echo")(b"db-constraint", timeout=10)
    error: Any = caught.value
    assert error.code() is grpc.StatusCode.INTERNAL


def test_successful_calls_of_every_arity_pass_through(channel: grpc.Channel) -> None:
    assert _unary(channel, "Echo")(b"hello", timeout=5) == b"hello"
    count = channel.unary_stream(f"/{ECHO}/Count", **_CODEC)
    assert list(count(b"3", timeout=5)) == [b"0", b"1", b"2"]
    join = channel.stream_unary(f"/{ECHO}/Join", **_CODEC)
    assert join(iter([b"a", b"b"]), timeout=5) == b"a,b"
    chat = channel.stream_stream(f"/{ECHO}/Chat", **_CODEC)
    assert list(chat(iter([b"a", b"b"]), timeout=5)) == [b"A", b"B"]


def test_domain_error_in_streams_is_mapped_after_sent_messages(channel: grpc.Channel) -> None:
    count = channel.unary_stream(f"/{ECHO}/Count", **_CODEC)
    received: list[bytes] = []
    with pytest.raises(grpc.RpcError) as caught:
        for message in count(b"2:missing", timeout=5):
            received.append(message)
    assert received == [b"0", b"1"]
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]

    chat = channel.stream_stream(f"/{ECHO}/Chat", **_CODEC)
    with pytest.raises(grpc.RpcError) as caught:
        list(chat(iter([b"a", b"invalid"]), timeout=5))
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]

    join = channel.stream_unary(f"/{ECHO}/Join", **_CODEC)
    with pytest.raises(grpc.RpcError) as caught:
        join(iter([b"a", b"boom"]), timeout=5)
    assert caught.value.code() is grpc.StatusCode.INTERNAL  # type: ignore[attr-defined]


def test_status_for_is_the_one_mapping() -> None:
    assert status_for(InvalidArgument("f", "r")) is grpc.StatusCode.INVALID_ARGUMENT
    assert status_for(StaleOwner("k", 1)) is grpc.StatusCode.FAILED_PRECONDITION


# ------------------------------------------------------------------------- metrics


def _metrics(port: int) -> dict[str, list[tuple[dict[str, str], float]]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def _value(samples: list[tuple[dict[str, str], float]], **labels: str) -> float:
    return sum(value for sample_labels, value in samples if labels.items() <= sample_labels.items())


def test_metrics_count_rpcs_by_method_code_and_latency(server: GrpcServer, channel: grpc.Channel) -> None:
    assert server.metrics_port
    before = _metrics(server.metrics_port)
    _unary(channel, "Echo")(b"ok", timeout=5)
    with pytest.raises(grpc.RpcError):
        _unary(channel, "Echo")(b"invalid", timeout=5)
    after = _metrics(server.metrics_port)

    def delta(name: str, **labels: str) -> float:
        return _value(after.get(name, []), **labels) - _value(before.get(name, []), **labels)

    handled = "lianxin_grpc_server_handled_total"
    assert delta(handled, service=ECHO, method="Echo", code="OK") == 1
    assert delta(handled, service=ECHO, method="Echo", code="INVALID_ARGUMENT") == 1
    assert delta("lianxin_grpc_server_started_total", service=ECHO, method="Echo") == 2
    assert delta("lianxin_grpc_server_handling_seconds_count", service=ECHO, method="Echo") == 2
    buckets = {labels["le"] for labels, _ in after["lianxin_grpc_server_handling_seconds_bucket"]}
    assert {"0.0005", "10.0", "+Inf"} <= buckets
    # Request data never becomes a label value.
    assert not any("invalid" in str(labels) for labels, _ in after[handled])


def test_each_server_in_a_process_has_its_own_metrics_port(server: GrpcServer) -> None:
    other = GrpcServer([], _settings()).start()
    try:
        assert other.metrics_port and other.metrics_port != server.metrics_port
        assert "lianxin_grpc_server_handled_total" in _metrics(other.metrics_port)
    finally:
        other.stop(0)


def test_probe_port_answers_health_in_plaintext_while_the_service_port_needs_mtls(
    tmp_path: Path, readiness: Readiness
) -> None:
    """Kubernetes' gRPC probes speak no TLS: the health port (LIANXIN_HEALTH_PORT) has health and nothing else."""
    write_dev_pki(tmp_path, ["510000"])
    credentials = NodeTls.load(tmp_path, "510000").server_credentials()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        health_port = int(s.getsockname()[1])
    binding = ServicerBinding(add_to_server=add_echo_to_server, servicer=EchoServicer(), full_name=ECHO)
    srv = GrpcServer(
        [binding], _settings(health_port=health_port), ready=readiness, server_credentials=credentials
    ).start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{health_port}") as probe:
            assert _check(probe, "") == SERVING
            assert _check(probe, ECHO) == SERVING
            readiness.ready = False
            _wait_for(lambda: _check(probe, ECHO) == NOT_SERVING)
            assert _check(probe, "") == SERVING
            with pytest.raises(grpc.RpcError) as refused:
                _unary(probe, "Echo")(b"hi", timeout=5)
            assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED
        with grpc.insecure_channel(srv.address) as plaintext, pytest.raises(grpc.RpcError):
            _check(plaintext, "")  # the service port itself still wants TLS
    finally:
        srv.stop(0)


def test_metrics_can_be_disabled() -> None:
    srv = GrpcServer([], _settings(metrics_port=None)).start()
    try:
        assert srv.metrics_port is None
    finally:
        srv.stop(0)


# ------------------------------------------------------------------------- shutdown


def test_stop_flips_health_to_not_serving_before_shutdown(server: GrpcServer, channel: grpc.Channel) -> None:
    statuses: list[int] = []
    seen = threading.Condition()
    watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=ECHO), timeout=30)

    def read() -> None:
        try:
            for response in watch:
                with seen:
                    statuses.append(response.status)
                    seen.notify_all()
        except grpc.RpcError:
            pass  # the server cancels the watch when grace runs out

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    with seen:
        assert seen.wait_for(lambda: SERVING in statuses, timeout=5)
    server.stop(grace=0.5)
    reader.join(timeout=5)
    assert statuses[:1] == [SERVING]
    assert NOT_SERVING in statuses
    assert server.wait_for_termination(timeout=0)


def test_refresh_after_stop_does_not_resurrect_health(server: GrpcServer, readiness: Readiness) -> None:
    server.stop(0)
    assert server.refresh_health() is False
    assert server.wait_for_termination(timeout=0)


def test_sigterm_stops_the_server(server: GrpcServer) -> None:
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.install_signal_handlers(grace=0.1)
        os.kill(os.getpid(), signal.SIGTERM)
        assert server.wait_for_termination(timeout=10)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# ------------------------------------------------------------------------- tracing


def test_instrumented_channel_links_client_and_server_spans(server: GrpcServer) -> None:
    exporter = setup_tracing("test", "510000", "memory")
    assert exporter is not None
    exporter.clear()
    method = f"/{ECHO}/Echo"
    channel = instrumented_channel(server.address)
    try:
        call = channel.unary_unary(method, **_CODEC)
        assert call(b"traced", timeout=5) == b"traced"
    finally:
        channel.close()

    def spans_of(kind: SpanKind) -> list[Any]:
        return [s for s in exporter.get_finished_spans() if s.kind is kind and s.name == method]

    _wait_for(lambda: bool(spans_of(SpanKind.CLIENT)) and bool(spans_of(SpanKind.SERVER)))
    (client,) = spans_of(SpanKind.CLIENT)
    (server_span,) = spans_of(SpanKind.SERVER)
    assert server_span.context.trace_id == client.context.trace_id
    assert server_span.parent is not None and server_span.parent.span_id == client.context.span_id
    assert server_span.resource.attributes["lianxin.node"] == "510000"
    client_handled = _value(
        _metrics(server.metrics_port or 0)["lianxin_grpc_client_handled_total"],
        service=ECHO,
        method="Echo",
        code="OK",
    )
    assert client_handled >= 1
