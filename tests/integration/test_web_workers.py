"""Several gateway processes on one port (LIANXIN_WEB_WORKERS) serve an operator as one gateway would.

A real node and ``lianxin web`` with two workers: the clerk signs in over one connection, and every
later connection, whichever worker accepts it, serves the signed-in inbox (the workers sign and check
cookies with the one session key); the gateway really runs as two worker processes.
"""

from __future__ import annotations

import http.client
import os
import re
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.common.settings import Settings
from services.federation import wait_http
from services.node import Node
from services.web.accounts import Account, AccountStore, hash_password
from tests.support.helpers import free_port_block, wait_until

PASSWORD = "workers-test-password"


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        found += [int(child) for child in task.read_text().split()]
    return found


def _workers(pid: int) -> list[int]:
    """The gateway's uvicorn workers: its children that run the web app (not multiprocessing's helpers)."""
    return [c for c in _children(pid) if b"resource_tracker" not in Path(f"/proc/{c}/cmdline").read_bytes()]


@pytest.fixture()
def gateway(tmp_path: Path) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    node = Node(Settings(node="511102", data_dir=tmp_path)).start()
    AccountStore(tmp_path / "web-accounts.json").put(
        [Account("clerk-w", hash_password(PASSWORD), "511102", ("clerk",), "", "")]
    )
    port = free_port_block(1, start=24500)
    env = {
        **os.environ,
        "LIANXIN_NODE": "511102",
        "LIANXIN_DATA_DIR": str(tmp_path),
        "LIANXIN_WEB_PORT": str(port),
        "LIANXIN_WEB_GRPC": node.address,
        "LIANXIN_WEB_WORKERS": "2",
    }
    process = subprocess.Popen([sys.executable, "-m", "services.cli", "web"], env=env, stdout=subprocess.DEVNULL)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", 60, process)
        yield port, process
    finally:
        process.terminate()
        process.wait(20)
        node.stop(grace=1.0)


def _sign_in(port: int) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/console/login")
    reply = conn.getresponse()
    token = re.search(r'name="csrf" value="([^"]+)"', reply.read().decode())
    assert token is not None
    cookies = dict(c.split(";", 1)[0].split("=", 1) for c in reply.headers.get_all("Set-Cookie") or [])
    form = urllib.parse.urlencode({"csrf": token.group(1), "username": "clerk-w", "password": PASSWORD})
    jar = "; ".join(f"{k}={v}" for k, v in cookies.items())
    conn.request("POST", "/console/login", body=form, headers={"Cookie": jar, **_FORM})
    reply = conn.getresponse()
    reply.read()
    assert reply.status == 303 and reply.headers["Location"] == "/console"
    cookies.update(dict(c.split(";", 1)[0].split("=", 1) for c in reply.headers.get_all("Set-Cookie") or []))
    conn.close()
    return "; ".join(f"{k}={v}" for k, v in cookies.items())


_FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def test_two_gateway_workers_share_the_port_and_the_operator_s_session(
    gateway: tuple[int, subprocess.Popen[bytes]],
) -> None:
    port, process = gateway
    wait_until(lambda: len(_workers(process.pid)) == 2, timeout=30, message="two gateway workers")
    cookie = _sign_in(port)
    statuses = []
    for _ in range(12):  # a new connection each time: the kernel hands each to either worker
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/console", headers={"Cookie": cookie})
        reply = conn.getresponse()
        body = reply.read().decode()
        statuses.append((reply.status, "待办工单" in body))
        conn.close()
    assert statuses == [(200, True)] * 12
