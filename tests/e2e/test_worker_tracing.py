"""Tracing in the production worker (nameko under eventlet): its spans join the request's trace, and an
unreachable collector never stops it.

Real processes on the real PostgreSQL and RabbitMQ: ``lianxin serve`` for intake and routing,
``lianxin worker`` for intake (the outbox relay) and routing (the handler of intake's events), all
pointed at a real OTLP receiver with the standard ``OTEL_EXPORTER_OTLP_ENDPOINT``. A case submitted at
the intake api must give a ``routing handles intake.…`` span from the routing worker in the trace of
its ``SubmitCase``. Then the workers restart against a collector that accepts connections and never
answers (an export waits ``OTEL_EXPORTER_OTLP_TIMEOUT``, here 10 minutes): the worker exports on a
real OS thread, so while that export hangs it still relays and handles every new case.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from lianxin.intake.v1 import intake_service_pb2_grpc as intake_grpc
from lianxin.routing.v1 import routing_service_pb2_grpc as routing_grpc

from services.common.crypto import new_data_key
from tests.support.helpers import stop_process, wait_until
from tests.support.production import NODE, ProductionNode, work_order_exists
from tests.support.production import serving as _serving
from tests.support.production import submit_numbered as _submit
from tests.support.tracing import Receiver, otlp_receiver

pytestmark = pytest.mark.slow


class SilentCollector:
    """A TCP listener that accepts every connection and never says a word: an export to it hangs."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._held: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self._held.append(connection)

    def connections(self) -> int:
        with self._lock:
            return len(self._held)

    def close(self) -> None:
        self._listener.close()
        with self._lock:
            for connection in self._held:
                connection.close()


@pytest.fixture()
def receiver() -> Iterator[tuple[Receiver, int]]:
    with otlp_receiver() as started:
        yield started


@pytest.fixture()
def node(postgres_url: str, amqp_uri: str, tmp_path: Path, receiver: tuple[Receiver, int]) -> Iterator[ProductionNode]:
    _, otlp_port = receiver
    env = {
        **os.environ,
        "LIANXIN_NODE": NODE,
        "LIANXIN_DATA_KEYS": f"e2e:{new_data_key()}",
        "LIANXIN_DATABASE_URL": postgres_url,
        "LIANXIN_AMQP_URI": amqp_uri,
        "LIANXIN_DATA_DIR": str(tmp_path / "data"),
        "LIANXIN_LOG_LEVEL": "WARNING",
        "LIANXIN_RELAY_INTERVAL_S": "0.1",
        "LIANXIN_INTAKE_CLASSIFIER": "off",
        # The standard OpenTelemetry environment, as an operator sets it for a collector.
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{otlp_port}",
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_BSP_SCHEDULE_DELAY": "200",
    }
    subprocess.run([sys.executable, "-m", "services.cli", "migrate"], env=env, check=True, timeout=180)
    production = ProductionNode(env=env, logs=tmp_path)
    try:
        for service in ("intake", "routing"):
            production.spawn("worker", service)
        for service in ("intake", "routing"):
            production.spawn("serve", service)
        for service in ("intake", "routing"):
            wait_until(lambda s=service: _serving(production, s), timeout=120, message=f"{service}-api SERVING")  # type: ignore[misc]
        yield production
    finally:
        production.stop()
        production.print_tracebacks()


def restart_workers(node: ProductionNode, **env: str) -> None:
    for name in ("intake-worker", "routing-worker"):
        stop_process(node.processes.pop(name), timeout=30)
    node.env.update(env)
    for service in ("intake", "routing"):
        node.spawn("worker", service)


def test_worker_spans_join_the_request_trace_and_a_silent_collector_never_stops_the_worker(
    node: ProductionNode, receiver: tuple[Receiver, int]
) -> None:
    collector, _ = receiver
    with (
        grpc.insecure_channel(node.address("intake")) as intake_channel,
        grpc.insecure_channel(node.address("routing")) as routing_channel,
    ):
        intake = intake_grpc.IntakeServiceStub(intake_channel)
        routing = routing_grpc.RoutingServiceStub(routing_channel)

        def has_work_order(case_id: str) -> bool:
            return work_order_exists(routing, case_id)

        # 1. The routing worker's handler span is in the SubmitCase trace (api → outbox → broker → worker).
        _submit(intake, 1)

        def submit_trace() -> str | None:
            return next(
                (
                    s.trace_id
                    for s in collector.snapshot()
                    if s.service == "lianxin-intake-api" and s.name.endswith("IntakeService/SubmitCase")
                ),
                None,
            )

        wait_until(submit_trace, timeout=60, message="the intake api's SubmitCase span at the receiver")
        trace_id = submit_trace()

        def handled_in_trace() -> bool:
            return any(
                s.service == "lianxin-routing-worker"
                and s.name.startswith("routing handles")
                and s.trace_id == trace_id
                for s in collector.snapshot()
            )

        wait_until(handled_in_trace, timeout=120, message="the routing worker's handler span in the SubmitCase trace")

        # 2. A collector that never answers: the workers' exports hang, the workers do not.
        silent = SilentCollector()
        try:
            restart_workers(
                node,
                OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{silent.port}",
                OTEL_EXPORTER_OTLP_TIMEOUT="600",
            )
            first = _submit(intake, 2)
            wait_until(lambda: has_work_order(first), timeout=120, message="the restarted workers handle a case")
            # Its handler span is being exported now: the worker's connection to the collector is open.
            wait_until(lambda: silent.connections() > 0, timeout=60, message="an export to the silent collector")
            later = [_submit(intake, n) for n in range(3, 6)]
            wait_until(
                lambda: all(has_work_order(c) for c in later),
                timeout=90,
                message="cases relayed and handled while the export hangs",
            )
            # The worker's own /metrics (a thread of the same process) answers too.
            port = node.metrics_ports["routing-worker"]
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as page:
                assert b"lianxin_" in page.read()
        finally:
            silent.close()
