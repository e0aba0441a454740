"""Host mode (services/host.py): a city and two of its counties in one process, each still a node of
its own — its own databases, its own certificate on its own port — cases flowing county → city inside
the process, and one stop that ends every node."""

from __future__ import annotations

import argparse
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from lianxin.common.v1 import common_pb2
from lianxin.exchange.v1 import exchange_service_pb2 as exchange_pb2
from lianxin.exchange.v1 import exchange_service_pb2_grpc as exchange_grpc
from lianxin.intake.v1 import intake_service_pb2 as intake_pb2
from lianxin.intake.v1 import intake_service_pb2_grpc as intake_grpc

from services.common.commands import cmd_certs
from services.common.regions import RegionTree
from services.common.settings import Settings
from services.common.tls import cert_region, client_credentials
from services.host import Host, members_from_codes
from tests.support.helpers import wait_until

CITY, COUNTIES = "511100", ("511102", "511111")


@pytest.fixture()
def pki(tmp_path: Path) -> Path:
    out = tmp_path / "pki"
    args = argparse.Namespace(out=str(out), nodes=",".join((CITY, *COUNTIES)), hosts="localhost,127.0.0.1")
    assert cmd_certs(args) == 0
    return out


@pytest.fixture()
def host(pki: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Host]:
    monkeypatch.setenv("LIANXIN_INTAKE_CLASSIFIER", "off")
    regions = RegionTree.load()
    settings = Settings(data_dir=tmp_path / "data", tls_dir=pki, require_mtls=True, metrics_port=None)
    # Listed counties first: the host still starts the city before the counties that link to it.
    members = members_from_codes([*COUNTIES, CITY], regions, parent=None, national=None)
    threads_before = {thread.ident for thread in threading.enumerate()}
    running = Host(settings, members, regions=regions).start()
    yield running
    running.stop(grace=1.0)

    # Stopping the host ends every node's loops: no thread it started is left behind.
    def left() -> list[str]:
        return [t.name for t in threading.enumerate() if t.ident not in threads_before and not t.daemon]

    wait_until(lambda: not left(), timeout=30, message="the host's non-daemon threads to end")


def served_region(address: str, pki: Path, client: str) -> str:
    """The region code in the certificate the server at ``address`` presents (a real TLS handshake)."""
    context = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    context.check_hostname = False
    context.load_cert_chain(str(pki / f"{client}.pem"), str(pki / f"{client}.key"))
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as raw, context.wrap_socket(raw) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return cert_region(ssl.DER_cert_to_PEM_cert(der).encode())


def submit(address: str, pki: Path, county: str, ref: str) -> str:
    with grpc.secure_channel(address, client_credentials(pki, county)) as channel:
        reply = intake_grpc.IntakeServiceStub(channel).SubmitCase(
            intake_pb2.SubmitCaseRequest(
                channel=common_pb2.CHANNEL_WEB,
                channel_ref=ref,
                title="路灯不亮",
                body="小区门口的路灯已经坏了两个星期，晚上出行很不方便",
                category="城乡建设",
                region_code=county,
                anonymous=True,
            ),
            timeout=30,
        )
    return str(reply.case.case_id)


def held(address: str, pki: Path, client: str, *, subtree: str = "", case_id: str = "") -> int:
    with grpc.secure_channel(address, client_credentials(pki, client)) as channel:
        request = exchange_pb2.ListReplicasRequest(subtree_node=subtree, case_id=case_id, max_items=0)
        return int(exchange_grpc.ExchangeServiceStub(channel).ListReplicas(request, timeout=10).count)


def test_each_node_of_a_host_keeps_its_own_port_certificate_and_databases(host: Host, pki: Path) -> None:
    assert list(host.nodes) == [CITY, *COUNTIES]  # parents first, whatever the order given
    addresses = {code: node.address for code, node in host.nodes.items()}
    assert len(set(addresses.values())) == 3
    for code, address in addresses.items():
        assert served_region(address, pki, CITY) == code
    data = Path(host.settings.data_dir)
    for code in (CITY, *COUNTIES):
        assert (data / code / "intake.db").exists() and (data / code / "exchange.db").exists()
    # The counties link to the city in the same process, by its address.
    assert host.node(COUNTIES[0]).settings.parent == addresses[CITY]
    assert host.node(CITY).settings.parent is None


def test_cases_flow_from_both_counties_to_the_city_inside_one_process(host: Host, pki: Path) -> None:
    city = host.node(CITY).address
    cases = {county: submit(host.node(county).address, pki, county, f"host-{county}") for county in COUNTIES}
    for county, case_id in cases.items():
        wait_until(
            lambda case_id=case_id: held(city, pki, CITY, case_id=case_id) > 0,
            timeout=60,
            message=f"{county}'s case at the city",
        )
    # Each county's databases hold its own case only; the city holds both.
    first, second = COUNTIES
    assert held(host.node(first).address, pki, first, case_id=cases[second]) == 0
    assert held(host.node(second).address, pki, second, case_id=cases[first]) == 0
    for county in COUNTIES:
        own = held(host.node(county).address, pki, county, subtree=county)
        wait_until(lambda county=county, own=own: held(city, pki, CITY, subtree=county) == own, timeout=60)


def test_stopping_the_host_stops_every_node(pki: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIANXIN_INTAKE_CLASSIFIER", "off")
    regions = RegionTree.load()
    settings = Settings(data_dir=tmp_path / "data", tls_dir=pki, require_mtls=True, metrics_port=None)
    host = Host(settings, members_from_codes([CITY, *COUNTIES], regions, parent=None, national=None), regions=regions)
    host.start()
    ports = [int(node.address.rsplit(":", 1)[1]) for node in host.nodes.values()]
    loops = [(node.relay_loop, node.timer_loop) for node in host.nodes.values()]
    host.stop(grace=1.0)
    for port in ports:
        with socket.socket() as probe, pytest.raises(OSError):
            probe.settimeout(2)
            probe.connect(("127.0.0.1", port))
    for relay, timers in loops:
        assert relay is not None and not relay._thread.is_alive()
        assert timers is not None and not timers._thread.is_alive()
