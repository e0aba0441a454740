"""The gateway's server time starts when the request reached it, not when its page began (issue 17).

uvicorn with the gateway's HTTP protocol (services/web/timing.py) and a two-route ASGI app: a client
pipelines a slow request and a fast one on one connection, so the fast one waits in the gateway
while the slow one is served. Its server time must include that wait, as a page's Server-Timing does.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import uvicorn

from services.web.timing import TimedHttpToolsProtocol, received_at
from tests.support.helpers import wait_until

SLOW_S = 0.3


async def _app(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
    if scope["type"] != "http":
        return
    started = received_at(scope)  # as the gateway's page wrapper starts its clock
    if scope["path"] == "/slow":
        await asyncio.sleep(SLOW_S)  # the page's own work
    waited = time.perf_counter() - started
    body = f"{waited:.4f}".encode()
    headers = [(b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@pytest.fixture(params=["timed", "plain"])
def server(request: pytest.FixtureRequest) -> Iterator[tuple[int, str]]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    http: Any = TimedHttpToolsProtocol if request.param == "timed" else "httptools"
    config = uvicorn.Config(_app, log_level="warning", access_log=False, lifespan="off", http=http)
    instance = uvicorn.Server(config)
    thread = threading.Thread(target=instance.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_until(lambda: instance.started, timeout=20, message="uvicorn started")
        yield sock.getsockname()[1], request.param
    finally:
        instance.should_exit = True
        thread.join(10)


def _pipelined(port: int) -> list[float]:
    """Both requests in one write; the bodies of both answers, in order."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\nGET /fast HTTP/1.1\r\nHost: t\r\n\r\n")
        data = b""
        while True:
            chunk = conn.recv(4096)
            if not chunk:
                break
            data += chunk
            answers = data.split(b"HTTP/1.1 ")[1:]
            # Each body is one number of six characters (under ten seconds, four decimals).
            if len(answers) == 2 and all(len(a.partition(b"\r\n\r\n")[2]) >= 6 for a in answers):
                break
    return [float(a.split(b"\r\n\r\n", 1)[1]) for a in data.split(b"HTTP/1.1 ")[1:]]


def test_a_request_waiting_in_the_gateway_counts_its_wait_as_server_time(server: tuple[int, str]) -> None:
    port, kind = server
    slow, fast = _pipelined(port)
    assert slow >= SLOW_S * 0.9
    if kind == "timed":
        assert fast >= SLOW_S * 0.9  # it arrived with the slow one and waited for it
    else:
        assert fast < SLOW_S / 3  # without the protocol a page's clock starts only when the page runs
