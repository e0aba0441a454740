"""The province's national link against the simulator (with faults), and signed offline packages via the CLI."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from lianxin.events.v1 import events_pb2
from lianxin.exchange.v1 import exchange_service_pb2 as exchange_pb2
from lianxin.exchange.v1 import exchange_service_pb2_grpc as exchange_grpc
from lianxin.national.v1 import national_service_pb2 as national_pb2
from lianxin.national.v1 import national_service_pb2_grpc as national_grpc

from services.cli import main
from services.common.service import BusEvent, Subscription
from services.common.settings import Settings
from services.exchange import national_sim
from services.node import Node
from tests.support.exchange_nodes import replicas, submit
from tests.support.helpers import wait_until


@pytest.fixture()
def simulator() -> Iterator[tuple[str, national_sim.NationalSimulator]]:
    faults = national_sim.Faults(error_rate=0.3, duplicate_rate=0.5, reorder=True, seed=7)
    server, sim = national_sim.serve(faults=faults)
    yield server.address, sim
    server.stop(0.5)


def test_national_transfer_reaches_the_county_once_and_reports_go_up(
    tmp_path: Path, simulator: tuple[str, national_sim.NationalSimulator]
) -> None:
    address, sim = simulator
    common = {"data_dir": tmp_path, "relay_interval_s": 0.05, "log_json": False}
    province = Node(Settings(node="510000", national=address, **common)).start()  # type: ignore[arg-type]
    city = Node(Settings(node="511100", parent=province.address, **common)).start()  # type: ignore[arg-type]
    county = Node(Settings(node="511102", parent=city.address, **common)).start()  # type: ignore[arg-type]
    try:
        arrived: list[events_pb2.EventEnvelope] = []

        def on_arrival(event: BusEvent) -> None:
            env = events_pb2.EventEnvelope()
            env.ParseFromString(event.body)
            arrived.append(env)

        county.bus.subscribe(Subscription("probe", "exchange", "case_handed_off", on_arrival))
        stub = national_grpc.NationalServiceStub(grpc.insecure_channel(address))
        ids = [
            stub.SubmitTransfer(
                national_pb2.SubmitTransferRequest(
                    province_code="510000",
                    transfer=national_pb2.NationalTransfer(
                        title=f"国家转送件 {i}", body="反映乐山市市中区拖欠农民工工资问题。", region_code="511102"
                    ),
                ),
                timeout=5,
            ).transfer_id
            for i in range(3)
        ]
        case_id = submit(county, "call-n-1")

        wait_until(lambda: len(arrived) >= 3, 30, "three national transfers at 市中区")
        assert sorted(e.case_handed_off.case.title for e in arrived) == [f"国家转送件 {i}" for i in range(3)]
        assert {e.case_handed_off.kind for e in arrived} == {"national_transfer"}

        def reported() -> set[str]:
            listed = stub.ListReports(national_pb2.ListReportsRequest(province_code="510000"), timeout=5)
            return {r.case_id for r in listed.reports}

        wait_until(lambda: case_id in reported(), 30, "the county's case reported to the national system")
        wait_until(
            lambda: (
                set(ids)
                <= set(
                    stub.ListReports(
                        national_pb2.ListReportsRequest(province_code="510000"), timeout=5
                    ).acked_transfer_ids
                )
            ),
            30,
            "the province to acknowledge the transfers",
        )
        assert sim.failed_calls > 0  # the faults did happen, and the link rode them out
        assert len(arrived) == 3  # duplicates from the national side were not doubled
        links = exchange_grpc.ExchangeServiceStub(grpc.insecure_channel(province.address)).LinkStatus(
            exchange_pb2.LinkStatusRequest(peer_node="national"), timeout=5
        )
        assert links.links[0].direction == exchange_pb2.LINK_DIRECTION_UP
    finally:
        for node in (county, city, province):
            node.stop(grace=0.5)


def test_offline_package_moves_changes_once_and_a_tampered_file_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    county_dir, city_dir = tmp_path / "county", tmp_path / "city"
    county = Node(Settings(node="511102", data_dir=county_dir, relay_interval_s=0.05, log_json=False)).start()
    try:
        cases = [submit(county, f"call-off-{i}") for i in range(3)]
        wait_until(lambda: replicas(county, "511102").count >= 6, 10, "the county's own events in its log")
        county.drain()
        expected = replicas(county, "511102")
    finally:
        county.stop(grace=0.5)

    package = tmp_path / "county.lxp"
    monkeypatch.setenv("LIANXIN_NODE", "511102")
    monkeypatch.setenv("LIANXIN_DATA_DIR", str(county_dir))
    assert main(["exchange", "export", "--since", "0", "--out", str(package)]) == 0
    assert f"exported {expected.count} events" in capsys.readouterr().out

    # The county signed with its own key, made on this first export (no built-in default exists).
    county_key = county_dir / "511102" / "exchange-key"
    assert county_key.stat().st_mode & 0o777 == 0o600
    tampered = tmp_path / "tampered.lxp"
    tampered.write_bytes(package.read_bytes().replace(b'"since": 0', b'"since": 1'))
    monkeypatch.setenv("LIANXIN_NODE", "511100")
    monkeypatch.setenv("LIANXIN_DATA_DIR", str(city_dir))
    # The city holds no key for the county's packages yet: refused, saying where the key goes.
    assert main(["exchange", "import", str(package)]) == 2
    assert "no key for packages from 511102" in capsys.readouterr().err
    (city_dir / "511100" / "exchange-keys").mkdir(parents=True)
    (city_dir / "511100" / "exchange-keys" / "511102").write_bytes(county_key.read_bytes())
    assert main(["exchange", "import", str(tampered)]) == 2
    assert "signature mismatch" in capsys.readouterr().err
    monkeypatch.setenv("LIANXIN_EXCHANGE_KEY", "another-link-key")
    assert main(["exchange", "import", str(package)]) == 2
    monkeypatch.delenv("LIANXIN_EXCHANGE_KEY")

    assert main(["exchange", "import", str(package)]) == 0
    assert main(["exchange", "import", str(package)]) == 0  # again: nothing doubled
    city = Node(Settings(node="511100", data_dir=city_dir, relay_interval_s=0.05, log_json=False)).start()
    try:
        held = replicas(city, "511102")
        assert held.count == expected.count and held.digest == expected.digest
        assert {e.case_id for e in held.entries} == set(cases)
    finally:
        city.stop(grace=0.5)

    monkeypatch.setenv("LIANXIN_NODE", "510000")
    monkeypatch.setenv("LIANXIN_EXCHANGE_KEY", str(county_key))  # the key given as a file
    assert main(["exchange", "import", str(package)]) == 2  # 511102 is not a child of the province
    assert "not a direct child" in capsys.readouterr().err
