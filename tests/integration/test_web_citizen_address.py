"""Citizens behind one web gateway each get their own rate limit at the node, and nobody can fake one.

A real node (token security on, 3 public calls a minute per citizen) and a real gateway (uvicorn on
a real port). The gateway names each citizen's address to the node in metadata signed with the
node's token key; X-Forwarded-For counts only from a configured proxy.
"""

from __future__ import annotations

import http.cookiejar
import re
import socket
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from lianxin.intake.v1 import intake_service_pb2 as intake_pb2
from lianxin.intake.v1 import intake_service_pb2_grpc as intake_grpc

from services.common.security import CITIZEN_ADDRESS_METADATA, citizen_address_metadata, trusted_citizen_address
from services.common.settings import Settings
from services.node import Node
from services.web.forwarding import citizen_address, parse_proxies
from tests.support.helpers import wait_until

KEY = "citizen-address-test-key"
RATE = 3


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    settings = Settings(
        node="511102",
        data_dir=tmp_path_factory.mktemp("node"),
        auth=True,
        token_key=KEY,
        citizen_rate_per_min=RATE,
        public_port=0,
    )
    started = Node(settings).start()
    yield started
    started.stop(grace=1.0)


@dataclass
class Gateway:
    url: str
    server: object


def _gateway(node: Node, data_dir: Path, trusted_proxies: str, *, grpc: str = "", **web_options: Any) -> Iterator[str]:
    import uvicorn

    from services.web.app import build_app, build_gateway
    from services.web.config import WebSettings

    settings = Settings(node="511102", data_dir=data_dir, auth=True, token_key=KEY)
    web = WebSettings(grpc=grpc or node.address, trusted_proxies=trusted_proxies, **web_options)
    app = build_app(build_gateway(settings, web))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", proxy_headers=False, lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    wait_until(lambda: server.started, timeout=20, message="gateway started")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture()
def behind_proxy(node: Node, tmp_path: Path) -> Iterator[str]:
    """A gateway behind a proxy on 127.0.0.1 (the test itself plays the ingress)."""
    yield from _gateway(node, tmp_path, "127.0.0.1")


@pytest.fixture()
def facing_citizens(node: Node, tmp_path: Path) -> Iterator[str]:
    """A gateway that trusts no proxy: whatever X-Forwarded-For a visitor sends is ignored."""
    yield from _gateway(node, tmp_path, "")


@pytest.fixture()
def on_the_public_port(node: Node, tmp_path: Path) -> Iterator[str]:
    """A gateway whose node port leads nowhere: its citizens' calls can only go to the public port."""
    public = f"127.0.0.1:{node.public_port}"
    yield from _gateway(node, tmp_path, "127.0.0.1", grpc="127.0.0.1:9", public_grpc=public)


def track_statuses(base: str, times: int, forwarded_for: str | None) -> list[int]:
    """One citizen's browser (own cookies) asking for progress ``times`` times with a wrong code."""
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    with opener.open(f"{base}/track", timeout=10) as reply:
        csrf = re.search(r'name="csrf" value="([^"]+)"', reply.read().decode()).group(1)  # type: ignore[union-attr]
    statuses = []
    for _ in range(times):
        data = urllib.parse.urlencode({"csrf": csrf, "tracking_code": "LX00000000", "phone_last4": "1234"}).encode()
        request = urllib.request.Request(f"{base}/track", data=data, method="POST")
        if forwarded_for:
            request.add_header("X-Forwarded-For", forwarded_for)
        try:
            with opener.open(request, timeout=10) as reply:
                statuses.append(reply.status)
        except urllib.error.HTTPError as error:
            statuses.append(error.code)
    return statuses


def test_two_citizens_behind_one_gateway_have_separate_limits(behind_proxy: str) -> None:
    first = track_statuses(behind_proxy, RATE + 1, "203.0.113.7")
    assert first[:RATE] == [200] * RATE and first[-1] == 429  # the 4th within the minute: 请求过于频繁
    # Another citizen through the same gateway (and the same proxy) still has the whole budget.
    assert track_statuses(behind_proxy, RATE, "198.51.100.23") == [200] * RATE


