"""Host mode on PostgreSQL: one ``lianxin host`` process serving county, city and province, each node
in a database of its own with a schema per service, carries a case from the county to the province."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import sqlalchemy as sa
from lianxin.common.v1 import common_pb2
from lianxin.exchange.v1 import exchange_service_pb2 as exchange_pb2
from lianxin.exchange.v1 import exchange_service_pb2_grpc as exchange_grpc
from lianxin.intake.v1 import intake_service_pb2 as intake_pb2
from lianxin.intake.v1 import intake_service_pb2_grpc as intake_grpc

from tests.support.helpers import wait_until

NODES = ("510000", "511100", "511102")
SERVING = re.compile(r"node (\d{6}) serving on (\S+)")


@pytest.fixture()
def databases(postgres_admin_url: str) -> Iterator[str]:
    """One database per node (``{node}`` in the URL), dropped afterwards; yields the URL template."""
    run = uuid.uuid4().hex[:10]
    admin = sa.create_engine(postgres_admin_url, isolation_level="AUTOCOMMIT")
    names = [f"lianxin_host_{run}_{code}" for code in NODES]
    try:
        with admin.connect() as conn:
            for name in names:
                conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        yield postgres_admin_url.rsplit("/", 1)[0] + f"/lianxin_host_{run}_{{node}}"
    finally:
        with admin.connect() as conn:
            for name in names:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture()
def host(databases: str, tmp_path: Path) -> Iterator[dict[str, str]]:
    env = {
        **os.environ,
        "LIANXIN_DATABASE_URL": databases,
        "LIANXIN_DATA_DIR": str(tmp_path),
        "LIANXIN_METRICS_PORT": "0",
        "LIANXIN_INTAKE_CLASSIFIER": "off",
        "LIANXIN_LOG_LEVEL": "WARNING",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "host", "--nodes", ",".join(NODES)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    addresses: dict[str, str] = {}
    started = threading.Event()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            found = SERVING.search(line)
            if found:
                addresses[found.group(1)] = found.group(2)
            if line.startswith("host serving"):
                started.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        wait_until(lambda: started.is_set() or process.poll() is not None, 180, "the host's three nodes")
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
        yield addresses
    finally:
        process.terminate()
        try:
            _, stderr = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            _, stderr = process.communicate()
        assert "Traceback" not in (stderr or ""), (stderr or "")[-3000:]


def test_a_case_submitted_at_the_county_reaches_the_province_through_the_host(host: dict[str, str]) -> None:
    assert sorted(host) == sorted(NODES)
    with grpc.insecure_channel(host["511102"]) as channel:
        case_id = (
            intake_grpc.IntakeServiceStub(channel)
            .SubmitCase(
                intake_pb2.SubmitCaseRequest(
                    channel=common_pb2.CHANNEL_WEB,
                    channel_ref=f"host-pg-{uuid.uuid4().hex[:8]}",
                    title="路灯不亮",
                    body="小区门口的路灯已经坏了两个星期，晚上出行很不方便",
                    category="城乡建设",
                    region_code="511102",
                    anonymous=True,
                ),
                timeout=60,
            )
            .case.case_id
        )

    def held(code: str) -> int:
        with grpc.insecure_channel(host[code]) as channel:
            request = exchange_pb2.ListReplicasRequest(case_id=case_id, max_items=0)
            return int(exchange_grpc.ExchangeServiceStub(channel).ListReplicas(request, timeout=10).count)

    wait_until(lambda: held("510000") > 0, 60, f"case {case_id} at the province")
    # The province holds what the county holds of its own case, through the city, each on its own database.
    wait_until(lambda: held("510000") == held("511102") == held("511100"), 60, "the same events at every tier")
