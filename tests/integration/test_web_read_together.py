"""The gateway asks the case page's reads in one call where the node can answer them together, and
gets the very same answers on its own otherwise (a node from before ReadTogether, a process that
serves only some of the services)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from lianxin.common.v1 import common_pb2
from lianxin.intake.v1 import intake_service_pb2 as intake_pb2
from lianxin.routing.v1 import routing_service_pb2 as routing_pb2
from lianxin.video.v1 import video_service_pb2 as video_pb2
from prometheus_client import REGISTRY

from services.common.grpcserver import GrpcServer
from services.common.security import issue_token
from services.common.settings import Settings
from services.node import Node
from services.web.client import CallFailed, NodeClient
from services.web.config import WebSettings
from tests.support.intake import submitted_and_assigned

KEY = "web-read-together-key"
NODE = "511102"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    settings = Settings(node=NODE, data_dir=tmp_path_factory.mktemp("node"), auth=True, token_key=KEY)
    started = Node(settings).start()
    yield started
    started.stop(grace=1.0)


@pytest.fixture(scope="module")
def case_id(node: Node) -> str:
    with grpc.insecure_channel(node.address) as channel:
        person = common_pb2.Person(phone="13800001234")
        return submitted_and_assigned(
            channel, (("authorization", f"Bearer {clerk()}"),), "web-reads", complainant=person
        )


def clerk() -> str:
    return issue_token(KEY.encode(), subject="clerk-1", node=NODE, unit="", roles=["clerk"], ttl_s=600)


def parts(case_id: str) -> list[tuple[str, str, Any, Any]]:
    return [
        ("intake", "GetCase", intake_pb2.GetCaseRequest(case_id=case_id), intake_pb2.GetCaseResponse),
        (
            "routing",
            "ListWorkOrders",
            routing_pb2.ListWorkOrdersRequest(case_id=case_id),
            routing_pb2.ListWorkOrdersResponse,
        ),
        ("video", "GetCaseVideo", video_pb2.GetCaseVideoRequest(case_id=case_id), video_pb2.GetCaseVideoResponse),
    ]


def together_and_alone(client: NodeClient, asked: list[tuple[str, str, Any, Any]]) -> tuple[list[Any], list[Any]]:
    async def ask() -> tuple[list[Any], list[Any]]:
        try:
            together = await client.aread_together(asked, clerk())
            alone = [await _settled(client.acall(s, m, r, clerk())) for s, m, r, _ in asked]
            return together, alone
        finally:
            await client.aclose()

    return asyncio.run(ask())


async def _settled(call: Any) -> Any:
    try:
        return await call
    except CallFailed as failure:
        return failure


def comparable(answer: Any) -> Any:
    if isinstance(answer, CallFailed):
        return (answer.code, answer.message, answer.field)
    # GetCase's masked phone and the work orders as the page reads them.
    return answer.SerializeToString(deterministic=True)


def read_together_calls() -> float:
    labels = {"service": "lianxin.common.v1.ReadsService", "method": "ReadTogether", "code": "OK"}
    return REGISTRY.get_sample_value("lianxin_grpc_server_handled_total", labels) or 0.0


def test_the_node_answers_the_case_pages_reads_in_one_call(node: Node, case_id: str) -> None:
    before = read_together_calls()
    together, alone = together_and_alone(NodeClient(WebSettings(grpc=node.address)), parts(case_id))
    assert read_together_calls() == before + 1
    assert [comparable(a) for a in together] == [comparable(a) for a in alone]
    assert together[0].case.case_id == case_id and "13800001234" not in str(together[0])


def test_a_missing_case_is_the_same_not_found_either_way(node: Node) -> None:
    together, alone = together_and_alone(NodeClient(WebSettings(grpc=node.address)), parts(f"{NODE}-20000101-999999"))
    assert isinstance(together[0], CallFailed) and together[0].status == 404
    assert [comparable(a) for a in together] == [comparable(a) for a in alone]


def test_a_node_without_read_together_is_asked_call_by_call(node: Node, case_id: str) -> None:
    # The three services' servicers on a plain grpcio server: a node from before ReadTogether.
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    for name in ("intake", "routing", "video"):
        for binding in node.parts[name].servicers:
            binding.add_to_server(binding.servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        client = NodeClient(WebSettings(grpc=f"127.0.0.1:{port}"))
        together, alone = together_and_alone(client, parts(case_id))
        assert not client._together  # remembered: the next page asks call by call at once
        assert [comparable(a) for a in together] == [comparable(a) for a in alone]
        assert together[0].case.case_id == case_id
    finally:
        server.stop(grace=None)


def test_a_process_without_one_of_the_services_answers_that_part_alone(
    node: Node, case_id: str, tmp_path: Path
) -> None:
    # A process of intake and routing only: video's part comes back UNIMPLEMENTED and is asked on its own.
    bindings = [b for name in ("intake", "routing") for b in node.parts[name].servicers]
    server = GrpcServer(bindings, Settings(node=NODE, data_dir=tmp_path, grpc_port=0, metrics_port=None))
    server.start()
    try:
        client = NodeClient(WebSettings(grpc=server.address))
        together, alone = together_and_alone(client, parts(case_id))
        assert client._together
        assert [comparable(a) for a in together] == [comparable(a) for a in alone]
        assert isinstance(together[2], CallFailed) and together[2].code is grpc.StatusCode.UNIMPLEMENTED
        assert together[1].work_orders[0].case_id == case_id
    finally:
        server.stop(1.0)


TRACED_GATEWAY = """
import asyncio, json, sys
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from lianxin.intake.v1 import intake_service_pb2 as intake_pb2
from lianxin.routing.v1 import routing_service_pb2 as routing_pb2
from services.web.client import NodeClient
from services.web.config import WebSettings

spans = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(spans))
trace.set_tracer_provider(provider)  # before the client: its channels then carry the tracing interceptor
address, case_id, token = sys.argv[1:4]
client = NodeClient(WebSettings(grpc=address))
parts = [
    ("intake", "GetCase", intake_pb2.GetCaseRequest(case_id=case_id), intake_pb2.GetCaseResponse),
    ("routing", "ListWorkOrders", routing_pb2.ListWorkOrdersRequest(case_id=case_id),
     routing_pb2.ListWorkOrdersResponse),
]
answers = asyncio.run(client.aread_together(parts, token))
print(json.dumps({
    "case": answers[0].case.case_id,
    "orders": [o.case_id for o in answers[1].work_orders],
    "spans": [span.name for span in spans.get_finished_spans()],
}))
"""


def test_with_a_tracer_the_reads_are_one_traced_call(node: Node, case_id: str) -> None:
    # A tracer is installed once per process and for good: the gateway runs in a process of its own.
    result = subprocess.run(
        [sys.executable, "-c", TRACED_GATEWAY, node.address, case_id, clerk()],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["case"] == case_id and seen["orders"] == [case_id]
    assert seen["spans"] == ["/lianxin.common.v1.ReadsService/ReadTogether"]
