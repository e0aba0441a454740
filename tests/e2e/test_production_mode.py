"""Production mode: one node's five services as separate api and worker processes on the real
PostgreSQL and RabbitMQ. Workers are killed (-9) and restarted mid-flow; nothing is lost or doubled."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from lianxin.common.v1 import common_pb2
from lianxin.intake.v1 import intake_service_pb2 as intake_pb2
from lianxin.intake.v1 import intake_service_pb2_grpc as intake_grpc
from lianxin.routing.v1 import routing_service_pb2 as routing_pb2
from lianxin.routing.v1 import routing_service_pb2_grpc as routing_grpc
from lianxin.stats.v1 import stats_service_pb2 as stats_pb2
from lianxin.stats.v1 import stats_service_pb2_grpc as stats_grpc

from services.common.crypto import new_data_key
from services.common.settings import SERVICES
from services.federation import health_statuses
from services.routing.handlers import work_order_id_for
from tests.helpers import wait_until

NODE = "511102"
SERVICE_NAMES = {
    "intake": "lianxin.intake.v1.IntakeService",
    "routing": "lianxin.routing.v1.RoutingService",
    "exchange": "lianxin.exchange.v1.ExchangeService",
    "video": "lianxin.video.v1.VideoService",
    "stats": "lianxin.stats.v1.StatsService",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ProductionNode:
    env: dict[str, str]
    logs: Path
    api_ports: dict[str, int] = field(default_factory=dict)
    metrics_ports: dict[str, int] = field(default_factory=dict)  # by process name, e.g. "intake-worker"
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def spawn(self, kind: str, service: str) -> None:
        env = dict(self.env)
        if kind == "serve":
            port = self.api_ports.setdefault(service, _free_port())
            env["LIANXIN_GRPC_PORT"] = str(port)
        env["LIANXIN_METRICS_PORT"] = str(self.metrics_ports.setdefault(f"{service}-{kind}", _free_port()))
        self.spawn_process(f"{service}-{kind}", [kind, "--service", service], env)

    def spawn_process(self, name: str, args: list[str], env: dict[str, str] | None = None) -> None:
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - handed to the child
        self.processes[name] = subprocess.Popen(
            [sys.executable, "-m", "services.cli", *args],
            env=env if env is not None else dict(self.env),
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def kill(self, name: str) -> None:
        process = self.processes[name]
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)

    def address(self, service: str) -> str:
        return f"127.0.0.1:{self.api_ports[service]}"

    def print_tracebacks(self) -> None:
        """The end of every process log that holds a traceback (shown when the test fails)."""
        for log in sorted(self.logs.glob("*.log")):
            text = log.read_text(errors="replace")
            if "Traceback" in text:
                print(f"--- {log.name} ---\n{text[-3000:]}")

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _serving(node: ProductionNode, service: str) -> bool:
    name = SERVICE_NAMES[service]
    return health_statuses(node.address(service), [name])[name] == "SERVING"


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


def work_order_exists(routing: routing_grpc.RoutingServiceStub, case_id: str) -> bool:
    """Whether routing (at NODE) has made the case's work order: its handler ran."""
    try:
        routing.GetWorkOrder(routing_pb2.GetWorkOrderRequest(work_order_id=work_order_id_for(case_id, NODE)), timeout=5)
        return True
    except grpc.RpcError as error:
        if error.code() != grpc.StatusCode.NOT_FOUND:
            raise
        return False


def _submit(stub: intake_grpc.IntakeServiceStub, i: int) -> str:
    reply = stub.SubmitCase(
        intake_pb2.SubmitCaseRequest(
            channel=common_pb2.CHANNEL_WEB,
            channel_ref=f"prod-{i}",
            title=f"第{i}号 道路破损",
            body="乐山市市中区某路段路面破损严重，影响出行。",
            category="城乡建设",
            region_code=NODE,
            anonymous=True,
        ),
        timeout=10,
    )
    return str(reply.case.case_id)


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
