"""routing's ListUnits: the node's handling units by name, so pages show 区生态环境局 and not a code."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from lianxin.routing.v1 import routing_service_pb2 as routing_pb2
from lianxin.routing.v1 import routing_service_pb2_grpc as routing_grpc

from services.common.regions import RegionTree
from services.common.security import bearer_metadata, issue_token
from services.common.settings import Settings
from services.node import Node
from services.routing.jurisdiction import load_catalogue

KEY = "units-test-key"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    settings = Settings(node="511102", data_dir=tmp_path_factory.mktemp("units"), auth=True, token_key=KEY)
    started = Node(settings).start()
    yield started
    started.stop(grace=1.0)


def test_list_units_names_every_unit_of_the_nodes_catalogue(node: Node) -> None:
    catalogue = load_catalogue("511102", RegionTree.load())
    token = issue_token(KEY.encode(), subject="portal", node="511102", roles=["auditor"], ttl_s=60)
    with grpc.insecure_channel(node.address) as channel:
        reply = routing_grpc.RoutingServiceStub(channel).ListUnits(
            routing_pb2.ListUnitsRequest(), metadata=bearer_metadata(token), timeout=10
        )
    names = {u.unit_id: u.name for u in reply.units}
    assert names == {unit.id: unit.name for unit in catalogue.units.values()}
    handling = catalogue.unit_for("环境保护", "511102")
    assert handling and names[handling].endswith("局") and names[handling] != handling
    assert {u.node for u in reply.units} == {"511102"}
    assert all(u.categories for u in reply.units if u.unit_id != catalogue.default_unit)


def test_list_units_is_for_signed_in_callers_only(node: Node) -> None:
    with grpc.insecure_channel(node.address) as channel, pytest.raises(grpc.RpcError) as refused:
        routing_grpc.RoutingServiceStub(channel).ListUnits(routing_pb2.ListUnitsRequest(), timeout=10)
    assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
