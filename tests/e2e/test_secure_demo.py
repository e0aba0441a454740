"""`lianxin up --secure` with the national simulator, and `lianxin demo --secure` through it.

Six node processes and the national simulator, each with its own certificate from one CA: every link
(the province's to the national system too) and every client on mutual TLS, operator tokens per
node. The scripted day (hotline case, hand-down two tiers, the citizen's rating, a joint video
reception, a national transfer, reconcile) runs over TLS with each node's admin token; the national
simulator refuses a client without a certificate and a province reporting for another.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from lianxin.national.v1 import national_service_pb2 as national_pb2
from lianxin.national.v1 import national_service_pb2_grpc as national_grpc

from services.common.tls import NATIONAL_CODE
from services.federation import Federation, health_statuses
from tests.support.helpers import running_federation

pytestmark = pytest.mark.slow
NATIONAL = ["lianxin.national.v1.NationalService"]


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    with running_federation(Path(tmp_path_factory.mktemp("secure-demo")), ready_timeout_s=240, secure=True) as started:
        yield started


def test_the_national_simulator_speaks_mutual_tls_and_knows_its_provinces(federation: Federation) -> None:
    national = federation.national_address
    assert national is not None
    assert health_statuses(national, NATIONAL, credentials=federation.credentials_for(NATIONAL_CODE)) == {
        NATIONAL[0]: "SERVING"
    }
    assert health_statuses(national, NATIONAL) == {NATIONAL[0]: "UNREACHABLE"}  # plaintext: no handshake
    # A county's certificate cannot fetch the province's transfers.
    with (
        grpc.secure_channel(national, federation.credentials_for("511102")) as channel,
        pytest.raises(grpc.RpcError) as refused,
    ):
        national_grpc.NationalServiceStub(channel).FetchTransfers(
            national_pb2.FetchTransfersRequest(province_code="510000", max_items=1), timeout=10
        )
    assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED


def test_demo_day_runs_through_a_secure_federation(federation: Federation, messages_csv: Path) -> None:
    from services.demo import run

    lines: list[str] = []
    code = run(base_port=federation.nodes[0].grpc_port, say=lines.append, secure_data_dir=federation.data_dir)
    text = "\n".join(lines)
    assert code == 0, text
    assert "routed to unit" in text and "REPLIED" in text
    assert "rated: satisfied" in text
    assert "national system transfers" in text
    assert text.splitlines()[-2].endswith(" 0 divergences"), text
