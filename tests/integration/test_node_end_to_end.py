"""One node end to end over real gRPC: intake → CaseRegistered → routing work order → stats count.

Runs on SQLite and on the real PostgreSQL (one schema per service in one database).
"""

from __future__ import annotations

import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from lianxin.common.v1 import common_pb2
from lianxin.intake.v1 import intake_service_pb2_grpc as intake_grpc
from lianxin.routing.v1 import routing_service_pb2 as routing_pb2
from lianxin.routing.v1 import routing_service_pb2_grpc as routing_grpc
from lianxin.stats.v1 import stats_service_pb2 as stats_pb2
from lianxin.stats.v1 import stats_service_pb2_grpc as stats_grpc

from services.common.settings import Settings
from services.node import Node
from services.routing.handlers import work_order_id_for
from tests.support.helpers import wait_until
from tests.support.intake import submit_request

BUSINESS = [
    "lianxin.intake.v1.IntakeService",
    "lianxin.routing.v1.RoutingService",
    "lianxin.exchange.v1.ExchangeService",
    "lianxin.video.v1.VideoService",
    "lianxin.stats.v1.StatsService",
]


@pytest.fixture()
def node(database_url: str, tmp_path: Path) -> Iterator[Node]:
    url = None if database_url.startswith("sqlite") else database_url
    settings = Settings(node="511102", data_dir=tmp_path, database_url=url, relay_interval_s=0.05)
    started = Node(settings).start()
    yield started
    started.stop(grace=1.0)


@pytest.fixture()
def channel(node: Node) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(node.address) as ch:
        yield ch


def received(channel: grpc.Channel, region: str = "511102") -> stats_pb2.Metric:
    reply = stats_grpc.StatsServiceStub(channel).GetMetrics(
        stats_pb2.GetMetricsRequest(region_code=region, metrics=["received"], include_case_ids=True), timeout=5
    )
    metric: stats_pb2.Metric = reply.metrics[0]
    return metric


def test_submitted_case_reaches_routing_and_is_counted_by_stats(node: Node, channel: grpc.Channel) -> None:
    reply = intake_grpc.IntakeServiceStub(channel).SubmitCase(submit_request("call-0001"), timeout=5)
    case_id = reply.case.case_id
    assert reply.created
    assert case_id.startswith("511102-")
    assert reply.case.state == common_pb2.CASE_STATE_REGISTERED
    assert reply.tracking_code

    wait_until(lambda: received(channel).numerator == 1, timeout=10, message="stats to count the case")
    assert list(received(channel).case_ids) == [case_id]

    work_order = (
        routing_grpc.RoutingServiceStub(channel)
        .GetWorkOrder(routing_pb2.GetWorkOrderRequest(work_order_id=work_order_id_for(case_id, "511102")), timeout=5)
        .work_order
    )
    assert work_order.case_id == case_id
    assert work_order.state == common_pb2.CASE_STATE_ASSIGNED
    assert work_order.unit_id
    # Registered, accepted (受理) and assigned by the dispatch catalogue in one step at registration.
    assert [h.action for h in work_order.history] == ["register", "accept", "assign"]


def test_retried_submit_returns_the_same_case(node: Node, channel: grpc.Channel) -> None:
    stub = intake_grpc.IntakeServiceStub(channel)
    first = stub.SubmitCase(submit_request("call-0002"), timeout=5)
    again = stub.SubmitCase(submit_request("call-0002"), timeout=5)
    assert again.case.case_id == first.case.case_id
    assert not again.created


def test_concurrent_retries_make_one_case(node: Node, channel: grpc.Channel) -> None:
    stub = intake_grpc.IntakeServiceStub(channel)
    barrier = threading.Barrier(8)
    ids: list[str] = []
    errors: list[BaseException] = []

    def retry() -> None:
        try:
            barrier.wait(timeout=5)
            ids.append(stub.SubmitCase(submit_request("call-0003"), timeout=10).case.case_id)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=retry) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors
    assert len(set(ids)) == 1 and len(ids) == 8
    node.drain()
    node.drain()
    wait_until(lambda: received(channel).numerator == 1, timeout=10, message="exactly one counted case")


def test_bad_input_is_refused_with_the_field_and_stores_nothing(node: Node, channel: grpc.Channel) -> None:
    stub = intake_grpc.IntakeServiceStub(channel)
    with pytest.raises(grpc.RpcError) as caught:
        stub.SubmitCase(submit_request("call-0004", title="长" * 101), timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "title" in (caught.value.details() or "")
    with pytest.raises(grpc.RpcError) as caught:
        stub.SubmitCase(submit_request("call-0005", channel=common_pb2.CHANNEL_UNSPECIFIED), timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "channel" in (caught.value.details() or "")
    node.drain()
    assert received(channel).numerator == 0


def test_every_service_is_healthy_and_rpc_metrics_are_exposed(node: Node, channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for name in BUSINESS:
        status = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5).status
        assert status == health_pb2.HealthCheckResponse.SERVING, name
    intake_grpc.IntakeServiceStub(channel).SubmitCase(submit_request("call-0006"), timeout=5)
    text = urllib.request.urlopen(f"http://127.0.0.1:{node.metrics_port}/metrics", timeout=5).read().decode()
    assert 'lianxin_grpc_server_handled_total{code="OK",method="SubmitCase"' in text or (
        "lianxin_grpc_server_handled_total" in text and 'method="SubmitCase"' in text and 'code="OK"' in text
    )
    assert "lianxin_grpc_server_handling_seconds_bucket" in text
    assert 'lianxin_cases_received_total{category="环境保护",channel="hotline"}' in text
    assert "13812345678" not in text  # personal data never in metrics


def test_every_channel_and_category_series_exists_before_its_first_case(node: Node) -> None:
    # increase() over a series that appears with its first case misses that case: the counters start at 0.
    from services.intake.domain import CATEGORIES, CHANNELS

    text = urllib.request.urlopen(f"http://127.0.0.1:{node.metrics_port}/metrics", timeout=5).read().decode()
    for channel in CHANNELS:
        for category in (*CATEGORIES, "unclassified"):
            assert f'lianxin_cases_received_total{{category="{category}",channel="{channel}"}}' in text
