"""Bad input at the gRPC edge, on SQLite and PostgreSQL alike (issue 19): who may push, how large a
citizen's request may be, dates from the future, and an idempotency key reused for other content.
"""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from lianxin.common.v1 import common_pb2
from lianxin.exchange.v1 import exchange_service_pb2 as exchange_pb2
from lianxin.exchange.v1 import exchange_service_pb2_grpc as exchange_grpc
from lianxin.intake.v1 import intake_service_pb2 as intake_pb2
from lianxin.intake.v1 import intake_service_pb2_grpc as intake_grpc

from services.common.crypto import new_data_key
from services.common.grpcserver import MAX_RECEIVE_BYTES, PUBLIC_RECEIVE_BYTES
from services.common.interceptors import FIELD_METADATA_KEY
from services.common.request_rules import PUBLIC_MAX_BYTES
from services.common.settings import Settings
from services.exchange.ports import MAX_BATCH_BYTES
from services.node import Node
from tests.support.helpers import free_port_block

COUNTY = "511102"  # 市中区: a county with no children
CITY = "511100"  # 乐山市, the county's parent


def start(code: str, tmp_path: Path, database_url: str) -> Node:
    url = None if database_url.startswith("sqlite") else database_url
    settings = Settings(node=code, data_dir=tmp_path / code, database_url=url, relay_interval_s=0.05)
    return Node(settings, services=("intake", "exchange")).start()


@pytest.fixture()
def county(tmp_path: Path, database_url: str) -> Iterator[Node]:
    node = start(COUNTY, tmp_path, database_url)
    yield node
    node.stop(grace=0.5)


def refusal(call: object) -> tuple[grpc.StatusCode, str, str]:
    """(code, details, the field the server named) of a call expected to fail."""
    assert callable(call)
    with pytest.raises(grpc.RpcError) as raised:
        call()
    error = raised.value
    named = dict(error.trailing_metadata() or ()).get(FIELD_METADATA_KEY, "")  # type: ignore[attr-defined]
    return error.code(), error.details(), str(named)  # type: ignore[attr-defined]


def submission(ref: str, **overrides: object) -> intake_pb2.SubmitCaseRequest:
    fields: dict[str, object] = dict(
        channel=common_pb2.CHANNEL_WEB,
        channel_ref=ref,
        title="小区门口夜间施工噪音扰民",
        body="乐山市市中区嘉州大道某小区门口夜间施工，噪音扰民。",
        region_code=COUNTY,
        complainant=common_pb2.Person(phone="13900001111"),
    )
    fields.update(overrides)
    return intake_pb2.SubmitCaseRequest(**fields)  # type: ignore[arg-type]


def metrics_text(node: Node) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{node.metrics_port}/metrics", timeout=5) as page:
        text: str = page.read().decode()
    return text


def test_push_from_a_node_that_is_not_a_direct_child_is_refused_and_never_a_metric_label(county: Node) -> None:
    with grpc.insecure_channel(county.address) as channel:
        stub = exchange_grpc.ExchangeServiceStub(channel)
        item = exchange_pb2.ExchangeItem(position=1, envelope=b"x")
        for junk in ("13700137000", "511102198805051231", "511102-20261206-000001", "511111", CITY):
            code, details, field = refusal(
                lambda junk=junk: stub.PushEvents(
                    exchange_pb2.PushEventsRequest(child_node=junk, items=[item]), timeout=5
                )
            )
            assert (code, field) == (grpc.StatusCode.INVALID_ARGUMENT, "child_node"), details
        links = stub.LinkStatus(exchange_pb2.LinkStatusRequest(), timeout=5).links
    assert [link.peer_node for link in links] == []
    page = metrics_text(county)
    assert "13700137000" not in page and "511102198805051231" not in page


