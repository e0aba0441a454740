"""One node run as production runs it: an api and a worker process per service on PostgreSQL and RabbitMQ."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from lianxin.common.v1 import common_pb2
from lianxin.intake.v1 import intake_service_pb2 as intake_pb2
from lianxin.intake.v1 import intake_service_pb2_grpc as intake_grpc
from lianxin.routing.v1 import routing_service_pb2 as routing_pb2
from lianxin.routing.v1 import routing_service_pb2_grpc as routing_grpc

from services.federation import health_statuses
from services.routing.handlers import work_order_id_for

NODE = "511102"
SERVICE_NAMES = {
    "intake": "lianxin.intake.v1.IntakeService",
    "routing": "lianxin.routing.v1.RoutingService",
    "exchange": "lianxin.exchange.v1.ExchangeService",
    "video": "lianxin.video.v1.VideoService",
    "stats": "lianxin.stats.v1.StatsService",
}


def free_port() -> int:
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
            port = self.api_ports.setdefault(service, free_port())
            env["LIANXIN_GRPC_PORT"] = str(port)
        env["LIANXIN_METRICS_PORT"] = str(self.metrics_ports.setdefault(f"{service}-{kind}", free_port()))
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


def serving(node: ProductionNode, service: str) -> bool:
    name = SERVICE_NAMES[service]
    return health_statuses(node.address(service), [name])[name] == "SERVING"


def work_order_exists(routing: routing_grpc.RoutingServiceStub, case_id: str) -> bool:
    """Whether routing (at NODE) has made the case's work order: its handler ran."""
    try:
        routing.GetWorkOrder(routing_pb2.GetWorkOrderRequest(work_order_id=work_order_id_for(case_id, NODE)), timeout=5)
        return True
    except grpc.RpcError as error:
        if error.code() != grpc.StatusCode.NOT_FOUND:
            raise
        return False


def submit_numbered(stub: intake_grpc.IntakeServiceStub, i: int) -> str:
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
