"""ReadTogether on a real secured node: each part answers exactly what a call of its own would.

The case page's three reads (intake GetCase, routing ListWorkOrders, video GetCaseVideo) asked in one
call must keep every method's checks: the token and its region scope, the masking of personal data,
the request rules, the error mapping and the metrics; a write can never be a part.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf.message import Message
from lianxin.common.v1 import common_pb2, reads_pb2, reads_pb2_grpc
from lianxin.intake.v1 import intake_service_pb2 as intake_pb2
from lianxin.intake.v1 import intake_service_pb2_grpc as intake_grpc
from lianxin.routing.v1 import routing_service_pb2 as routing_pb2
from lianxin.video.v1 import video_service_pb2 as video_pb2
from prometheus_client import REGISTRY

from services.common.crypto import new_data_key
from services.common.personal_text import id_check_character
from services.common.read_together import MAX_PARTS
from services.common.security import bearer_metadata, issue_token
from services.common.settings import Settings
from services.federation import health_statuses
from services.node import Node
from tests.support.cli import closed_port
from tests.support.exchange_nodes import Start, linked_nodes
from tests.support.helpers import wait_until
from tests.support.intake import submitted_and_assigned

KEY = "read-together-token-key"
NODE = "511102"
GET_CASE = "/lianxin.intake.v1.IntakeService/GetCase"
LIST_ORDERS = "/lianxin.routing.v1.RoutingService/ListWorkOrders"
CASE_VIDEO = "/lianxin.video.v1.VideoService/GetCaseVideo"
SUBMIT = "/lianxin.intake.v1.IntakeService/SubmitCase"
ID_NUMBER = "51110219900307001" + id_check_character("51110219900307001")


@pytest.fixture()
def node(tmp_path: Path) -> Iterator[Node]:
    settings = Settings(node=NODE, data_dir=tmp_path, auth=True, token_key=KEY, relay_interval_s=0.05)
    started = Node(settings).start()
    yield started
    started.stop(grace=1.0)


@pytest.fixture()
def channel(node: Node) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(node.address) as ch:
        yield ch


def token(roles: list[str], node: str = NODE, unit: str = "") -> tuple[tuple[str, str]]:
    return bearer_metadata(issue_token(KEY.encode(), subject="op-1", node=node, unit=unit, roles=roles, ttl_s=600))


def submitted(channel: grpc.Channel) -> str:
    person = common_pb2.Person(name="张三", phone="13812345678", id_number=ID_NUMBER)
    return submitted_and_assigned(channel, token(["clerk"]), "read-together-1", complainant=person)


def page_parts(case_id: str) -> list[tuple[str, Message]]:
    return [
        (GET_CASE, intake_pb2.GetCaseRequest(case_id=case_id)),
        (LIST_ORDERS, routing_pb2.ListWorkOrdersRequest(case_id=case_id, with_history=True, with_supervisions=True)),
        (CASE_VIDEO, video_pb2.GetCaseVideoRequest(case_id=case_id)),
    ]


def together(
    channel: grpc.Channel, parts: list[tuple[str, Message]], metadata: tuple[tuple[str, str], ...] = ()
) -> list[reads_pb2.ReadAnswer]:
    request = reads_pb2.ReadTogetherRequest(
        parts=[reads_pb2.ReadPart(method=m, request=r.SerializeToString()) for m, r in parts]
    )
    reply = reads_pb2_grpc.ReadsServiceStub(channel).ReadTogether(request, metadata=metadata, timeout=5)
    return list(reply.answers)


def alone(
    channel: grpc.Channel, method: str, request: Message, metadata: tuple[tuple[str, str], ...]
) -> tuple[int, str, bytes, dict[str, str]]:
    """(code, details, response bytes, trailing metadata) of ``method`` called on its own."""
    call = channel.unary_unary(
        method, request_serializer=lambda m: m.SerializeToString(), response_deserializer=lambda b: b
    )
    try:
        body = call(request, metadata=metadata, timeout=5)
    except grpc.RpcError as error:
        trailing = {k: v for k, v in error.trailing_metadata() or () if not k.endswith("-bin")}
        return error.code().value[0], error.details() or "", b"", trailing
    return 0, "", body, {}


def as_tuple(answer: reads_pb2.ReadAnswer) -> tuple[int, str, bytes, dict[str, str]]:
    return answer.code, answer.message, answer.response, {t.key: t.value for t in answer.trailers}


def parsed(method: str, body: bytes) -> Message:
    kinds: dict[str, type[Message]] = {
        GET_CASE: intake_pb2.GetCaseResponse,
        LIST_ORDERS: routing_pb2.ListWorkOrdersResponse,
        CASE_VIDEO: video_pb2.GetCaseVideoResponse,
    }
    message = kinds[method]()
    message.ParseFromString(body)
    return message


def test_the_case_pages_reads_answer_as_their_own_calls(channel: grpc.Channel) -> None:
    case_id = submitted(channel)
    clerk = token(["clerk"])
    answers = together(channel, page_parts(case_id), clerk)
    assert [a.code for a in answers] == [0, 0, 0]
    for (method, request), answer in zip(page_parts(case_id), answers, strict=True):
        code, _details, body, _trailing = alone(channel, method, request, clerk)
        assert code == 0
        assert parsed(method, answer.response) == parsed(method, body), method
    case = intake_pb2.GetCaseResponse.FromString(answers[0].response).case
    assert case.case_id == case_id
    # Masked as the clerk's own GetCase is: never the whole phone or ID number.
    assert "13812345678" not in str(case) and ID_NUMBER not in str(case)
    orders = routing_pb2.ListWorkOrdersResponse.FromString(answers[1].response)
    assert [o.case_id for o in orders.work_orders] == [case_id]


def test_a_handling_unit_sees_no_complainant_in_a_part(channel: grpc.Channel) -> None:
    case_id = submitted(channel)
    handler = token(["handler"], unit="unit-x")
    answer = together(channel, page_parts(case_id)[:1], handler)[0]
    assert as_tuple(answer) == alone(channel, GET_CASE, intake_pb2.GetCaseRequest(case_id=case_id), handler)
    if answer.code == 0:
        case = intake_pb2.GetCaseResponse.FromString(answer.response).case
        assert "张三" not in str(case) and "1381234" not in str(case)


@pytest.mark.parametrize(
    "metadata",
    [
        pytest.param((), id="no token"),
        pytest.param(token(["clerk"], node="511111"), id="clerk of another county"),
        pytest.param(token(["evaluator"]), id="a role that may not read cases"),
    ],
)
def test_refused_callers_are_refused_part_by_part(channel: grpc.Channel, metadata: tuple[tuple[str, str], ...]) -> None:
    case_id = submitted(channel)
    answers = together(channel, page_parts(case_id), metadata)
    assert all(a.code != 0 and not a.response for a in answers)
    for (method, request), answer in zip(page_parts(case_id), answers, strict=True):
        assert as_tuple(answer) == alone(channel, method, request, metadata), method


def test_a_write_is_never_a_part(channel: grpc.Channel) -> None:
    clerk = token(["clerk"])
    before = intake_grpc.IntakeServiceStub(channel).ListCases(intake_pb2.ListCasesRequest(), metadata=clerk, timeout=5)
    request = intake_pb2.SubmitCaseRequest(
        channel=common_pb2.CHANNEL_HOTLINE, channel_ref="by-a-part", title="标题", body="内容", region_code=NODE
    )
    answer = together(channel, [(SUBMIT, request)], clerk)[0]
    assert answer.code == grpc.StatusCode.PERMISSION_DENIED.value[0]
    assert "read-only" in answer.message
    after = intake_grpc.IntakeServiceStub(channel).ListCases(intake_pb2.ListCasesRequest(), metadata=clerk, timeout=5)
    assert len(after.cases) == len(before.cases)


def test_unknown_methods_bad_requests_and_request_rules(channel: grpc.Channel) -> None:
    clerk = token(["clerk"])
    unknown = reads_pb2.ReadPart(method="/lianxin.nowhere.v1.NoService/Get", request=b"")
    garbage = reads_pb2.ReadPart(method=GET_CASE, request=b"\xff\xff\xff")
    too_long = intake_pb2.GetCaseRequest(case_id="x" * 200)  # the request rules: at most 64 characters
    stub = reads_pb2_grpc.ReadsServiceStub(channel)
    reply = stub.ReadTogether(
        reads_pb2.ReadTogetherRequest(
            parts=[unknown, garbage, reads_pb2.ReadPart(method=GET_CASE, request=too_long.SerializeToString())]
        ),
        metadata=clerk,
        timeout=5,
    )
    first, second, third = reply.answers
    assert first.code == grpc.StatusCode.UNIMPLEMENTED.value[0]
    assert second.code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and "parts.request" in second.message
    assert as_tuple(third) == alone(channel, GET_CASE, too_long, clerk)
    assert third.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert {t.key: t.value for t in third.trailers}.get("lianxin-field") == "case_id"


@pytest.mark.parametrize("count", [0, MAX_PARTS + 1])
def test_no_parts_or_too_many_is_invalid_argument(channel: grpc.Channel, count: int) -> None:
    request = reads_pb2.ReadTogetherRequest(parts=[reads_pb2.ReadPart(method=GET_CASE, request=b"")] * count)
    with pytest.raises(grpc.RpcError) as raised:
        reads_pb2_grpc.ReadsServiceStub(channel).ReadTogether(request, metadata=token(["clerk"]), timeout=5)
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "parts" in (raised.value.details() or "")


def test_each_part_is_counted_under_its_own_method(channel: grpc.Channel) -> None:
    def handled(method: str, code: str) -> float:
        value = REGISTRY.get_sample_value(
            "lianxin_grpc_server_handled_total",
            {"service": method.split("/")[1], "method": method.split("/")[2], "code": code},
        )
        return value or 0.0

    case_id = submitted(channel)
    before = [handled(m, "OK") for m in (GET_CASE, LIST_ORDERS, CASE_VIDEO)]
    refused = handled(GET_CASE, "UNAUTHENTICATED")
    together(channel, page_parts(case_id), token(["clerk"]))
    together(channel, page_parts(case_id)[:1])
    assert [handled(m, "OK") for m in (GET_CASE, LIST_ORDERS, CASE_VIDEO)] == [b + 1 for b in before]
    assert handled(GET_CASE, "UNAUTHENTICATED") == refused + 1


def test_the_public_port_does_not_read_together(tmp_path: Path) -> None:
    settings = Settings(node=NODE, data_dir=tmp_path, auth=True, token_key=KEY, public_port=0)
    node = Node(settings).start()
    try:
        assert node.server is not None and node.server.public_port
        with grpc.insecure_channel(f"127.0.0.1:{node.server.public_port}") as public:
            request = reads_pb2.ReadTogetherRequest(parts=[reads_pb2.ReadPart(method=GET_CASE, request=b"")])
            with pytest.raises(grpc.RpcError) as raised:
                reads_pb2_grpc.ReadsServiceStub(public).ReadTogether(request, metadata=token(["clerk"]), timeout=5)
            assert raised.value.code() is grpc.StatusCode.UNIMPLEMENTED
    finally:
        node.stop(grace=1.0)


def test_one_api_process_of_three_services_reads_them_together(tmp_path: Path) -> None:
    port = closed_port()
    env = {
        **os.environ,
        "LIANXIN_NODE": NODE,
        "LIANXIN_DATA_KEYS": f"reads:{new_data_key()}",
        "LIANXIN_DATA_DIR": str(tmp_path),
        "LIANXIN_GRPC_PORT": str(port),
        "LIANXIN_METRICS_PORT": "0",
        "LIANXIN_AUTH": "true",
        "LIANXIN_TOKEN_KEY": KEY,
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "serve", "--service", "intake,routing,video"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    address = f"127.0.0.1:{port}"
    names = [method.split("/")[1] for method in (GET_CASE, LIST_ORDERS, CASE_VIDEO)]
    try:
        wait_until(
            lambda: health_statuses(address, names) == dict.fromkeys(names, "SERVING"),
            timeout=90,
            message="the api process serving its three services",
        )
        missing = f"{NODE}-20000101-999999"
        exchange = reads_pb2.ReadPart(method="/lianxin.exchange.v1.ExchangeService/LinkStatus", request=b"")
        with grpc.insecure_channel(address) as channel:
            parts = page_parts(missing)
            reply = reads_pb2_grpc.ReadsServiceStub(channel).ReadTogether(
                reads_pb2.ReadTogetherRequest(
                    parts=[*(reads_pb2.ReadPart(method=m, request=r.SerializeToString()) for m, r in parts), exchange]
                ),
                metadata=token(["clerk"]),
                timeout=10,
            )
            codes = [grpc.StatusCode.NOT_FOUND, grpc.StatusCode.OK, grpc.StatusCode.OK, grpc.StatusCode.UNIMPLEMENTED]
            assert [a.code for a in reply.answers] == [c.value[0] for c in codes]
            for (method, request), answer in zip(parts, reply.answers[:3], strict=True):
                assert as_tuple(answer) == alone(channel, method, request, token(["clerk"])), method
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=30)
        assert b"Traceback" not in stderr, stderr.decode()[-3000:]


def test_serve_names_an_unknown_service_in_one_line() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "services.cli", "serve", "--service", "intake,nowhere"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 3
    assert result.stderr.strip().splitlines() == [
        "lianxin: INVALID_ARGUMENT: --service: expected one or more of intake, routing, exchange, video, stats, "
        "comma-separated and each once: 'intake,nowhere'"
    ]


@pytest.fixture(params=["sqlite", "postgres"])
def start(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Start]:
    with linked_nodes(request.param, tmp_path, lambda: str(request.getfixturevalue("postgres_admin_url"))) as starter:
        yield starter


def test_the_page_reads_and_a_refusal_are_the_same_on_both_databases(start: Start) -> None:
    # The parts run each service's own store: SQLite files and PostgreSQL schemas answer alike, and a
    # clerk of another county is refused there as on its own call.
    node = start(NODE, auth=True, token_key=KEY)
    with grpc.insecure_channel(node.address) as channel:
        case_id = submitted(channel)
        for metadata in (token(["clerk"]), token(["clerk"], node="511111")):
            answers = together(channel, page_parts(case_id), metadata)
            for (method, request), answer in zip(page_parts(case_id), answers, strict=True):
                assert as_tuple(answer) == alone(channel, method, request, metadata), method
        assert [a.code for a in together(channel, page_parts(case_id), token(["clerk"]))] == [0, 0, 0]
