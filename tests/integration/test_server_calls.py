"""ServerCalls (each method's handler built once) answers exactly as the per-call interceptor chain it
replaced: the same status, details, field metadata, response bytes, RPC metrics and audit records,
for reads, refusals, bad input and a request stream, on SQLite and PostgreSQL.

The per-call chain is the shape GrpcServer installed before (query threads, OpenTelemetry, errors and
metrics, security, request rules as separate grpcio interceptors) built from the same layers, serving
the same servicers and database as the node's own port.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from lianxin.common.v1 import common_pb2
from lianxin.intake.v1 import intake_service_pb2 as intake_pb2
from lianxin.intake.v1 import intake_service_pb2_grpc as intake_grpc
from opentelemetry.instrumentation.grpc import server_interceptor
from prometheus_client import REGISTRY

from services.common.audit import AuditLog, load_audit_key
from services.common.db import make_engine, service_database_url
from services.common.grpcserver import server_call_traced
from services.common.interceptors import (
    LianxinServerInterceptor,
    QueryThreadsInterceptor,
    read_only_methods,
)
from services.common.request_rules import RequestRulesInterceptor
from services.common.security import CITIZEN_METHODS, bearer_metadata, issue_token
from services.common.settings import Settings
from services.node import Node

KEY = "server-calls-test-key"
NODE = "511102"
INTAKE = "lianxin.intake.v1.IntakeService"
Metadata = tuple[tuple[str, str], ...]


def token(roles: list[str], node: str = NODE, unit: str = "", ttl_s: int = 600, key: str = KEY) -> Metadata:
    return bearer_metadata(issue_token(key.encode(), subject="op-1", node=node, unit=unit, roles=roles, ttl_s=ttl_s))


@pytest.fixture(params=["sqlite", "postgres"])
def node(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Node]:
    database_url = None if request.param == "sqlite" else str(request.getfixturevalue("postgres_url"))
    settings = Settings(
        node=NODE, data_dir=tmp_path, database_url=database_url, auth=True, token_key=KEY, metrics_port=None
    )
    started = Node(settings, services=("intake",)).start()
    yield started
    started.stop(grace=1.0)


@pytest.fixture()
def per_call_address(node: Node) -> Iterator[str]:
    """The node's servicers behind the chain of per-call interceptors, on a port of its own."""
    assert node.security is not None
    bindings = node.parts["intake"].servicers
    handlers = futures.ThreadPoolExecutor(max_workers=4)
    queries = futures.ThreadPoolExecutor(max_workers=2)
    chain = [
        QueryThreadsInterceptor(read_only_methods((b.full_name, b.servicer) for b in bindings), queries),
        server_interceptor(filter_=server_call_traced),  # type: ignore[no-untyped-call]
        LianxinServerInterceptor(),
        *node.security.interceptors,
        RequestRulesInterceptor(CITIZEN_METHODS),
    ]
    server = grpc.server(handlers, interceptors=chain)
    serving = health.HealthServicer()
    serving.set(INTAKE, health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(serving, server)
    for binding in bindings:
        binding.add_to_server(binding.servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(0).wait()
    queries.shutdown()


def _answer(call: Callable[[], Any]) -> tuple[object, ...]:
    """What a client sees of one call: code, details, trailing metadata and the response's bytes."""
    try:
        reply = call()
    except grpc.RpcError as error:
        return (error.code(), error.details(), tuple(error.trailing_metadata() or ()), b"")  # type: ignore[attr-defined]
    if isinstance(reply, list):
        return (grpc.StatusCode.OK, None, (), b"|".join(item.SerializeToString() for item in reply))
    return (grpc.StatusCode.OK, None, (), reply.SerializeToString(deterministic=True))


# Latency buckets depend on the machine's load, so the histogram is compared by its count only.
COUNTED = (
    "lianxin_grpc_server_started_total",
    "lianxin_grpc_server_handled_total",
    "lianxin_grpc_server_handling_seconds_count",
)


def _counted(method: str) -> dict[tuple[str, str], float]:
    """The RPC counts of ``method`` (``Method`` of intake, or ``package.Service/Method``) by series and code."""
    service, _, name = method.rpartition("/")
    wanted = {"service": service or INTAKE, "method": name}
    return {
        (sample.name, sample.labels.get("code", "")): sample.value
        for family in REGISTRY.collect()
        for sample in family.samples
        if sample.name in COUNTED and all(sample.labels.get(k) == v for k, v in wanted.items())
    }


def _submission(ref: str, title: str = "小区门口夜间施工噪音扰民") -> intake_pb2.SubmitCaseRequest:
    return intake_pb2.SubmitCaseRequest(
        channel=common_pb2.CHANNEL_HOTLINE,
        channel_ref=ref,
        title=title,
        body="乐山市市中区嘉州大道某小区门口夜间施工，噪音扰民，希望有关部门处理。",
        category="环境保护",
        region_code=NODE,
        hotline_operator_id="op-007",
        complainant=common_pb2.Person(name="张三", phone="13812345678"),
    )


def _calls(channel: grpc.Channel, case_id: str, tracking: str) -> list[tuple[str, Callable[[], Any]]]:
    intake = intake_grpc.IntakeServiceStub(channel)
    probe = health_pb2_grpc.HealthStub(channel)
    get = intake_pb2.GetCaseRequest
    forged = token(["admin"], key="another key")
    return [
        ("grpc.health.v1.Health/Check", lambda: probe.Check(health_pb2.HealthCheckRequest(service=INTAKE))),
        ("GetCase", lambda: intake.GetCase(get(case_id=case_id), metadata=token(["clerk"]))),
        ("GetCase", lambda: intake.GetCase(get(case_id=case_id), metadata=token(["handler"], unit="u-env"))),
        ("GetCase", lambda: intake.GetCase(get(case_id=f"{NODE}-20261206-999999"), metadata=token(["clerk"]))),
        ("GetCase", lambda: intake.GetCase(get(case_id="bad\x00id"), metadata=token(["clerk"]))),
        ("GetCase", lambda: intake.GetCase(get(case_id=case_id))),
        ("GetCase", lambda: intake.GetCase(get(case_id=case_id), metadata=token(["clerk"], ttl_s=-5))),
        ("GetCase", lambda: intake.GetCase(get(case_id=case_id), metadata=forged)),
        ("GetCase", lambda: intake.GetCase(get(case_id=case_id), metadata=token(["evaluator"]))),
        ("GetCase", lambda: intake.GetCase(get(case_id=case_id), metadata=token(["clerk"], node="511111"))),
        (
            "ListCases",
            lambda: intake.ListCases(intake_pb2.ListCasesRequest(region_code="510000"), metadata=token(["clerk"])),
        ),
        (
            "TrackCase",
            lambda: intake.TrackCase(intake_pb2.TrackCaseRequest(tracking_code=tracking, phone_last4="0000")),
        ),
        (
            "WithdrawCase",
            lambda: intake.WithdrawCase(intake_pb2.WithdrawCaseRequest(tracking_code=tracking, phone_last4="0000")),
        ),
        ("SubmitCase", lambda: intake.SubmitCase(_submission("calls-bad", title="两行\n标题"))),
        (
            "ReleaseModeratedCase",
            lambda: intake.ReleaseModeratedCase(
                intake_pb2.ReleaseModeratedCaseRequest(case_id=case_id), metadata=token(["handler"], unit="u-env")
            ),
        ),
        (
            "ImportCases",
            lambda: list(
                intake.ImportCases(
                    iter([intake_pb2.ImportCasesRequest(row_index=0, submission=_submission("row", title="a\x07b"))]),
                    metadata=token(["clerk"]),
                )
            ),
        ),
        ("no.Such/Method", lambda: channel.unary_unary("/no.Such/Method")(b"")),
    ]


def test_every_answer_metric_and_audit_record_is_the_one_the_per_call_chain_gives(
    node: Node, per_call_address: str
) -> None:
    audit = AuditLog(
        make_engine(service_database_url(node.settings, "audit"), service="audit"),
        NODE,
        key=load_audit_key(node.settings),
    )
    with grpc.insecure_channel(node.address) as built_once, grpc.insecure_channel(per_call_address) as per_call:
        submitted = intake_grpc.IntakeServiceStub(built_once).SubmitCase(_submission("calls-1"), timeout=10)
        case_id, tracking = submitted.case.case_id, submitted.tracking_code
        compared = 0
        for (method, new), (_, old) in zip(
            _calls(built_once, case_id, tracking), _calls(per_call, case_id, tracking), strict=True
        ):
            answers: list[tuple[object, ...]] = []
            counts: list[dict[tuple[str, str], float]] = []
            audited: list[list[tuple[str, str, str, str]]] = []
            for call in (new, old):
                before = _counted(method)
                audited_before = len(list(audit.records()))
                answers.append(_answer(call))
                after = _counted(method)
                counts.append({series: after[series] - before.get(series, 0.0) for series in after})
                records = list(audit.records())[audited_before:]
                audited.append([(r.actor, r.method, r.target, r.outcome) for r in records])
            assert answers[0] == answers[1], method
            assert counts[0] == counts[1], method
            assert audited[0] == audited[1], method
            compared += 1
    audit.engine.dispose()
    assert compared == 17