def test_citizen_request_over_the_public_limit_is_refused_but_a_child_push_of_that_size_is_not(
    tmp_path: Path, database_url: str
) -> None:
    city = start(CITY, tmp_path, database_url)
    try:
        with grpc.insecure_channel(city.address) as channel:
            large = "噪" * (PUBLIC_MAX_BYTES // 3 + 10)
            code, details, _ = refusal(
                lambda: intake_grpc.IntakeServiceStub(channel).SubmitCase(submission("big", body=large), timeout=5)
            )
            assert code is grpc.StatusCode.RESOURCE_EXHAUSTED, details
            # The same size from a real child on the node-to-node method is read and judged item by item.
            reply = exchange_grpc.ExchangeServiceStub(channel).PushEvents(
                exchange_pb2.PushEventsRequest(
                    child_node=COUNTY,
                    items=[exchange_pb2.ExchangeItem(position=1, envelope=large.encode())],
                ),
                timeout=5,
            )
            assert reply.acked_position == 1
            assert reply.rejections[0].reason.startswith("malformed payload")
            # The largest batch a link ever sends (MAX_BATCH_BYTES, plus the item that crossed it) is read.
            items = [
                exchange_pb2.ExchangeItem(position=2 + i, envelope=bytes(64 * 1024))
                for i in range(MAX_BATCH_BYTES // (64 * 1024) + 1)
            ]
            reply = exchange_grpc.ExchangeServiceStub(channel).PushEvents(
                exchange_pb2.PushEventsRequest(child_node=COUNTY, items=items), timeout=30
            )
            assert reply.acked_position == items[-1].position
    finally:
        city.stop(grace=0.5)


def _peak_rss_bytes(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) * 1024


@contextmanager
def intake_api(tmp_path: Path, **env: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """An intake api process (production `lianxin serve`) on SQLite, and its address."""
    environment = {
        **os.environ,
        "LIANXIN_NODE": COUNTY,
        "LIANXIN_DATA_KEYS": f"edge:{new_data_key()}",
        "LIANXIN_DATA_DIR": str(tmp_path),
        "LIANXIN_INTAKE_CLASSIFIER": "off",
        "LIANXIN_LOG_LEVEL": "WARNING",
        **env,
    }
    environment.pop("LIANXIN_DATABASE_URL", None)
    api = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "serve", "--service", "intake"],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert api.stdout is not None
        line = api.stdout.readline()
        assert "serving on" in line, line + api.stdout.read()
        yield api, line.rsplit(" ", 1)[-1].strip()
    finally:
        api.terminate()
        api.wait(timeout=30)


# The client may send anything; only the server's limit is under test.
SEND_ANYTHING = [("grpc.max_send_message_length", 128 * 1024 * 1024)]


def test_a_request_over_the_servers_receive_limit_is_refused_before_its_body_is_read(tmp_path: Path) -> None:
    """An intake api process sent 12 MiB: refused, and its memory never held it."""
    with intake_api(tmp_path) as (api, address), grpc.insecure_channel(address, options=SEND_ANYTHING) as channel:
        stub = intake_grpc.IntakeServiceStub(channel)
        stub.SubmitCase(submission("small"), timeout=30)  # warm: the process at its working size
        before = _peak_rss_bytes(api.pid)
        # 12 MiB: under grpcio's old 16 MiB, which the server read whole before the interceptor refused it.
        huge = submission("huge", body="噪" * (12 * 1024 * 1024 // 3))
        code, details, _ = refusal(lambda: stub.SubmitCase(huge, timeout=60))
        assert code is grpc.StatusCode.RESOURCE_EXHAUSTED, details
        assert f"vs. {MAX_RECEIVE_BYTES}" in details  # grpc-core's own refusal, from the length prefix
        grown = _peak_rss_bytes(api.pid) - before
        assert grown < 6 * 1024 * 1024, f"the api's peak memory grew by {grown} bytes"
        # Under the transport limit but over the public one: refused by the interceptor, unparsed.
        middle = submission("middle", body="噪" * (MAX_RECEIVE_BYTES // 3 - 1024))
        code, details, _ = refusal(lambda: stub.SubmitCase(middle, timeout=30))
        assert code is grpc.StatusCode.RESOURCE_EXHAUSTED and f"at most {PUBLIC_MAX_BYTES} bytes" in details
        # The api still serves.
        assert stub.SubmitCase(submission("after"), timeout=30).case.case_id


def test_the_public_port_reads_little_of_a_citizens_request_and_serves_no_operator_method(tmp_path: Path) -> None:
    """LIANXIN_PUBLIC_PORT: citizens' methods only, refused by the transport above 80 KiB."""
    public = f"127.0.0.1:{free_port_block(1)}"
    with intake_api(tmp_path, LIANXIN_PUBLIC_PORT=public.rsplit(":", 1)[1]) as (api, address):
        with grpc.insecure_channel(public, options=SEND_ANYTHING) as channel:
            stub = intake_grpc.IntakeServiceStub(channel)
            filed = stub.SubmitCase(submission("small"), timeout=30)  # and warm: the process at its working size
            assert filed.case.case_id
            before = _peak_rss_bytes(api.pid)
            # Just under the node port's 2 MiB, which reads it whole before the request rules refuse it.
            large = submission("large", body="噪" * (MAX_RECEIVE_BYTES // 3 - 1024))
            huge = submission("huge", body="噪" * (12 * 1024 * 1024 // 3))
            for oversized in (large, huge):
                code, details, _ = refusal(lambda oversized=oversized: stub.SubmitCase(oversized, timeout=60))
                assert code is grpc.StatusCode.RESOURCE_EXHAUSTED, details
                # grpc-core's own refusal from the length prefix: the message is never assembled or parsed.
                assert f"vs. {PUBLIC_RECEIVE_BYTES}" in details
            # What HTTP/2's flow-control window let in flight before the refusal arrives (0.9 to 2.2 MiB
            # measured, whatever the request's size), never the whole request.
            grown = _peak_rss_bytes(api.pid) - before
            assert grown < 6 * 1024 * 1024, f"the api's peak memory grew by {grown} bytes"
            # An operator's method is not served there, whatever the caller presents.
            code, details, _ = refusal(
                lambda: stub.ListModerationQueue(intake_pb2.ListModerationQueueRequest(), timeout=10)
            )
            assert code is grpc.StatusCode.PERMISSION_DENIED, details
            # A citizen's other methods are.
            tracked = stub.TrackCase(
                intake_pb2.TrackCaseRequest(tracking_code=filed.tracking_code, phone_last4="1111"), timeout=10
            )
            assert tracked.tracking_code == filed.tracking_code
        # The node's own port still serves the operator.
        with grpc.insecure_channel(address) as channel:
            queue = intake_grpc.IntakeServiceStub(channel).ListModerationQueue(
                intake_pb2.ListModerationQueueRequest(), timeout=10
            )
            assert list(queue.items) == []


def test_submission_dated_in_the_future_beyond_the_clock_skew_is_refused(county: Node) -> None:
    with grpc.insecure_channel(county.address) as channel:
        stub = intake_grpc.IntakeServiceStub(channel)
        future = Timestamp(seconds=int((datetime.now(UTC) + timedelta(days=3 * 365)).timestamp()))
        code, details, field = refusal(lambda: stub.SubmitCase(submission("future", submitted_at=future), timeout=5))
        assert (code, field) == (grpc.StatusCode.INVALID_ARGUMENT, "submitted_at"), details
        listed = stub.ListCases(intake_pb2.ListCasesRequest(), timeout=5)
        assert list(listed.cases) == []
        # A clock a minute ahead is a clock, not a forgery.
        soon = Timestamp(seconds=int((datetime.now(UTC) + timedelta(minutes=1)).timestamp()))
        assert stub.SubmitCase(submission("soon", submitted_at=soon), timeout=5).created


def test_same_idempotency_key_with_other_content_answers_already_exists_naming_the_case(county: Node) -> None:
    with grpc.insecure_channel(county.address) as channel:
        stub = intake_grpc.IntakeServiceStub(channel)
        first = stub.SubmitCase(submission("web-key-1"), timeout=5)
        retry = stub.SubmitCase(submission("web-key-1"), timeout=5)
        assert (retry.created, retry.case.case_id) == (False, first.case.case_id)
        code, details, _ = refusal(
            lambda: stub.SubmitCase(submission("web-key-1", body="完全不同的另一件事。"), timeout=5)
        )
        assert code is grpc.StatusCode.ALREADY_EXISTS
        assert first.case.case_id in details
        assert len(stub.ListCases(intake_pb2.ListCasesRequest(), timeout=5).cases) == 1


def test_nul_byte_in_a_public_submission_is_the_same_answer_on_every_database(county: Node) -> None:
    with grpc.insecure_channel(county.address) as channel:
        stub = intake_grpc.IntakeServiceStub(channel)
        for field in ("title", "body", "channel_ref"):
            value = "x\x00y" if field != "body" else "夜间施工\x00噪音"
            code, details, named = refusal(
                lambda field=field, value=value: stub.SubmitCase(submission("nul", **{field: value}), timeout=5)
            )
            what = "control characters" if field == "body" else "control characters or line breaks"
            expected = f"{field}: must not contain {what} (U+0000 at position {value.index(chr(0))})"
            assert (code, named, details) == (grpc.StatusCode.INVALID_ARGUMENT, field, expected)
