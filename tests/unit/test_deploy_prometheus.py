"""deploy/prometheus: alert rules pass promtool checks and unit tests; scrape configs cover every service.

promtool comes from the Debian package ``prometheus``; without it these tests skip with the reason
(or fail when LIANXIN_REQUIRE_SERVICES=1, as in CI).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.common.settings import SERVICES
from services.federation import DEFAULT_TOPOLOGY

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS = REPO / "deploy" / "prometheus"
RULES = PROMETHEUS / "rules" / "lianxin.rules.yml"
RULE_TESTS = PROMETHEUS / "rules" / "lianxin.rules.test.yml"

# Each alert the operations guide documents, with the metric it watches.
ALERTS: dict[str, str] = {
    "LianxinServiceDown": "up",
    "LianxinHighErrorRatio": "lianxin_grpc_server_handled_total",
    "LianxinHighLatencyP99": "lianxin_grpc_server_handling_seconds_bucket",
    "LianxinOverdueWorkOrdersRising": "lianxin_work_orders_overdue",
    "LianxinOutboxStuck": "lianxin_outbox_oldest_age_seconds",
    "LianxinSyncLagHigh": "lianxin_exchange_link_lag_seconds",
    "LianxinQuarantineNotEmpty": "lianxin_exchange_quarantined",
    "LianxinCalendarEndsSoon": "lianxin_calendar_days_left",
    "LianxinCertificateExpiresSoon": "lianxin_tls_certificate_expiry_timestamp_seconds",
    "LianxinCertificateExpiresVerySoon": "lianxin_tls_certificate_expiry_timestamp_seconds",
    "LianxinWebGatewayErrors": "lianxin_web_requests_total",
}


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        message = "promtool is not installed (apt-get install -y prometheus)"
        if os.environ.get("LIANXIN_REQUIRE_SERVICES") == "1":
            pytest.fail(message + " (LIANXIN_REQUIRE_SERVICES=1)")
        pytest.skip(message)
    return path


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_promtool(), *args], capture_output=True, text=True, timeout=60, check=False)


def _load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
    return data


def test_alert_rules_pass_promtool_check() -> None:
    result = _run("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rules_behave_as_their_unit_tests_say() -> None:
    result = _run("test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_embedded_scrape_config_passes_promtool_check() -> None:
    result = _run("check", "config", str(PROMETHEUS / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_documented_alert_exists_and_watches_its_metric() -> None:
    rules = {rule["alert"]: rule for group in _load(RULES)["groups"] for rule in group["rules"] if "alert" in rule}
    assert set(rules) == set(ALERTS)
    recorded = {
        rule["record"]: rule["expr"] for group in _load(RULES)["groups"] for rule in group["rules"] if "record" in rule
    }
    for alert, metric in ALERTS.items():
        expr = rules[alert]["expr"]
        expanded = expr + "".join(body for name, body in recorded.items() if name in expr)
        assert metric in expanded, alert
        assert rules[alert]["labels"]["severity"] in {"warning", "critical"}
        assert rules[alert]["annotations"]["summary"], alert


def test_every_alert_has_a_unit_test() -> None:
    tested = {case["alertname"] for test in _load(RULE_TESTS)["tests"] for case in test.get("alert_rule_test", [])}
    assert tested == set(ALERTS)


def test_embedded_job_scrapes_every_node_of_lianxin_up_by_region_code() -> None:
    (job,) = _load(PROMETHEUS / "prometheus.yml")["scrape_configs"]
    targets = {static["targets"][0]: static["labels"]["node"] for static in job["static_configs"]}
    # `lianxin up` gives node i the metrics port 9400 + i (services/federation.py).
    assert targets == {f"127.0.0.1:{9400 + i}": code for i, (code, _parent) in enumerate(DEFAULT_TOPOLOGY)}


def test_kubernetes_config_has_a_job_per_service_keeping_its_metrics_port() -> None:
    config = _load(PROMETHEUS / "prometheus-kubernetes.yml")
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {f"lianxin-{service}" for service in (*SERVICES, "web")}
    for service in (*SERVICES, "web"):
        job = jobs[f"lianxin-{service}"]
        assert job["kubernetes_sd_configs"] == [{"role": "endpoints"}]
        keep = next(r for r in job["relabel_configs"] if r.get("action") == "keep")
        assert keep["regex"] == f"lianxin;{service};metrics"
        assert {"target_label": "node", "source_labels": ["__meta_kubernetes_pod_label_lianxin_node"]} in job[
            "relabel_configs"
        ]
    assert config["rule_files"] == ["rules/lianxin.rules.yml"]


def test_kubernetes_config_passes_promtool_when_it_knows_kubernetes_discovery() -> None:
    result = _run("check", "config", str(PROMETHEUS / "prometheus-kubernetes.yml"))
    if "kubernetes_sd_configs not found" in result.stdout + result.stderr:
        pytest.skip("this promtool was built without Kubernetes discovery (Debian's package leaves it out)")
    assert result.returncode == 0, result.stdout + result.stderr
