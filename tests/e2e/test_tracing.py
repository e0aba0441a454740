"""One case is one trace: county intake, city and province, exported over OTLP by three node processes.

The test starts a real OTLP receiver (an ``opentelemetry.proto`` TraceService gRPC server) and three
``lianxin node`` processes (市中区 → 乐山市 → 四川省) pointed at it with the standard
``OTEL_EXPORTER_OTLP_ENDPOINT``. A case submitted at the county must produce spans on all three nodes
under the SubmitCase trace id: the trace context travels inside the events, through the outbox,
the handlers and the replication up the tiers. The link's polling is not traced.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from lianxin.common.v1 import common_pb2
from lianxin.intake.v1 import intake_service_pb2 as intake_pb2
from lianxin.intake.v1 import intake_service_pb2_grpc as intake_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from services.federation import Federation
from tests.helpers import free_port_block, wait_until

TOPOLOGY = (("510000", None), ("511100", "510000"), ("511102", "511100"))
pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Span:
    node: str
    service: str
    name: str
    trace_id: str


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace receiver that keeps every span it is sent."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self._lock = threading.Lock()

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        received = []
        for resource_spans in request.resource_spans:
            attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    node, service = attributes.get("lianxin.node", ""), attributes.get("service.name", "")
                    received.append(Span(node, service, span.name, span.trace_id.hex()))
        with self._lock:
            self.spans.extend(received)
        return trace_service_pb2.ExportTraceServiceResponse()

    def snapshot(self) -> list[Span]:
        with self._lock:
            return list(self.spans)


@contextmanager
def otlp_receiver() -> Iterator[tuple[Receiver, int]]:
    """A real OTLP/gRPC receiver on a free loopback port: (its spans, the port)."""
    collector = Receiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield collector, port
    finally:
        server.stop(0)


@pytest.fixture(scope="module")
def receiver() -> Iterator[tuple[Receiver, int]]:
    with otlp_receiver() as started:
        yield started


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory, receiver: tuple[Receiver, int]) -> Iterator[Federation]:
    _, otlp_port = receiver
    base = free_port_block(2 * len(TOPOLOGY))
    fed = Federation(
        data_dir=Path(tmp_path_factory.mktemp("traced")),
        base_port=base,
        metrics_base_port=base + len(TOPOLOGY),
        topology=TOPOLOGY,
        with_national=False,
        extra_env={
            "LIANXIN_LOG_LEVEL": "WARNING",
            "LIANXIN_INTAKE_CLASSIFIER": "off",
            # The standard OpenTelemetry environment, as an operator sets it for a collector.
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{otlp_port}",
            "OTEL_EXPORTER_OTLP_INSECURE": "true",
            "OTEL_BSP_SCHEDULE_DELAY": "200",
        },
    )
    try:
        fed.start(ready_timeout_s=180)
        yield fed
    finally:
        fed.stop()


def submit(address: str) -> None:
    with grpc.insecure_channel(address) as channel:
        intake_grpc.IntakeServiceStub(channel).SubmitCase(
            intake_pb2.SubmitCaseRequest(
                channel=common_pb2.CHANNEL_WEB,
                channel_ref="traced-1",
                title="噪音扰民",
                body="乐山市市中区嘉州大道某小区门口夜间施工噪音扰民",
                region_code="511102",
                category="环境保护",
                anonymous=True,
            ),
            timeout=30,
        )


def test_one_case_is_one_trace_from_county_intake_to_province_statistics(
    federation: Federation, receiver: tuple[Receiver, int]
) -> None:
    collector, _ = receiver
    submit(federation.node("511102").address)

    def submitted() -> Span | None:
        return next(
            (s for s in collector.snapshot() if s.node == "511102" and s.name.endswith("IntakeService/SubmitCase")),
            None,
        )

    wait_until(submitted, timeout=60, message="the county's SubmitCase span at the receiver")
    root = submitted()
    assert root is not None

    def in_trace(node: str, fragment: str) -> bool:
        return any(s.node == node and fragment in s.name and s.trace_id == root.trace_id for s in collector.snapshot())

    # The city and the province store the replica, and the province's statistics fold it, in the same trace.
    wait_until(lambda: in_trace("511100", "exchange stores replica"), timeout=90, message="the city's replica span")
    wait_until(lambda: in_trace("510000", "exchange stores replica"), timeout=90, message="the province's replica")
    wait_until(lambda: in_trace("510000", "stats handles"), timeout=90, message="the province's statistics span")
    # The county's own routing handled the case in the trace too (its event through the outbox and bus).
    assert in_trace("511102", "routing handles")

    names = {s.name for s in collector.snapshot()}
    assert not any(name.endswith(("PushEvents", "PullDown", "AckDown", "Health/Check")) for name in names), names
