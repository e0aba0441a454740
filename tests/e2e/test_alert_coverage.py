"""Every alert can fire in Kubernetes: its metric is exported by a process that the scrape config reaches.

Three things are checked together, each from the real artefact:

- the metrics each alert rule reads (deploy/prometheus/rules/lianxin.rules.yml, recording rules followed);
- which process exports which metric: one node's ten production processes (``lianxin serve`` and
  ``lianxin worker`` per service, PostgreSQL, RabbitMQ, mTLS on and a parent configured, as a county
  runs) are started and their /metrics pages read, right after start and before any traffic, since
  labelled series must exist from the start;
- which processes Prometheus scrapes in Kubernetes: each tier's manifests rendered with kustomize,
  the Services' endpoints run through every job's relabelling in
  deploy/prometheus/prometheus-kubernetes.yml, down to the container (its command) and the port its
  process serves metrics on.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from services.common.crypto import new_data_key
from services.common.names import SERVICES
from tests.support.helpers import wait_until
from tests.support.k8s import KUBECTL, OVERLAYS
from tests.support.k8s import render as _render
from tests.support.k8s import tool_missing as _tool_missing
from tests.support.production import NODE, ProductionNode
from tests.support.production import free_port as _free_port
from tests.support.services import fresh_postgres_database, fresh_vhost

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "deploy" / "prometheus" / "rules" / "lianxin.rules.yml"
SCRAPE = REPO / "deploy" / "prometheus" / "prometheus-kubernetes.yml"
Process = tuple[str, str]  # (command, service): ("worker", "intake") is intake-worker
pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.rabbitmq]


# ------------------------------------------------------------------------------------------ the rules


def _rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]
    return [rule for group in groups for rule in group["rules"]]


def _series_read(expr: str, recorded: dict[str, str]) -> set[str]:
    """Metric names an expression reads, through recording rules; label names never start with lianxin."""
    names: set[str] = set()
    for name in re.findall(r"\b(lianxin[_:][a-z0-9_:]*)", expr):
        names |= _series_read(recorded[name], recorded) if name in recorded else {name}
    return names


def alert_metrics() -> dict[str, set[str]]:
    """Alert name → the sample names it reads (``up`` is Prometheus's own and needs no exporter)."""
    recorded = {rule["record"]: rule["expr"] for rule in _rules() if "record" in rule}
    return {rule["alert"]: _series_read(rule["expr"], recorded) for rule in _rules() if "alert" in rule}


def test_every_alert_reads_a_lianxin_metric() -> None:
    metrics = alert_metrics()
    assert metrics and all(names for alert, names in metrics.items() if alert != "LianxinServiceDown"), metrics


# ----------------------------------------------------------------------- what Kubernetes scrapes


def _sanitise(label: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", label)


def _kept(relabel_configs: list[dict[str, Any]], meta: dict[str, str]) -> bool:
    """Prometheus's keep/drop relabelling (full-match regex over the ;-joined source labels)."""
    for rule in relabel_configs:
        action = rule.get("action", "replace")
        if action not in ("keep", "drop"):
            continue
        value = rule.get("separator", ";").join(meta.get(name, "") for name in rule["source_labels"])
        matched = re.fullmatch(rule.get("regex", "(.*)"), value) is not None
        if matched != (action == "keep"):
            return False
    return True


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def _metrics_port(config: dict[str, str]) -> int:
    return int(config["LIANXIN_METRICS_PORT"])


@functools.cache
def scraped_processes(overlay: str) -> frozenset[Process]:
    """The processes whose metrics port a job of prometheus-kubernetes.yml scrapes in ``overlay``."""
    docs = _render(overlay)
    jobs = yaml.safe_load(SCRAPE.read_text(encoding="utf-8"))["scrape_configs"]
    (config,) = [
        d["data"] for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("lianxin-config")
    ]
    deployments = [d for d in docs if d["kind"] == "Deployment"]
    reached: set[Process] = set()
    for service in (d for d in docs if d["kind"] == "Service"):
        labels = service["metadata"].get("labels", {})
        for port in service["spec"]["ports"]:
            for deployment in deployments:
                pod = deployment["spec"]["template"]
                if not _selects(service["spec"]["selector"], pod["metadata"]["labels"]):
                    continue
                meta = {
                    "__meta_kubernetes_namespace": service["metadata"].get("namespace", ""),
                    "__meta_kubernetes_endpoint_port_name": port.get("name", ""),
                    **{f"__meta_kubernetes_service_label_{_sanitise(k)}": v for k, v in labels.items()},
                    **{f"__meta_kubernetes_pod_label_{_sanitise(k)}": v for k, v in pod["metadata"]["labels"].items()},
                }
                if not any(_kept(job.get("relabel_configs", []), meta) for job in jobs):
                    continue
                for container in pod["spec"]["containers"]:
                    served = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
                    target = port.get("targetPort", port["port"])
                    number = served.get(target) if isinstance(target, str) else target
                    args = container.get("args", [])
                    if args[:2] not in (["serve", "--service"], ["worker", "--service"]):
                        continue
                    # The endpoint is the port the process serves its /metrics on: LIANXIN_METRICS_PORT,
                    # or the web gateway's HTTP port (LIANXIN_WEB_PORT).
                    env = {e["name"]: e.get("value", "") for e in container.get("env", [])}
                    wanted = int(env["LIANXIN_WEB_PORT"]) if args[2] == "web" else _metrics_port(config)
                    if number == wanted:
                        reached.add((args[0], args[2]))
    return frozenset(reached)


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_kubernetes_scrapes_every_api_every_worker_and_the_web_gateway(overlay: str) -> None:
    if KUBECTL is None:
        _tool_missing("kubectl (needed to render deploy/k8s with kustomize)")
    expected = {(command, service) for command in ("serve", "worker") for service in SERVICES} | {("serve", "web")}
    assert scraped_processes(overlay) >= expected, sorted(expected - scraped_processes(overlay))


# --------------------------------------------------------------------------- what processes export


@dataclass
class Exported:
    """What one family looks like across the processes: who exports it, its type and label names."""

    kind: str
    processes: set[Process] = field(default_factory=set)
    labels: set[str] = field(default_factory=set)
    samples: set[str] = field(default_factory=set)


def _families(port: int) -> list[Any]:
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    except OSError:
        return []
    return list(text_string_to_metric_families(text))


@pytest.fixture(scope="module")
def county_processes(
    postgres_admin_url: str, rabbitmq_available: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProductionNode]:
    """One county's production processes as deploy/k8s runs them: mTLS, a parent, PostgreSQL, RabbitMQ."""
    tmp_path = tmp_path_factory.mktemp("county")
    tls = tmp_path / "tls"
    subprocess.run(
        [sys.executable, "-m", "services.cli", "certs", "--out", str(tls), "--nodes", f"511100,{NODE}"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    with fresh_postgres_database(postgres_admin_url) as postgres_url, fresh_vhost() as amqp_uri:
        env = {
            **os.environ,
            "LIANXIN_NODE": NODE,
            "LIANXIN_PARENT": f"127.0.0.1:{_free_port()}",  # the city, out of reach: the link still reports its lag
            "LIANXIN_TLS_DIR": str(tls),
            "LIANXIN_DATABASE_URL": postgres_url,
            "LIANXIN_AMQP_URI": amqp_uri,
            "LIANXIN_DATA_DIR": str(tmp_path / "data"),
            "LIANXIN_LOG_LEVEL": "WARNING",
            "LIANXIN_STATS_GAUGE_INTERVAL_S": "1",
            "LIANXIN_SWEEP_INTERVAL_S": "1",
            "LIANXIN_INTAKE_CLASSIFIER": "off",
            "LIANXIN_DATA_KEYS": f"alerts:{new_data_key()}",  # production processes refuse to start without
        }
        subprocess.run([sys.executable, "-m", "services.cli", "migrate"], env=env, check=True, timeout=180)
        node = ProductionNode(env=env, logs=tmp_path)
        try:
            for service in SERVICES:
                node.spawn("worker", service)
                node.spawn("serve", service)
            # The web gateway serves its /metrics on its HTTP port, a client of the node's five apis.
            web = node.metrics_ports.setdefault("web-serve", _free_port())
            node.env.update(
                {"LIANXIN_WEB_PORT": str(web), **{f"LIANXIN_WEB_{s.upper()}": node.address(s) for s in SERVICES}}
            )
            node.spawn_process("web-serve", ["serve", "--service", "web"])
            yield node
        finally:
            node.stop()


@pytest.fixture(scope="module")
def exports(county_processes: ProductionNode) -> dict[str, Exported]:
    """Family name → what the ten processes export of it, once every alert's metric shows up somewhere
    (timers fill some gauges a moment after start); before any traffic."""
    wanted = set().union(*alert_metrics().values())
    found: dict[str, Exported] = {}

    def all_found() -> bool:
        found.clear()
        for name, port in county_processes.metrics_ports.items():
            service, _, command = name.rpartition("-")
            for family in _families(port):
                if not family.name.startswith("lianxin_") or not family.samples:
                    continue
                exported = found.setdefault(family.name, Exported(family.type))
                exported.processes.add((command, service))
                for sample in family.samples:
                    exported.samples.add(sample.name)
                    exported.labels |= set(sample.labels) - {"le"}
        return wanted <= {sample for exported in found.values() for sample in exported.samples}

    with contextlib.suppress(AssertionError):  # reported by the tests, metric by metric
        wait_until(all_found, timeout=240, message="every alert's metric on some process's /metrics")
    return found


def test_every_alert_metric_is_exported_by_a_process_kubernetes_scrapes(exports: dict[str, Exported]) -> None:
    if KUBECTL is None:
        _tool_missing("kubectl (needed to render deploy/k8s with kustomize)")
    exporters: dict[str, set[Process]] = {}
    for exported in exports.values():
        for sample in exported.samples:
            exporters.setdefault(sample, set()).update(exported.processes)
    problems = []
    for overlay in ("province", "city", "county"):
        reached = scraped_processes(overlay)
        for alert, names in sorted(alert_metrics().items()):
            for name in sorted(names):
                if not exporters.get(name):
                    problems.append(f"{alert}: no process exports {name}")
                elif not exporters[name] & reached:
                    problems.append(f"{overlay}: {alert}: {name} comes from {sorted(exporters[name])}, not scraped")
    assert not problems, "\n".join(sorted(set(problems)))


# ---------------------------------------------------------------------- the operations guide's table

OPERATIONS = REPO / "docs" / "operations.md"
KINDS = {"serve": "api", "worker": "worker"}


def _kind(command: str, service: str) -> str:
    return "web" if service == "web" else KINDS[command]


def documented_metrics() -> dict[str, tuple[str, set[str], set[str]]]:
    """Family name → (type, labels, process kinds) from the metric table of docs/operations.md."""
    rows = re.findall(
        r"^\| `(lianxin_[a-z0-9_]+)` \| (\w+) \| ([^|]*) \| ([^|]*) \|", OPERATIONS.read_text("utf-8"), re.M
    )

    def split(cell: str) -> set[str]:
        return {part.strip() for part in cell.split(",") if part.strip()}

    return {name.removesuffix("_total"): (kind, split(labels), split(by)) for name, kind, labels, by in rows}


def test_operations_guide_lists_every_exported_metric_with_its_labels_and_process(
    exports: dict[str, Exported],
) -> None:
    documented = documented_metrics()
    problems = []
    for name, exported in sorted(exports.items()):
        if name.endswith("_created"):
            continue  # prometheus_client's creation-time companions of counters and histograms
        if name not in documented:
            problems.append(f"{name} ({exported.kind}, labels {sorted(exported.labels)}) is not in docs/operations.md")
            continue
        kind, labels, by = documented[name]
        if (kind, labels) != (exported.kind, exported.labels):
            problems.append(
                f"{name}: documented {kind} {sorted(labels)}, exported {exported.kind} {sorted(exported.labels)}"
            )
        if by != {_kind(command, service) for command, service in exported.processes}:
            problems.append(f"{name}: documented as exported by {sorted(by)}, is by {sorted(exported.processes)}")
    code = "\n".join(path.read_text("utf-8") for path in (REPO / "services").rglob("*.py"))
    problems += [f"{name} is documented but no process defines it" for name in documented if f'"{name}' not in code]
    assert not problems, "\n".join(problems)
