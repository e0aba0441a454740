"""A real Prometheus, run with the shipped embedded config and alert rules, scrapes a running node.

The node's RPC counters reach Prometheus (what the dashboard and the alerts read), and the shipped
rules load into a real server. The ``prometheus`` binary comes from the Debian package of that
name; without it the test skips with the reason (or fails when LIANXIN_REQUIRE_SERVICES=1).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from lianxin.stats.v1 import stats_service_pb2, stats_service_pb2_grpc

from services.common.settings import Settings
from services.node import Node
from tests.support.helpers import stop_process, wait_until

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "deploy" / "prometheus"
JOB = "lianxin-embedded"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get(url: str) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            data: dict[str, Any] = json.loads(response.read())
            return data
    except (urllib.error.URLError, ConnectionError, json.JSONDecodeError):
        return None


@pytest.fixture()
def node(tmp_path: Path) -> Iterator[Node]:
    node = Node(Settings(node="511102", data_dir=tmp_path / "node")).start()
    try:
        yield node
    finally:
        node.stop(0.5)


@pytest.fixture()
def prometheus(node: Node, tmp_path: Path) -> Iterator[str]:
    binary = shutil.which("prometheus")
    if binary is None:
        message = "the prometheus server is not installed (apt-get install -y prometheus)"
        if os.environ.get("LIANXIN_REQUIRE_SERVICES") == "1":
            pytest.fail(message + " (LIANXIN_REQUIRE_SERVICES=1)")
        pytest.skip(message)
    # The shipped config, pointed at this node's /metrics and scraping often so the test is quick.
    config = yaml.safe_load((SHIPPED / "prometheus.yml").read_text(encoding="utf-8"))
    config["global"]["scrape_interval"] = "1s"
    config["rule_files"] = [str(SHIPPED / rule) for rule in config["rule_files"]]
    (job,) = config["scrape_configs"]
    assert job["job_name"] == JOB
    job["scrape_interval"] = "250ms"
    job["scrape_timeout"] = "200ms"
    job["static_configs"] = [{"targets": [f"127.0.0.1:{node.metrics_port}"], "labels": {"node": node.code}}]
    config_file = tmp_path / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config), encoding="utf-8")
    port = _free_port()
    log = (tmp_path / "prometheus.log").open("w")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config_file}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(
            lambda: process.poll() is not None or _get(f"{base}/api/v1/status/buildinfo") is not None,
            timeout=20,
            message="Prometheus to answer",
        )
        assert process.poll() is None, (tmp_path / "prometheus.log").read_text()
        yield base
    finally:
        stop_process(process)
        log.close()


def _query(base: str, expr: str) -> list[dict[str, Any]]:
    reply = _get(f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    if reply is None or reply.get("status") != "success":
        return []
    result: list[dict[str, Any]] = reply["data"]["result"]
    return result


def test_prometheus_scrapes_a_running_nodes_rpc_metrics(node: Node, prometheus: str) -> None:
    # A business RPC, so the server counters for StatsService/GetMetrics exist on /metrics.
    with grpc.insecure_channel(node.address) as channel:
        stub = stats_service_pb2_grpc.StatsServiceStub(channel)
        stub.GetMetrics(stats_service_pb2.GetMetricsRequest(region_code="511102"), timeout=10)

    def target_up() -> bool:
        return any(r["value"][1] == "1" for r in _query(prometheus, f'up{{job="{JOB}", node="511102"}}'))

    wait_until(target_up, timeout=30, message=f"up{{job={JOB!r}}} == 1")

    handled = (
        f'lianxin_grpc_server_handled_total{{job="{JOB}", node="511102", '
        'service="lianxin.stats.v1.StatsService", method="GetMetrics", code="OK"}'
    )
    wait_until(lambda: _query(prometheus, handled), timeout=30, message="the GetMetrics counter in Prometheus")
    (series,) = _query(prometheus, handled)
    assert float(series["value"][1]) >= 1

    # The shipped alert rules loaded into the real server, and none fires for a healthy node.
    rules = _get(f"{prometheus}/api/v1/rules")
    assert rules is not None
    alerts = {r["name"] for g in rules["data"]["groups"] for r in g["rules"] if r["type"] == "alerting"}
    assert {"LianxinServiceDown", "LianxinHighErrorRatio", "LianxinOutboxStuck"} <= alerts
    firing = _get(f"{prometheus}/api/v1/alerts")
    assert firing is not None
    assert [a for a in firing["data"]["alerts"] if a["state"] == "firing"] == []