def test_a_citizen_cannot_pick_a_fresh_budget_with_a_forged_header(facing_citizens: str) -> None:
    # Not behind a trusted proxy: every visitor here is 127.0.0.1, whatever header it sends.
    assert track_statuses(facing_citizens, RATE, "192.0.2.1")[:RATE].count(429) == 0
    assert track_statuses(facing_citizens, 1, "192.0.2.99") == [429]


def test_the_portal_sends_citizens_calls_to_the_nodes_public_port(on_the_public_port: str) -> None:
    # Answered (a wrong code: the form again), and the per-citizen limit still counts there.
    statuses = track_statuses(on_the_public_port, RATE + 1, "203.0.113.80")
    assert statuses[:RATE] == [200] * RATE and statuses[-1] == 429


def test_the_node_believes_only_the_address_a_gateway_signed(node: Node) -> None:
    with grpc.insecure_channel(node.address) as channel:
        stub = intake_grpc.IntakeServiceStub(channel)
        request = intake_pb2.TrackCaseRequest(tracking_code="LX00000000", phone_last4="1234")

        def codes(metadata: tuple[tuple[str, str], ...], times: int) -> list[grpc.StatusCode]:
            out = []
            for _ in range(times):
                try:
                    stub.TrackCase(request, timeout=5, metadata=metadata)
                    out.append(grpc.StatusCode.OK)
                except grpc.RpcError as error:
                    out.append(error.code())
            return out

        signed = (citizen_address_metadata(KEY.encode(), "203.0.113.50"),)
        assert grpc.StatusCode.RESOURCE_EXHAUSTED not in codes(signed, RATE)
        assert codes(signed, 1) == [grpc.StatusCode.RESOURCE_EXHAUSTED]
        # Signed with another key, or with the address changed after signing: the caller's own address counts.
        forged = (citizen_address_metadata(b"not-the-node-key", "203.0.113.51"),)
        altered = ((CITIZEN_ADDRESS_METADATA, signed[0][1].replace("203.0.113.50", "203.0.113.52")),)
        direct = codes((), RATE) + codes(forged, 1) + codes(altered, 1)
        assert direct[:RATE].count(grpc.StatusCode.RESOURCE_EXHAUSTED) == 0
        assert direct[RATE:] == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 2


def test_signed_addresses_expire_and_need_the_key() -> None:
    name, value = citizen_address_metadata(b"k", "203.0.113.9", now=1000.0)
    assert name == CITIZEN_ADDRESS_METADATA
    assert trusted_citizen_address(b"k", value, now=1000.0) == "203.0.113.9"
    assert trusted_citizen_address(b"k", value, now=1000.0 + 600) is None
    assert trusted_citizen_address(None, value, now=1000.0) is None
    assert trusted_citizen_address(b"k", "203.0.113.9", now=1000.0) is None


def test_x_forwarded_for_counts_only_from_a_trusted_proxy() -> None:
    proxies = parse_proxies("10.0.0.0/8, 127.0.0.1")
    assert citizen_address("10.1.2.3", ["203.0.113.7"], proxies) == "203.0.113.7"
    # The client's own X-Forwarded-For entries come first; the proxy appends the real one at the right.
    assert citizen_address("10.1.2.3", ["1.1.1.1, 203.0.113.7"], proxies) == "203.0.113.7"
    assert citizen_address("10.1.2.3", ["203.0.113.7, 10.9.9.9"], proxies) == "203.0.113.7"
    assert citizen_address("198.51.100.1", ["203.0.113.7"], proxies) == "198.51.100.1"  # not a proxy
    assert citizen_address("10.1.2.3", ["not-an-address"], proxies) == "10.1.2.3"
    with pytest.raises(ValueError, match="bogus"):
        parse_proxies("bogus")
