"""Mutual TLS between nodes: a parent (乐山市 511100) accepts only certificates of its own subtree.

Certificates come from the same code as ``lianxin certs``; every case uses a real TLS channel.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from lianxin.exchange.v1 import exchange_service_pb2 as exchange_pb2
from lianxin.exchange.v1 import exchange_service_pb2_grpc as exchange_grpc

from services.common.commands import cmd_certs
from services.common.settings import Settings
from services.common.tls import Issued, NodeTls, cert_region, issue_node_cert, make_ca
from services.node import Node

PARENT = "511100"
DENIED = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAVAILABLE)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pki")
    import argparse

    args = argparse.Namespace(out=str(out), nodes=f"510000,{PARENT},511102,511111,510104", hosts="localhost,127.0.0.1")
    assert cmd_certs(args) == 0
    return out


@pytest.fixture()
def parent(pki: Path, tmp_path: Path) -> Iterator[Node]:
    settings = Settings(node=PARENT, data_dir=tmp_path, tls_dir=pki, require_mtls=True)
    # Only the service under test: node-to-node links are the exchange service's.
    node = Node(settings, services=("exchange",)).start()
    yield node
    node.stop(grace=1.0)


def push(node: Node, ca_pem: bytes, client: Issued | None, child: str) -> grpc.StatusCode:
    if client is None:
        credentials = grpc.ssl_channel_credentials(root_certificates=ca_pem)
    else:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=ca_pem, private_key=client.key_pem, certificate_chain=client.cert_pem
        )
    with grpc.secure_channel(node.address, credentials) as channel:
        stub = exchange_grpc.ExchangeServiceStub(channel)
        return code_of(lambda: stub.PushEvents(exchange_pb2.PushEventsRequest(child_node=child), timeout=5))


def code_of(call: Callable[[], object]) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as error:
        return error.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def load(pki: Path, code: str) -> Issued:
    return Issued((pki / f"{code}.pem").read_bytes(), (pki / f"{code}.key").read_bytes())


def test_certs_name_the_node_region_code(pki: Path) -> None:
    assert cert_region((pki / "511102.pem").read_bytes()) == "511102"
    assert (pki / "ca.pem").exists() and oct((pki / "511102.key").stat().st_mode)[-3:] == "600"


def test_a_child_of_the_parent_is_accepted(parent: Node, pki: Path) -> None:
    code = push(parent, (pki / "ca.pem").read_bytes(), load(pki, "511102"), "511102")
    assert code not in DENIED


def test_no_client_certificate_fails_the_handshake(parent: Node, pki: Path) -> None:
    assert push(parent, (pki / "ca.pem").read_bytes(), None, "511102") is grpc.StatusCode.UNAVAILABLE


def test_a_certificate_of_a_foreign_ca_is_refused(parent: Node, pki: Path) -> None:
    foreign = issue_node_cert(make_ca("someone else's CA"), "511102")
    assert push(parent, (pki / "ca.pem").read_bytes(), foreign, "511102") is grpc.StatusCode.UNAVAILABLE


def test_an_expired_certificate_is_refused(parent: Node, pki: Path) -> None:
    ca = Issued((pki / "ca.pem").read_bytes(), (pki / "ca.key").read_bytes())
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=30)
    expired = issue_node_cert(ca, "511102", not_before=past - dt.timedelta(days=365), not_after=past)
    assert push(parent, ca.cert_pem, expired, "511102") is grpc.StatusCode.UNAVAILABLE


def test_a_certificate_of_a_node_outside_the_subtree_is_permission_denied(parent: Node, pki: Path) -> None:
    ca_pem = (pki / "ca.pem").read_bytes()
    # 成都市锦江区 is a valid node of the same CA, but not below 乐山市.
    assert push(parent, ca_pem, load(pki, "510104"), "510104") is grpc.StatusCode.PERMISSION_DENIED
    # 沙湾区 is below 乐山市 but may not speak for 市中区.
    assert push(parent, ca_pem, load(pki, "511111"), "511102") is grpc.StatusCode.PERMISSION_DENIED
    # A node cannot act as its own child.
    assert push(parent, ca_pem, load(pki, PARENT), PARENT) is grpc.StatusCode.PERMISSION_DENIED


def test_a_county_certificate_cannot_push_straight_to_the_province(pki: Path, tmp_path: Path) -> None:
    province = Node(
        Settings(node="510000", data_dir=tmp_path / "province", tls_dir=pki, require_mtls=True), services=("exchange",)
    ).start()
    try:
        ca_pem = (pki / "ca.pem").read_bytes()
        county = load(pki, "511102")
        # Neither as itself (not a child of the province) nor speaking for its city.
        assert push(province, ca_pem, county, "511102") is grpc.StatusCode.PERMISSION_DENIED
        assert push(province, ca_pem, county, PARENT) is grpc.StatusCode.PERMISSION_DENIED
        assert push(province, ca_pem, load(pki, PARENT), PARENT) not in DENIED
    finally:
        province.stop(grace=1.0)


def test_node_tls_channel_credentials_reach_the_parent(parent: Node, pki: Path) -> None:
    tls = NodeTls.load(pki, "511102")
    with grpc.secure_channel(parent.address, tls.channel_credentials()) as channel:
        stub = exchange_grpc.ExchangeServiceStub(channel)
        code = code_of(lambda: stub.PushEvents(exchange_pb2.PushEventsRequest(child_node="511102"), timeout=5))
    assert code not in DENIED


def test_a_child_node_with_its_certificate_replicates_to_its_mtls_parent(pki: Path, tmp_path: Path) -> None:
    """The whole link under mutual TLS: the child's exchange presents its own node certificate."""
    from lianxin.common.v1 import common_pb2
    from lianxin.intake.v1 import intake_service_pb2, intake_service_pb2_grpc
    from lianxin.stats.v1 import stats_service_pb2, stats_service_pb2_grpc

    from services.common.tls import NodeTls, client_credentials
    from tests.support.helpers import wait_until

    parent = Node(Settings(node=PARENT, data_dir=tmp_path / "parent", tls_dir=pki, require_mtls=True)).start()
    child = Node(
        Settings(node="511102", data_dir=tmp_path / "child", tls_dir=pki, require_mtls=True, parent=parent.address)
    ).start()
    try:
        with grpc.secure_channel(child.address, client_credentials(pki, "511102")) as to_child:
            intake_service_pb2_grpc.IntakeServiceStub(to_child).SubmitCase(
                intake_service_pb2.SubmitCaseRequest(
                    channel=common_pb2.CHANNEL_WEB,
                    channel_ref="tls-1",
                    title="路灯不亮",
                    body="乐山市市中区某小区门口路灯长期不亮",
                    category="城乡建设",
                    region_code="511102",
                    anonymous=True,
                ),
                timeout=10,
            )
        credentials = NodeTls.load(pki, PARENT).channel_credentials()
        with grpc.secure_channel(parent.address, credentials) as to_parent:
            stats = stats_service_pb2_grpc.StatsServiceStub(to_parent)

            def counted_at_parent() -> bool:
                reply = stats.GetMetrics(stats_service_pb2.GetMetricsRequest(region_code="511102"), timeout=5)
                return bool(reply.metrics[0].numerator == 1)

            wait_until(counted_at_parent, timeout=30, message="the child's case counted at the parent over mTLS")
    finally:
        child.stop(grace=1.0)
        parent.stop(grace=1.0)
