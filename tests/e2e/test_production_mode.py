"""Production mode: one node's five services as separate api and worker processes on the real
PostgreSQL and RabbitMQ. Workers are killed (-9) and restarted mid-flow; nothing is lost or doubled."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from lianxin.intake.v1 import intake_service_pb2_grpc as intake_grpc
from lianxin.routing.v1 import routing_service_pb2_grpc as routing_grpc
from lianxin.stats.v1 import stats_service_pb2 as stats_pb2
from lianxin.stats.v1 import stats_service_pb2_grpc as stats_grpc

from services.common.crypto import new_data_key
from services.common.settings import SERVICES
from tests.support.helpers import wait_until
from tests.support.production import NODE, ProductionNode, work_order_exists
from tests.support.production import serving as _serving
from tests.support.production import submit_numbered as _submit


@pytest.fixture()
def production_node(postgres_url: str, amqp_uri: str, tmp_path: Path) -> Iterator[ProductionNode]:
    env = {
        **os.environ,
        "LIANXIN_NODE": NODE,
        "LIANXIN_DATA_KEYS": f"e2e:{new_data_key()}",  # production processes refuse to start without
        "LIANXIN_DATABASE_URL": postgres_url,
        "LIANXIN_AMQP_URI": amqp_uri,
        "LIANXIN_DATA_DIR": str(tmp_path / "data"),
        "LIANXIN_METRICS_PORT": "0",
        "LIANXIN_LOG_LEVEL": "WARNING",
        "LIANXIN_RELAY_INTERVAL_S": "0.1",
    }
    # Migrations are their own step in production (a Kubernetes Job).
    subprocess.run([sys.executable, "-m", "services.cli", "migrate"], env=env, check=True, timeout=120)
    node = ProductionNode(env=env, logs=tmp_path)
    try:
        # Consumers' queues must exist before anything is published: workers first.
        for service in SERVICES:
            node.spawn("worker", service)
        for service in SERVICES:
            node.spawn("serve", service)
        for service in SERVICES:
            wait_until(lambda s=service: _serving(node, s), timeout=60, message=f"{service}-api SERVING")  # type: ignore[misc]
        yield node
    finally:
        node.stop()
        node.print_tracebacks()


def test_case_flows_through_api_and_worker_processes_and_survives_worker_kills(
    production_node: ProductionNode,
) -> None:
    node = production_node
    with (
        grpc.insecure_channel(node.address("intake")) as intake_ch,
        grpc.insecure_channel(node.address("routing")) as routing_ch,
        grpc.insecure_channel(node.address("stats")) as stats_ch,
    ):
        intake = intake_grpc.IntakeServiceStub(intake_ch)
        routing = routing_grpc.RoutingServiceStub(routing_ch)
        stats = stats_grpc.StatsServiceStub(stats_ch)

        def received() -> stats_pb2.Metric:
            reply = stats.GetMetrics(stats_pb2.GetMetricsRequest(region_code=NODE, include_case_ids=True), timeout=5)
            metric: stats_pb2.Metric = reply.metrics[0]
            return metric

        def has_work_order(case_id: str) -> bool:
            return work_order_exists(routing, case_id)

        case_ids = [_submit(intake, i) for i in range(10)]
        wait_until(lambda: received().numerator == 10, timeout=60, message="first 10 cases counted")

        # Kill the consumers and the producer's relay mid-flow; cases keep arriving at the api.
        node.kill("stats-worker")
        node.kill("routing-worker")
        case_ids += [_submit(intake, i) for i in range(10, 20)]
        node.kill("intake-worker")
        case_ids += [_submit(intake, i) for i in range(20, 30)]
        assert received().numerator == 10  # with its worker dead, stats has not seen the new cases
        for service in ("intake", "routing", "stats"):
            node.spawn("worker", service)

        wait_until(lambda: received().numerator == 30, timeout=90, message="all 30 cases counted after restarts")
        wait_until(lambda: all(has_work_order(c) for c in case_ids), timeout=60, message="a work order per case")
        metric = received()
        assert metric.numerator == 30  # nothing doubled
        assert sorted(metric.case_ids) == sorted(case_ids)  # nothing lost
        assert len(set(case_ids)) == 30
