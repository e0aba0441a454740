"""The console's inbox and case page are answered on the gateway's event loop, through grpc.aio.

A real node (token security on) and a real gateway (uvicorn on a real port) whose worker-thread
hop is replaced by one that fails: the two busiest pages must still answer, so they ask the node
without a worker thread (issue 17: each page's hand-off cost ~0.1–0.6 ms of the gateway's CPU). The
node's answers and refusals reach the page as before (a token the node refuses: back to sign-in).
"""

from __future__ import annotations

import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from lianxin.common.v1 import common_pb2
from lianxin.intake.v1 import intake_service_pb2 as intake_pb2
from lianxin.intake.v1 import intake_service_pb2_grpc as intake_grpc

from services.common.security import issue_token, load_token_key, verify_token
from services.common.settings import Settings
from services.node import Node
from services.web import app as web_app
from services.web.session import Operator
from tests.support.helpers import wait_until

KEY = "event-loop-test-key"
NODE = "511102"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    settings = Settings(node=NODE, data_dir=tmp_path_factory.mktemp("node"), auth=True, token_key=KEY)
    started = Node(settings).start()
    yield started
    started.stop(grace=1.0)


@pytest.fixture()
def gateway(node: Node, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Any]]:
    import uvicorn

    from services.web.config import WebSettings

    async def no_worker_thread(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError("a page ran in a worker thread")

    monkeypatch.setattr(web_app, "run_in_threadpool", no_worker_thread)
    built = web_app.build_gateway(
        Settings(node=NODE, data_dir=tmp_path, auth=True, token_key=KEY), WebSettings(grpc=node.address)
    )
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(web_app.build_app(built), log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    wait_until(lambda: server.started, timeout=20, message="gateway started")
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", built
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def _cookie(gateway: Any, *, key: str = KEY) -> str:
    """A clerk's signed session cookie, as the sign-in form makes it; ``key``: the token's signer."""
    token = issue_token(load_token_key(key), subject=f"clerk-{NODE}", node=NODE, unit="", roles=["clerk"], ttl_s=600)
    operator = Operator(token=token, principal=verify_token(load_token_key(key), token))
    return f"{gateway.cookie('session')}={gateway.signer.dumps('session', operator.to_cookie(), ttl_s=600)}"


def _get(url: str, cookie: str) -> tuple[int, str, str]:
    request = urllib.request.Request(url, headers={"Cookie": cookie})
    opener = urllib.request.build_opener(_NoRedirect())
    try:
        with opener.open(request, timeout=10) as reply:
            return reply.status, reply.read().decode(), reply.headers.get("Location") or ""
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(), error.headers.get("Location") or ""


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *_args: Any, **_kwargs: Any) -> None:
        return None


def test_inbox_and_case_page_answer_without_a_worker_thread(node: Node, gateway: tuple[str, Any]) -> None:
    base, built = gateway
    with grpc.insecure_channel(node.address) as channel:
        case_id = (
            intake_grpc.IntakeServiceStub(channel)
            .SubmitCase(
                intake_pb2.SubmitCaseRequest(
                    channel=common_pb2.CHANNEL_WEB,
                    channel_ref="event-loop-1",
                    title="小区门口夜间施工噪音扰民",
                    body="嘉州大道某小区门口夜间施工，噪音扰民。",
                    region_code=NODE,
                    complainant=common_pb2.Person(phone="13800001234"),
                ),
                timeout=10,
            )
            .case.case_id
        )
    cookie = _cookie(built)
    status, html, _ = _get(f"{base}/console", cookie)
    assert status == 200 and "<table" in html
    status, html, _ = _get(f"{base}/console/case/{case_id}", cookie)
    assert status == 200 and "小区门口夜间施工噪音扰民" in html
    # A case the node does not know: the remote-case page, not a failure.
    status, _, _ = _get(f"{base}/console/case/{NODE}-20000101-999999", cookie)
    assert status == 200


def test_a_token_the_node_refuses_sends_the_operator_to_sign_in(gateway: tuple[str, Any]) -> None:
    base, built = gateway
    cookie = _cookie(built, key="another-key")  # the gateway's session is valid, the node's token is not
    for path in ("/console", f"/console/case/{NODE}-20000101-000001"):
        status, _, location = _get(f"{base}{path}", cookie)
        assert (status, location) == (303, "/console/login")
