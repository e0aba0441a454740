"""``lianxin up`` as a person runs it: it refuses ports that are taken, says how far starting got, gives
up after ``--ready-timeout`` with one line, and keeps its nodes running (a node that dies is started again)."""

from __future__ import annotations

import signal
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.federation import BUSINESS_SERVICES, Federation, health_statuses, restart_delay
from tests.helpers import free_port_block, wait_until
from tests.unit.test_cli import lianxin, one_error_line


def test_up_refuses_to_start_when_one_of_its_ports_is_taken(tmp_path: Path) -> None:
    base = free_port_block(20)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", base + 2))  # 511102's gRPC port, as another federation would hold it
        squatter.listen()
        result = lianxin(
            "up", "--data-dir", str(tmp_path), "--base-port", str(base), "--metrics-port", str(base + 10),
            "--web-port", "0",
        )  # fmt: skip
    assert result.returncode == 4
    line = one_error_line(result)
    assert line.startswith("lianxin: UNAVAILABLE: port ") and f"{base + 2} (node 511102 gRPC)" in line
    assert "SERVING" not in result.stdout and not (tmp_path / "510000").exists()


def test_up_gives_up_after_the_ready_timeout_with_one_line(tmp_path: Path) -> None:
    base = free_port_block(20)
    result = lianxin(
        "up", "--data-dir", str(tmp_path), "--base-port", str(base), "--metrics-port", str(base + 10),
        "--web-port", "0", "--ready-timeout", "0.01",
    )  # fmt: skip
    assert result.returncode == 4
    assert "--ready-timeout" in one_error_line(result)


def test_restart_backoff_doubles_up_to_a_minute() -> None:
    assert [restart_delay(n) for n in (1, 2, 3, 4, 7, 20)] == [1.0, 2.0, 4.0, 8.0, 60.0, 60.0]


@pytest.fixture()
def one_node(tmp_path: Path) -> Iterator[Federation]:
    base = free_port_block(3)
    federation = Federation(
        data_dir=tmp_path,
        base_port=base,
        metrics_base_port=base + 1,
        web_base_port=base + 2,
        topology=(("511102", None),),
        with_national=False,
        extra_env={"LIANXIN_LOG_LEVEL": "WARNING", "LIANXIN_INTAKE_CLASSIFIER": "off"},
    )
    try:
        yield federation
    finally:
        federation.stop()


def test_a_node_or_gateway_that_dies_is_started_again_and_the_event_is_reported(one_node: Federation) -> None:
    progress: list[str] = []
    one_node.start(ready_timeout_s=180, progress=progress.append)
    node = one_node.node("511102")
    assert progress and progress[-1].startswith(f"  511102 SERVING on {node.address}")

    reports: list[str] = []
    stop = threading.Event()
    supervisor = threading.Thread(target=one_node.supervise, args=(reports.append, stop), daemon=True)
    supervisor.start()
    try:
        first = node.process
        assert first is not None
        first.send_signal(signal.SIGKILL)
        wait_until(lambda: any("restarted" in line for line in reports), timeout=60, message="the node restarted")
        assert reports[0] == "node 511102 exited with -9; restarting in 1 s"
        assert node.process is not first
        serving = lambda: set(health_statuses(node.address, BUSINESS_SERVICES).values()) == {"SERVING"}  # noqa: E731
        wait_until(serving, timeout=180, message="the restarted node SERVING")

        gateway = node.web
        assert gateway is not None
        gateway.send_signal(signal.SIGKILL)
        wait_until(
            lambda: "web gateway 511102 restarted (restart 1)" in reports, timeout=60, message="the gateway restarted"
        )
        assert node.web is not gateway
    finally:
        stop.set()
        supervisor.join(timeout=10)
