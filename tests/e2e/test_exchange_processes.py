"""Exchange between real node processes on loopback: a kill -9 mid-catch-up loses and doubles nothing."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from lianxin.common.v1 import common_pb2
from lianxin.exchange.v1 import exchange_service_pb2 as exchange_pb2
from lianxin.exchange.v1 import exchange_service_pb2_grpc as exchange_grpc
from lianxin.intake.v1 import intake_service_pb2 as intake_pb2
from lianxin.intake.v1 import intake_service_pb2_grpc as intake_grpc

from services.federation import wait_serving
from tests.support.helpers import wait_until


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proc:
    def __init__(self, code: str, data_dir: Path, port: int, parent: str = "") -> None:
        self.code, self.data_dir, self.port, self.parent = code, data_dir, port, parent
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> Proc:
        env = {
            **os.environ,
            "LIANXIN_NODE": self.code,
            "LIANXIN_DATA_DIR": str(self.data_dir),
            "LIANXIN_GRPC_PORT": str(self.port),
            "LIANXIN_METRICS_PORT": "0",
            "LIANXIN_EXCHANGE_BATCH": "7",  # many small batches, so the kill lands between or inside them
            "LIANXIN_LOG_LEVEL": "WARNING",
        }
        if self.parent:
            env["LIANXIN_PARENT"] = self.parent
        self.process = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "node"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_serving(self.address, 60, self.process)
        return self

    def kill9(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


@pytest.fixture()
def procs() -> Iterator[list[Proc]]:
    running: list[Proc] = []
    yield running
    for proc in reversed(running):
        proc.stop()


def phone_for(ref: str) -> str:
    """One citizen per request: intake limits how often one submitter may write."""
    return f"139{int.from_bytes(ref.encode()[-6:].rjust(6, b'0'), 'big') % 100_000_000:08d}"


def submit(address: str, ref: str) -> str:
    with grpc.insecure_channel(address) as channel:
        reply = intake_grpc.IntakeServiceStub(channel).SubmitCase(
            intake_pb2.SubmitCaseRequest(
                channel=common_pb2.CHANNEL_HOTLINE,
                channel_ref=ref,
                title="路灯不亮",
                body="乐山市市中区某路段路灯连续一周不亮，夜间出行不便。",
                category="城乡建设",
                region_code="511102",
                hotline_operator_id="op-001",
                complainant=common_pb2.Person(name="李四", phone=phone_for(ref)),
            ),
            timeout=10,
        )
    case_id: str = reply.case.case_id
    return case_id


def holdings(address: str) -> exchange_pb2.ListReplicasResponse:
    with grpc.insecure_channel(address) as channel:
        try:
            reply: exchange_pb2.ListReplicasResponse = exchange_grpc.ExchangeServiceStub(channel).ListReplicas(
                exchange_pb2.ListReplicasRequest(subtree_node="511102"), timeout=5
            )
        except grpc.RpcError:
            return exchange_pb2.ListReplicasResponse(count=-1)
    return reply


def test_kill_9_of_the_parent_mid_catch_up_loses_and_doubles_nothing(tmp_path: Path, procs: list[Proc]) -> None:
    city = Proc("511100", tmp_path, free_port())
    county = Proc("511102", tmp_path, free_port(), parent=city.address)
    procs.extend([county, city])
    county.start()  # the parent is not there yet: the county works alone and queues
    cases = [submit(county.address, f"call-k-{i}") for i in range(40)]
    wait_until(lambda: holdings(county.address).count >= 2 * len(cases), 30, "the county's own log")

    city.start()
    wait_until(lambda: holdings(city.address).count > 0, 30, "catch-up to begin")
    city.kill9()  # mid catch-up: some batches stored, the ack of the last one possibly lost
    cases += [submit(county.address, f"call-k-after-{i}") for i in range(5)]
    city.start()

    wait_until(
        lambda: holdings(city.address).digest == holdings(county.address).digest, 60, "convergence after kill -9"
    )
    final = holdings(city.address)
    assert final.count >= 2 * len(cases)
    with grpc.insecure_channel(city.address) as channel:
        held = exchange_grpc.ExchangeServiceStub(channel).ListReplicas(
            exchange_pb2.ListReplicasRequest(subtree_node="511102", max_items=100_000), timeout=5
        )
    assert {e.case_id for e in held.entries} == set(cases)
    # Nothing doubled: the city numbered each case's events on its own up-log 1..n, once each.
    by_case: dict[str, list[int]] = {}
    for entry in held.entries:
        by_case.setdefault(entry.case_id, []).append(entry.case_sequence)
    assert all(sorted(numbers) == list(range(1, len(numbers) + 1)) for numbers in by_case.values())
    assert len({e.event_id for e in held.entries}) == final.count
