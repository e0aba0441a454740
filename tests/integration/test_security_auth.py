"""Operator tokens on a real node: no RPC is left open, scope is enforced, writes are audited.

The node runs with ``auth=True``; every method of every business service descriptor is called
without a token over a real channel.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from lianxin.common.v1 import common_pb2
from lianxin.intake.v1 import intake_service_pb2 as intake_pb2
from lianxin.intake.v1 import intake_service_pb2_grpc as intake_grpc
from lianxin.routing.v1 import routing_service_pb2 as routing_pb2
from lianxin.routing.v1 import routing_service_pb2_grpc as routing_grpc
from lianxin.stats.v1 import stats_service_pb2 as stats_pb2
from lianxin.stats.v1 import stats_service_pb2_grpc as stats_grpc

from services.common.audit import AuditLog, load_audit_key
from services.common.db import make_engine, service_database_url
from services.common.security import CITIZEN_METHODS, PEER_METHODS, bearer_metadata, issue_token
from services.common.settings import Settings
from services.node import Node

KEY = "integration-test-token-key"
_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)


def valid_id(first17: str) -> str:
    """A synthetic 18-digit ID number with a correct GB 11643 check digit."""
    total = sum(int(d) * w for d, w in zip(first17, _WEIGHTS, strict=True))
    return first17 + "10X98765432"[total % 11]


ID_NUMBER = valid_id("51110219900307001")


@pytest.fixture()
def node(tmp_path: Path) -> Iterator[Node]:
    settings = Settings(node="511102", data_dir=tmp_path, auth=True, token_key=KEY, relay_interval_s=0.05)
    started = Node(settings).start()
    yield started
    started.stop(grace=1.0)


@pytest.fixture()
def channel(node: Node) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(node.address) as ch:
        yield ch


def token(roles: list[str], node: str = "511102", unit: str = "", ttl_s: int = 600) -> tuple[tuple[str, str]]:
    return bearer_metadata(issue_token(KEY.encode(), subject="op-1", node=node, unit=unit, roles=roles, ttl_s=ttl_s))


def submit(channel: grpc.Channel, ref: str) -> intake_pb2.SubmitCaseResponse:
    request = intake_pb2.SubmitCaseRequest(
        channel=common_pb2.CHANNEL_HOTLINE,
        channel_ref=ref,
        title="小区门口夜间施工噪音扰民",
        body="乐山市市中区嘉州大道某小区门口夜间施工，噪音扰民，希望有关部门处理。",
        category="环境保护",
        region_code="511102",
        hotline_operator_id="op-007",
        complainant=common_pb2.Person(name="张三", phone="13812345678", id_number=ID_NUMBER),
    )
    reply: intake_pb2.SubmitCaseResponse = intake_grpc.IntakeServiceStub(channel).SubmitCase(request, timeout=5)
    return reply


def _call_without_token(
    channel: grpc.Channel, full: str, client_streaming: bool, server_streaming: bool
) -> grpc.StatusCode:
    path = "/" + full
    identity = (lambda b: b, lambda b: b)
    try:
        if client_streaming and server_streaming:
            list(channel.stream_stream(path, *identity)(iter([b""]), timeout=5))
        elif client_streaming:
            channel.stream_unary(path, *identity)(iter([b""]), timeout=5)
        elif server_streaming:
            list(channel.unary_stream(path, *identity)(b"", timeout=5))
        else:
            channel.unary_unary(path, *identity)(b"", timeout=5)
    except grpc.RpcError as error:
        return error.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def code_of(call: Callable[[], object]) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as error:
        return error.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def test_no_rpc_of_any_service_is_open_without_a_token(node: Node, channel: grpc.Channel) -> None:
    from google.protobuf import descriptor_pool

    pool = descriptor_pool.Default()
    walked = 0
    for service in node.server.service_names if node.server else []:
        for method in pool.FindServiceByName(service).methods:
            full = f"{service}/{method.name}"
            if full in CITIZEN_METHODS or full in PEER_METHODS:
                continue
            code = _call_without_token(channel, full, method.client_streaming, method.server_streaming)
            assert code is grpc.StatusCode.UNAUTHENTICATED, f"{full} answered {code} without a token"
            walked += 1
    assert walked >= 30


def test_invalid_and_expired_tokens_are_unauthenticated(channel: grpc.Channel) -> None:
    stub = stats_grpc.StatsServiceStub(channel)
    request = stats_pb2.GetMetricsRequest(region_code="511102", metrics=["received"])
    for metadata in (
        (("authorization", "Bearer lx1.e30.AAAA"),),
        token(["auditor"], ttl_s=-5),
        bearer_metadata(issue_token(b"another key", subject="x", node="511102", roles=["admin"])),
    ):
        with pytest.raises(grpc.RpcError) as caught:
            stub.GetMetrics(request, metadata=metadata, timeout=5)
        assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED


def test_region_outside_the_operator_subtree_is_permission_denied(channel: grpc.Channel) -> None:
    stub = stats_grpc.StatsServiceStub(channel)
    # An operator of 511102 (市中区) may see 511102 but not 510000 (the province) ...
    stub.GetMetrics(
        stats_pb2.GetMetricsRequest(region_code="511102", metrics=["received"]), metadata=token(["auditor"])
    )
    with pytest.raises(grpc.RpcError) as caught:
        stub.GetMetrics(
            stats_pb2.GetMetricsRequest(region_code="510000", metrics=["received"]), metadata=token(["auditor"])
        )
    assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED
    # ... and an operator of a sibling county sees nothing of this node.
    with pytest.raises(grpc.RpcError) as caught:
        stub.GetMetrics(
            stats_pb2.GetMetricsRequest(region_code="511102", metrics=["received"]),
            metadata=token(["auditor"], node="511111"),
        )
    assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED


def test_another_units_work_and_a_missing_role_are_permission_denied(channel: grpc.Channel) -> None:
    stub = routing_grpc.RoutingServiceStub(channel)
    # Own unit: let through (whatever routing then answers).
    own = routing_pb2.ListWorkOrdersRequest(unit_id="u-env")
    assert code_of(lambda: stub.ListWorkOrders(own, metadata=token(["handler"], unit="u-env"), timeout=5)) not in (
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
    )
    with pytest.raises(grpc.RpcError) as caught:
        stub.ListWorkOrders(
            routing_pb2.ListWorkOrdersRequest(unit_id="u-police"), metadata=token(["handler"], unit="u-env")
        )
    assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.RpcError) as caught:  # the console's inbox read model: the same scope
        stub.ListInbox(routing_pb2.ListInboxRequest(unit_id="u-police"), metadata=token(["handler"], unit="u-env"))
    assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED
    # 协办 inbox: a unit lists where it assists (its own unit only), not where another unit does.
    assisting = routing_pb2.ListWorkOrdersRequest(assisting_unit_id="u-env")
    assert code_of(
        lambda: stub.ListWorkOrders(assisting, metadata=token(["handler"], unit="u-env"), timeout=5)
    ) not in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
    with pytest.raises(grpc.RpcError) as caught:
        stub.ListWorkOrders(
            routing_pb2.ListWorkOrdersRequest(assisting_unit_id="u-police"), metadata=token(["handler"], unit="u-env")
        )
    assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.RpcError) as caught:
        stub.ArbitrateObjection(routing_pb2.ArbitrateObjectionRequest(), metadata=token(["auditor"]))
    assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED


def test_personal_data_is_masked_by_role_and_hidden_from_handling_units(channel: grpc.Channel) -> None:
    case_id = submit(channel, "call-mask").case.case_id
    stub = intake_grpc.IntakeServiceStub(channel)
    seen = stub.GetCase(intake_pb2.GetCaseRequest(case_id=case_id), metadata=token(["supervisor"])).case.complainant
    assert (seen.name, seen.phone, seen.id_number) == ("张*", "138****5678", "511102********" + ID_NUMBER[-4:])
    hidden = stub.GetCase(intake_pb2.GetCaseRequest(case_id=case_id), metadata=token(["handler"], unit="u")).case
    assert hidden.complainant.name == "" and hidden.complainant.phone == "" and hidden.complainant.id_number == ""


def test_the_office_reads_the_citizens_own_words_and_a_handling_unit_the_masked_text(channel: grpc.Channel) -> None:
    request = intake_pb2.SubmitCaseRequest(
        channel=common_pb2.CHANNEL_HOTLINE,
        channel_ref="call-free-text",
        title="小区门口夜间施工噪音扰民",
        body="我是张三，电话13812345678，嘉州大道某小区门口夜间施工。",
        category="环境保护",
        region_code="511102",
        address="嘉州大道88号小区门口",
        hotline_operator_id="op-007",
        complainant=common_pb2.Person(name="张三", phone="13812345678", address="春华路5号"),
    )
    case_id = intake_grpc.IntakeServiceStub(channel).SubmitCase(request, timeout=5).case.case_id
    stub = intake_grpc.IntakeServiceStub(channel)
    office = stub.GetCase(intake_pb2.GetCaseRequest(case_id=case_id), metadata=token(["clerk"])).case
    assert office.body == request.body
    unit = stub.GetCase(intake_pb2.GetCaseRequest(case_id=case_id), metadata=token(["handler"], unit="u")).case
    assert unit.body == "我是张*，电话*******5678，嘉州大道某小区门口夜间施工。"
    # The unit sees where the matter is, never where the complainant lives.
    assert unit.address == "嘉州大道88号小区门口" and unit.complainant.address == ""


def test_citizen_rpcs_are_public_but_rate_limited(tmp_path: Path) -> None:
    settings = Settings(node="511102", data_dir=tmp_path, auth=True, token_key=KEY, citizen_rate_per_min=3)
    node = Node(settings).start()
    try:
        with grpc.insecure_channel(node.address) as channel:
            stub = intake_grpc.IntakeServiceStub(channel)
            request = intake_pb2.TrackCaseRequest(tracking_code="NOPE0000", phone_last4="5678")
            codes = []
            for _ in range(4):
                try:
                    stub.TrackCase(request, timeout=5)
                    codes.append(grpc.StatusCode.OK)
                except grpc.RpcError as error:
                    codes.append(error.code())
            assert grpc.StatusCode.UNAUTHENTICATED not in codes
            assert codes[-1] is grpc.StatusCode.RESOURCE_EXHAUSTED
            assert grpc.StatusCode.RESOURCE_EXHAUSTED not in codes[:3]
    finally:
        node.stop(grace=1.0)


def test_mutating_rpcs_are_audited_and_tampering_is_found(node: Node, channel: grpc.Channel, tmp_path: Path) -> None:
    case_id = submit(channel, "call-audit").case.case_id
    with pytest.raises(grpc.RpcError):
        routing_grpc.RoutingServiceStub(channel).CloseWorkOrder(routing_pb2.CloseWorkOrderRequest(), timeout=5)
    intake_grpc.IntakeServiceStub(channel).GetCase(
        intake_pb2.GetCaseRequest(case_id=case_id), metadata=token(["clerk"])
    )

    url = service_database_url(node.settings, "audit")
    engine = make_engine(url, service="audit")
    key = load_audit_key(node.settings)
    audit = AuditLog(engine, "511102", key=key)
    assert not AuditLog(engine, "511102").verify().ok  # the chain is keyed: without the key it does not verify
    records = list(audit.records())
    assert [(r.method.rsplit("/", 1)[-1], r.outcome) for r in records] == [
        ("SubmitCase", "OK"),
        ("CloseWorkOrder", "UNAUTHENTICATED"),
    ]  # the read (GetCase) is not audited
    assert records[0].target == case_id and records[0].actor == "anonymous"
    assert audit.verify().ok
    engine.dispose()

    from services.common.commands import cmd_audit_verify

    def verify_cli(monkey: pytest.MonkeyPatch) -> int:
        monkey.setenv("LIANXIN_NODE", "511102")
        monkey.setenv("LIANXIN_DATA_DIR", str(node.settings.data_dir))
        return cmd_audit_verify(None)  # type: ignore[arg-type]

    with pytest.MonkeyPatch.context() as monkey:
        assert verify_cli(monkey) == 0
    db = sqlite3.connect(url.removeprefix("sqlite:///"))
    db.execute("UPDATE audit_log SET actor = 'someone-else' WHERE seq = 1")
    db.commit()
    with pytest.MonkeyPatch.context() as monkey:
        assert verify_cli(monkey) == 1
    db.execute("DELETE FROM audit_log WHERE seq = 1")
    db.commit()
    db.close()
    engine = make_engine(url, service="audit")
    report = AuditLog(engine, "511102", key=key).verify()
    engine.dispose()
    assert not report.ok and any("missing" in p or "chain" in p for p in report.problems)


def test_an_evaluator_sees_only_the_sample_and_only_an_evaluator_rates_it(channel: grpc.Channel) -> None:
    """第三方评价: the role ``evaluator`` reads the month's sample and rates it, nothing else of the node."""
    routing = routing_grpc.RoutingServiceStub(channel)
    evaluator = token(["evaluator"])
    month = routing_pb2.ListEvaluationSampleRequest(month="2026-11")
    # Allowed through (no sample drawn yet: NOT_FOUND from the service, not a refusal by role).
    assert code_of(lambda: routing.ListEvaluationSample(month, metadata=evaluator, timeout=5)) is (
        grpc.StatusCode.NOT_FOUND
    )
    rating = routing_pb2.RecordThirdPartyRatingRequest(
        month="2026-11", case_id="511102-20261101-000001", actor="e", rating=common_pb2.SATISFACTION_SATISFIED
    )
    assert code_of(lambda: routing.RecordThirdPartyRating(rating, metadata=evaluator, timeout=5)) is (
        grpc.StatusCode.NOT_FOUND
    )
    refused_to_evaluator = [
        lambda: routing.ListWorkOrders(routing_pb2.ListWorkOrdersRequest(), metadata=evaluator, timeout=5),
        lambda: routing.ListInbox(routing_pb2.ListInboxRequest(), metadata=evaluator, timeout=5),
        lambda: routing.DrawEvaluationSample(
            routing_pb2.DrawEvaluationSampleRequest(month="2026-11", actor="e"), metadata=evaluator, timeout=5
        ),
        lambda: intake_grpc.IntakeServiceStub(channel).GetCase(
            intake_pb2.GetCaseRequest(case_id="511102-20261101-000001"), metadata=evaluator, timeout=5
        ),
        lambda: stats_grpc.StatsServiceStub(channel).GetMetrics(
            stats_pb2.GetMetricsRequest(region_code="511102"), metadata=evaluator, timeout=5
        ),
    ]
    assert [code_of(call) for call in refused_to_evaluator] == [grpc.StatusCode.PERMISSION_DENIED] * 5
    # The office neither rates for the group nor do handling units list its sample.
    for roles in (["admin"], ["supervisor"], ["clerk"]):
        office = token(roles)
        assert code_of(lambda: routing.RecordThirdPartyRating(rating, metadata=office, timeout=5)) is (  # noqa: B023
            grpc.StatusCode.PERMISSION_DENIED
        )
    assert (
        code_of(lambda: routing.ListEvaluationSample(month, metadata=token(["handler"], unit="u-env"), timeout=5))
        is grpc.StatusCode.PERMISSION_DENIED
    )
