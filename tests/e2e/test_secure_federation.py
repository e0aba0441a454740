"""`lianxin up --secure` end to end: three node processes with their own certificates from one CA,
mutual TLS on every link and client, operator tokens per node; a case submitted at the county over
TLS replicates to the city and the province, and neither a plaintext client nor another node's
admin token gets in.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from lianxin.common.v1 import common_pb2
from lianxin.exchange.v1 import exchange_service_pb2 as exchange_pb2
from lianxin.exchange.v1 import exchange_service_pb2_grpc as exchange_grpc
from lianxin.intake.v1 import intake_service_pb2 as intake_pb2
from lianxin.intake.v1 import intake_service_pb2_grpc as intake_grpc

from services.common.security import bearer_metadata
from services.federation import BUSINESS_SERVICES, Federation, health_statuses
from tests.support.helpers import free_port_block, wait_until

TOPOLOGY = (("510000", None), ("511100", "510000"), ("511102", "511100"))


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    base = free_port_block(2 * len(TOPOLOGY))
    fed = Federation(
        data_dir=Path(tmp_path_factory.mktemp("secure-federation")),
        base_port=base,
        metrics_base_port=base + len(TOPOLOGY),
        topology=TOPOLOGY,
        extra_env={"LIANXIN_LOG_LEVEL": "WARNING"},
        with_national=False,  # the secure national simulator: tests/e2e/test_secure_demo.py
        secure=True,
    )
    try:
        fed.start(ready_timeout_s=120)  # readiness is checked over mutual TLS
        yield fed
    finally:
        fed.stop()


def test_every_node_is_ready_over_mutual_tls_and_refuses_plaintext(federation: Federation) -> None:
    for node in federation.nodes:
        statuses = health_statuses(node.address, BUSINESS_SERVICES, credentials=federation.credentials_for(node.code))
        assert set(statuses.values()) == {"SERVING"}, (node.code, statuses)
        assert set(health_statuses(node.address, BUSINESS_SERVICES).values()) == {"UNREACHABLE"}
    # Every node has its own keys, made into its data directory.
    keys = {(federation.data_dir / n.code / "data-keys").read_text() for n in federation.nodes}
    assert len(keys) == len(federation.nodes)


def test_a_case_submitted_over_tls_replicates_up_and_tokens_are_per_node(federation: Federation) -> None:
    county, city, province = (federation.node(code) for code in ("511102", "511100", "510000"))
    tokens = federation.admin_tokens()
    with grpc.secure_channel(county.address, federation.credentials_for(county.code)) as channel:
        reply = intake_grpc.IntakeServiceStub(channel).SubmitCase(
            intake_pb2.SubmitCaseRequest(
                channel=common_pb2.CHANNEL_WEB,
                channel_ref="secure-e2e-1",
                title="小区门口夜间施工噪音扰民",
                body="乐山市市中区嘉州大道某小区门口夜间施工，噪音扰民。",
                region_code="511102",
                category="环境保护",
                anonymous=True,
            ),
            timeout=10,
        )
    case_id = reply.case.case_id

    def held_at(node_code: str, address: str) -> int:
        with grpc.secure_channel(address, federation.credentials_for(node_code)) as channel:
            answer = exchange_grpc.ExchangeServiceStub(channel).ListReplicas(
                exchange_pb2.ListReplicasRequest(case_id=case_id),
                metadata=bearer_metadata(tokens[node_code]),
                timeout=5,
            )
        return int(answer.count)

    wait_until(lambda: held_at("511100", city.address) >= 1, 60, "the case's events at the city over mTLS")
    wait_until(lambda: held_at("510000", province.address) >= 1, 60, "the case's events at the province")

    # A token is signed with its node's own key: the county's admin token means nothing at the city.
    with (
        grpc.secure_channel(city.address, federation.credentials_for(city.code)) as channel,
        pytest.raises(grpc.RpcError) as refused,
    ):
        exchange_grpc.ExchangeServiceStub(channel).ListReplicas(
            exchange_pb2.ListReplicasRequest(case_id=case_id),
            metadata=bearer_metadata(tokens["511102"]),
            timeout=5,
        )
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
