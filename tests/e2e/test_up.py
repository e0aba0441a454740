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
from tests.support.cli import lianxin, one_error_line
from tests.support.helpers import free_port_block, wait_until


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


SMALL_TREE = Path(__file__).parents[1] / "fixtures" / "topology_small.yaml"


def test_up_with_a_topology_runs_a_city_and_its_counties_in_one_host_process(tmp_path: Path) -> None:
    """`lianxin up --topology FILE`: the province alone, 乐山市 and two counties in one host process;
    a county's case reaches the province across the two hosts; Ctrl-C stops every process."""
    import os
    import subprocess
    import time

    import grpc
    from lianxin.exchange.v1 import exchange_service_pb2 as exchange_pb2
    from lianxin.exchange.v1 import exchange_service_pb2_grpc as exchange_grpc
    from lianxin.intake.v1 import intake_service_pb2_grpc as intake_grpc

    from bench.harness.workload import Submissions
    from tests.support.cli import LIANXIN, REPO

    base = free_port_block(10)
    up = subprocess.Popen(
        [*LIANXIN, "up", "--topology", str(SMALL_TREE), "--data-dir", str(tmp_path), "--base-port", str(base),
         "--metrics-port", str(base + 6), "--ready-timeout", "240"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "LIANXIN_INTAKE_CLASSIFIER": "off"},
    )  # fmt: skip
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(up.stdout or []), daemon=True)
    reader.start()
    try:
        wait_until(lambda: any("all nodes SERVING" in line for line in lines) or up.poll() is not None, timeout=300)
        assert up.poll() is None, (lines, up.stderr.read() if up.stderr else "")
        text = "".join(lines)
        assert "starting 4 nodes" in text and "(host 1," in text and f"511111 SERVING on 127.0.0.1:{base + 3}" in text
        # Two host processes and the simulator: not one process per node.
        children = subprocess.run(["pgrep", "-P", str(up.pid)], capture_output=True, text=True).stdout.split()
        assert len(children) == 3
        with grpc.insecure_channel(f"127.0.0.1:{base + 2}") as county:
            request = Submissions("511102").request(0, 0)
            case_id = intake_grpc.IntakeServiceStub(county).SubmitCase(request, timeout=30).case.case_id
        with grpc.insecure_channel(f"127.0.0.1:{base}") as province:
            stub = exchange_grpc.ExchangeServiceStub(province)
            at_province = exchange_pb2.ListReplicasRequest(case_id=case_id, max_items=0)
            wait_until(lambda: stub.ListReplicas(at_province, timeout=10).count > 0, timeout=120)
        up.send_signal(signal.SIGINT)
        assert up.wait(timeout=60) == 0
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(os.path.exists(f"/proc/{pid}") for pid in children):
            time.sleep(0.2)  # the hosts exiting, polled with a deadline
        assert not [pid for pid in children if os.path.exists(f"/proc/{pid}")]
        assert (tmp_path / "topology.yaml").exists() and (tmp_path / "511111" / "intake.db").exists()
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
