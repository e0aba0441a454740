"""One case is one trace: county intake, city and province, exported over OTLP by three node processes.

The test starts a real OTLP receiver (an ``opentelemetry.proto`` TraceService gRPC server) and three
``lianxin node`` processes (市中区 → 乐山市 → 四川省) pointed at it with the standard
``OTEL_EXPORTER_OTLP_ENDPOINT``. A case submitted at the county must produce spans on all three nodes
under the SubmitCase trace id: the trace context travels inside the events, through the outbox,
the handlers and the replication up the tiers. The link's polling is not traced.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from lianxin.common.v1 import common_pb2
from lianxin.intake.v1 import intake_service_pb2 as intake_pb2
from lianxin.intake.v1 import intake_service_pb2_grpc as intake_grpc

from services.federation import Federation
from tests.support.helpers import free_port_block, wait_until
from tests.support.tracing import Receiver, Span, otlp_receiver

TOPOLOGY = (("510000", None), ("511100", "510000"), ("511102", "511100"))
pytestmark = pytest.mark.slow


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
