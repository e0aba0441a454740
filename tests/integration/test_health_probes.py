"""Liveness and readiness of an api process apart: a database outage takes it out of service, never kills it.

``lianxin serve`` runs as its own process with its database behind a TCP proxy that the test cuts
(connections reset, new ones refused) and restores. The overall health name "" (what the liveness
probe asks) stays SERVING throughout; the business service's name (what readiness asks) follows
the database.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.faults.proxy import TcpProxy
from services.common.crypto import new_data_key
from tests.support.cli import closed_port
from tests.support.helpers import wait_until

VIDEO = "lianxin.video.v1.VideoService"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def through(proxy: TcpProxy, url: str) -> str:
    parts = urlsplit(url)
    netloc = f"{parts.username}@{proxy.address}" if parts.username else proxy.address
    return urlunsplit(parts._replace(netloc=netloc))


@pytest.fixture()
def api(postgres_url: str, tmp_path: Path) -> Iterator[tuple[str, TcpProxy]]:
    parts = urlsplit(postgres_url)
    proxy = TcpProxy(f"{parts.hostname}:{parts.port or 5432}").start()
    port = closed_port()
    env = {
        **os.environ,
        "LIANXIN_NODE": "511102",
        "LIANXIN_DATA_KEYS": f"probe:{new_data_key()}",  # lianxin serve refuses to start without
        "LIANXIN_DATABASE_URL": through(proxy, postgres_url),
        "LIANXIN_DATA_DIR": str(tmp_path),
        "LIANXIN_GRPC_PORT": str(port),
        "LIANXIN_METRICS_PORT": "0",
        "LIANXIN_READINESS_INTERVAL_S": "0.2",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "serve", "--service", "video"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        yield f"127.0.0.1:{port}", proxy
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=30)
        proxy.close()
        assert b"Traceback" not in stderr, stderr.decode()[-3000:]


def status(address: str, service: str) -> int | None:
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
        except grpc.RpcError:
            return None
        return int(reply.status)


def test_database_outage_fails_readiness_and_keeps_liveness(api: tuple[str, TcpProxy]) -> None:
    address, proxy = api
    wait_until(lambda: status(address, VIDEO) == SERVING, timeout=60, message="video-api ready")
    assert status(address, "") == SERVING

    proxy.cut()
    wait_until(lambda: status(address, VIDEO) == NOT_SERVING, timeout=30, message="readiness off without a database")
    assert status(address, "") == SERVING  # liveness: the kubelet does not restart the pod

    proxy.restore()
    wait_until(lambda: status(address, VIDEO) == SERVING, timeout=30, message="readiness back with the database")
    assert status(address, "") == SERVING
