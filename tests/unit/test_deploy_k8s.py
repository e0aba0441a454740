"""deploy/k8s renders for every overlay, validates against the Kubernetes schemas, and keeps its promises.

The promises are the ones an operator relies on (issue 9): gRPC probes on every api, a hardened
security context, resources, a ServiceAccount, a Service port named ``grpc``, a migration Job, and
the right region code and parent in each tier's overlay.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common.settings import SERVICES
from tests.support.k8s import KUBECTL, KUBERNETES_VERSION, OVERLAYS, Doc
from tests.support.k8s import render as _render
from tests.support.k8s import tool_missing as _tool_missing

WEB = "web-gateway"  # the web gateway's Deployment and Service (deploy/k8s/services/web)


@pytest.fixture(params=sorted(OVERLAYS))
def overlay(request: pytest.FixtureRequest) -> str:
    if KUBECTL is None:
        _tool_missing("kubectl (needed to render deploy/k8s with kustomize)")
    return str(request.param)


def _of_kind(docs: tuple[Doc, ...], kind: str) -> list[Doc]:
    return [doc for doc in docs if doc["kind"] == kind]


def _by_name(docs: tuple[Doc, ...], kind: str) -> dict[str, Doc]:
    return {doc["metadata"]["name"]: doc for doc in _of_kind(docs, kind)}


def _app_deployments(docs: tuple[Doc, ...]) -> list[Doc]:
    return [
        d for d in _of_kind(docs, "Deployment") if d["metadata"]["labels"].get("app.kubernetes.io/part-of") == "lianxin"
    ]


def _config(docs: tuple[Doc, ...]) -> dict[str, str]:
    (config,) = [c for c in _of_kind(docs, "ConfigMap") if c["metadata"]["name"].startswith("lianxin-config")]
    data: dict[str, str] = config["data"]
    return data


def test_every_overlay_validates_against_the_kubernetes_schemas(overlay: str) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    for doc in _render(overlay):
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:  # pragma: no cover - the message is the point
            pytest.fail(f"{overlay}: {doc['kind']}/{doc['metadata']['name']} is invalid: {error.message}")


def test_each_service_runs_as_an_api_and_a_worker_from_one_image(overlay: str) -> None:
    deployments = _by_name(_render(overlay), "Deployment")
    for service in SERVICES:
        for role, command in (("api", "serve"), ("worker", "worker")):
            (container,) = deployments[f"{service}-{role}"]["spec"]["template"]["spec"]["containers"]
            assert container["args"] == [command, "--service", service]
    images = {
        c["image"] for d in _app_deployments(_render(overlay)) for c in d["spec"]["template"]["spec"]["containers"]
    }
    assert len(images) == 1, images


def test_every_api_is_ready_by_its_own_service_name_and_alive_by_the_overall_name(overlay: str) -> None:
    """Readiness follows the database (the service's name); liveness and startup only ask whether
    the process answers (the overall name ""), so a database outage restarts no pod."""
    deployments = _by_name(_render(overlay), "Deployment")
    for service in SERVICES:
        (container,) = deployments[f"{service}-api"]["spec"]["template"]["spec"]["containers"]
        ready = {"port": 50052, "service": f"lianxin.{service}.v1.{service.capitalize()}Service"}
        assert container["readinessProbe"]["grpc"] == ready, service
        for probe in ("startupProbe", "livenessProbe"):
            assert container[probe]["grpc"].get("service", "") == "", (service, probe)
            assert container[probe]["grpc"]["port"] == 50052, (service, probe)


def test_no_deployment_is_probed_other_than_over_grpc(overlay: str) -> None:
    for deployment in _app_deployments(_render(overlay)):
        if deployment["metadata"]["name"] == WEB:
            continue  # the web gateway speaks HTTP (test_the_web_gateway_...)
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                if probe in container:
                    assert set(container[probe]) & {"httpGet", "tcpSocket", "exec"} == set(), (
                        deployment["metadata"]["name"],
                        probe,
                    )


def test_every_workload_runs_non_root_read_only_without_capabilities(overlay: str) -> None:
    docs = _render(overlay)
    workloads = [*_app_deployments(docs), *_of_kind(docs, "Job")]
    assert len(workloads) == 2 * len(SERVICES) + 1 + 1  # api and worker each, the migration Job, the web gateway
    for workload in workloads:
        name = workload["metadata"]["name"]
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["serviceAccountName"], name
        assert pod["serviceAccountName"] in _by_name(docs, "ServiceAccount"), name
        tmp_volumes = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["runAsNonRoot"] is True, name
            assert context["readOnlyRootFilesystem"] is True, name
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["capabilities"]["drop"] == ["ALL"], name
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert mounts.get("/tmp") in tmp_volumes, f"{name}: /tmp must be an emptyDir"
            resources = container["resources"]
            for kind in ("requests", "limits"):
                assert set(resources[kind]) >= {"cpu", "memory"}, (name, kind)


def test_every_service_exposes_ports_named_grpc_and_metrics(overlay: str) -> None:
    services = _by_name(_render(overlay), "Service")
    # Every api Service speaks gRPC on a port named grpc; a worker's (headless) only has metrics.
    for name, manifest in services.items():
        ports = {p["name"] for p in manifest["spec"]["ports"]}
        if name.endswith("-worker"):
            assert ports == {"metrics"} and manifest["spec"]["clusterIP"] == "None", name
        elif name == WEB:
            assert ports == {"http", "metrics"}, name  # metrics: the same /metrics, for Prometheus's job lianxin-web
            by_name = {p["name"]: p for p in manifest["spec"]["ports"]}
            assert by_name["metrics"]["targetPort"] == by_name["http"]["targetPort"] == "http"
        else:
            assert "grpc" in ports or name in {"postgres", "rabbitmq"}, name
    for service in SERVICES:
        assert services[f"{service}-worker"]["spec"]["selector"] == {
            "app.kubernetes.io/name": service,
            "app.kubernetes.io/component": "worker",
        }
        api_ports = {p["name"]: p for p in services[f"{service}-api"]["spec"]["ports"]}
        # intake and video also serve citizens' methods alone on "public" (LIANXIN_PUBLIC_PORT).
        assert set(api_ports) == {"grpc", "metrics"} | ({"public"} if service in ("intake", "video") else set())
        assert services[f"{service}-api"]["spec"]["selector"] == {
            "app.kubernetes.io/name": service,
            "app.kubernetes.io/component": "api",
        }


def test_the_web_gateway_reaches_each_service_and_scales_without_state(overlay: str) -> None:
    docs = _render(overlay)
    gateway = _by_name(docs, "Deployment")[WEB]
    services = _by_name(docs, "Service")
    container = gateway["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["serve", "--service", "web"]
    env = {e["name"]: e["value"] for e in container["env"]}
    for service in SERVICES:
        host, port = env[f"LIANXIN_WEB_{service.upper()}"].split(":")
        assert host in services and int(port) in {p["port"] for p in services[host]["spec"]["ports"]}
    # Citizens' calls go to the public ports, which serve nothing else.
    for service in ("intake", "video"):
        host, port = env[f"LIANXIN_WEB_PUBLIC_{service.upper()}"].split(":")
        named = {p["name"]: p["port"] for p in services[host]["spec"]["ports"]}
        assert int(port) == named["public"], service
    assert env["LIANXIN_WEB_SECURE_COOKIES"] == "true"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] == "/healthz", probe
    selector = services[WEB]["spec"]["selector"]
    assert all(gateway["spec"]["template"]["metadata"]["labels"][k] == v for k, v in selector.items())
    if overlay != "dev":
        assert gateway["spec"]["replicas"] >= 2  # no session state in the process (signed cookies)


def test_processes_get_their_settings_from_the_configmap_and_the_secret(overlay: str) -> None:
    docs = _render(overlay)
    config_name = next(
        c["metadata"]["name"] for c in _of_kind(docs, "ConfigMap") if c["metadata"]["name"].startswith("lianxin-config")
    )
    for workload in [*_app_deployments(docs), *_of_kind(docs, "Job")]:
        for container in workload["spec"]["template"]["spec"]["containers"]:
            sources = container["envFrom"]
            assert {"configMapRef": {"name": config_name}} in sources
            assert any(s.get("secretRef", {}).get("name", "").startswith("lianxin-secrets") for s in sources)
    config = _config(docs)
    assert config["LIANXIN_GRPC_HOST"] == "0.0.0.0"  # probes come from outside the pod
    assert config["LIANXIN_GRPC_PORT"] == "50051"
    assert config["LIANXIN_METRICS_PORT"] == "9464"


def test_each_overlay_names_its_node_and_its_parent(overlay: str) -> None:
    docs = _render(overlay)
    config = _config(docs)
    assert config["LIANXIN_NODE"] == OVERLAYS[overlay]["node"]
    assert config.get("LIANXIN_PARENT") == OVERLAYS[overlay]["parent"]
    if overlay == "province":
        assert config["LIANXIN_NATIONAL"], "the province talks to the national system"
    for deployment in _app_deployments(docs):
        assert deployment["spec"]["template"]["metadata"]["labels"]["lianxin/node"] == OVERLAYS[overlay]["node"]


def test_migrations_run_as_their_own_job(overlay: str) -> None:
    (job,) = _of_kind(_render(overlay), "Job")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["migrate"]


def test_dev_brings_its_own_postgres_and_rabbitmq_and_points_the_app_at_them() -> None:
    if KUBECTL is None:
        _tool_missing("kubectl (needed to render deploy/k8s with kustomize)")
    docs = _render("dev")
    assert set(_by_name(docs, "StatefulSet")) == {"postgres", "rabbitmq"}
    assert {"postgres", "rabbitmq"} <= set(_by_name(docs, "Service"))
    (secret,) = [s for s in _of_kind(docs, "Secret") if s["metadata"]["name"].startswith("lianxin-secrets")]
    import base64

    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert "@postgres:5432/" in data["LIANXIN_DATABASE_URL"]
    assert "@rabbitmq:5672/" in data["LIANXIN_AMQP_URI"]


def test_production_overlays_commit_no_secret() -> None:
    if KUBECTL is None:
        _tool_missing("kubectl (needed to render deploy/k8s with kustomize)")
    for overlay in ("province", "city", "county"):
        assert _of_kind(_render(overlay), "Secret") == [], overlay


PRODUCTION = ("province", "city", "county")


@pytest.fixture(params=PRODUCTION)
def production_overlay(request: pytest.FixtureRequest) -> str:
    if KUBECTL is None:
        _tool_missing("kubectl (needed to render deploy/k8s with kustomize)")
    return str(request.param)


def test_every_api_keeps_one_pod_through_voluntary_disruptions(overlay: str) -> None:
    docs = _render(overlay)
    budgets = _by_name(docs, "PodDisruptionBudget")
    deployments = _by_name(docs, "Deployment")
    for service in SERVICES:
        budget = budgets[f"{service}-api"]["spec"]
        pods = deployments[f"{service}-api"]["spec"]["template"]["metadata"]["labels"]
        assert budget["minAvailable"] == 1
        assert budget["selector"]["matchLabels"].items() <= pods.items(), service
        # it selects the api's pods only, not the worker's
        assert budget["selector"]["matchLabels"]["app.kubernetes.io/component"] == "api"


def test_production_tiers_run_with_security_on_and_their_secrets_not_committed(production_overlay: str) -> None:
    docs = _render(production_overlay)
    config = _config(docs)
    assert config["LIANXIN_AUTH"] == "true" and config["LIANXIN_AUDIT"] == "true"
    assert config["LIANXIN_REQUIRE_MTLS"] == "true"
    mounts = {
        "lianxin-tls": config["LIANXIN_TLS_DIR"],
        "lianxin-keys": str(Path(config["LIANXIN_TOKEN_KEY"]).parent),
    }
    assert Path(config["LIANXIN_DATA_KEYS_FILE"]).parent == Path(mounts["lianxin-keys"])
    assert not _of_kind(docs, "Secret"), "a production overlay must not carry a Secret"
    for workload in [*_app_deployments(docs), *_of_kind(docs, "Job")]:
        pod = workload["spec"]["template"]["spec"]
        volumes = {v["name"]: v.get("secret", {}).get("secretName") for v in pod["volumes"]}
        (container,) = pod["containers"]
        mounted = {m["mountPath"]: (volumes[m["name"]], m.get("readOnly", False)) for m in container["volumeMounts"]}
        for secret, path in mounts.items():
            assert mounted.get(path) == (secret, True), (workload["metadata"]["name"], secret)


def test_production_tiers_let_in_their_own_pods_their_children_and_prometheus_only(production_overlay: str) -> None:
    docs = _render(production_overlay)
    node = OVERLAYS[production_overlay]["node"]
    policies = {
        name: policy
        for name, policy in _by_name(docs, "NetworkPolicy").items()
        if "Ingress" in policy["spec"]["policyTypes"]
    }
    assert set(policies) == {"lianxin-same-node", "lianxin-child-links", "lianxin-prometheus"}
    for policy in policies.values():
        assert policy["spec"]["policyTypes"] == ["Ingress"]
    assert policies["lianxin-same-node"]["spec"]["ingress"] == [{"from": [{"podSelector": {}}]}]
    links = policies["lianxin-child-links"]["spec"]
    assert links["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/name": "exchange",
        "app.kubernetes.io/component": "api",
    }
    (rule,) = links["ingress"]
    assert rule["from"] == [{"namespaceSelector": {"matchLabels": {"lianxin/parent": node}}}]
    assert rule["ports"] == [{"protocol": "TCP", "port": 50051}]
    (scrape,) = policies["lianxin-prometheus"]["spec"]["ingress"]
    (gateway,) = _by_name(docs, "Deployment")[WEB]["spec"]["template"]["spec"]["containers"]
    web_port = next(p["containerPort"] for p in gateway["ports"] if p["name"] == "http")  # its /metrics
    assert scrape["ports"] == [
        {"protocol": "TCP", "port": int(_config(docs)["LIANXIN_METRICS_PORT"])},
        {"protocol": "TCP", "port": web_port},
    ]


def test_a_child_tier_is_let_in_by_its_parent_tiers_policy() -> None:
    if KUBECTL is None:
        _tool_missing("kubectl (needed to render deploy/k8s with kustomize)")
    admitted = {}
    for tier in PRODUCTION:
        (rule,) = _by_name(_render(tier), "NetworkPolicy")["lianxin-child-links"]["spec"]["ingress"]
        admitted[tier] = rule["from"][0]["namespaceSelector"]["matchLabels"]["lianxin/parent"]
    for child, parent in (("city", "province"), ("county", "city")):
        (namespace,) = _of_kind(_render(child), "Namespace")
        assert namespace["metadata"]["labels"]["lianxin/parent"] == admitted[parent], child


def _egress(docs: tuple[Doc, ...]) -> dict[str, Doc]:
    return {
        name: policy["spec"]
        for name, policy in _by_name(docs, "NetworkPolicy").items()
        if policy["spec"]["policyTypes"] == ["Egress"]
    }


def test_production_tiers_let_out_only_dns_their_database_broker_parent_and_collector(production_overlay: str) -> None:
    docs = _render(production_overlay)
    egress = _egress(docs)
    assert set(egress) == {
        "lianxin-egress-same-node",
        "lianxin-egress-dns",
        "lianxin-egress-backing",
        "lianxin-egress-parent",
        "lianxin-egress-otlp",
    }
    # Every pod is selected by an egress policy, so whatever none allows is refused.
    assert egress["lianxin-egress-same-node"]["podSelector"] == {}
    assert egress["lianxin-egress-same-node"]["egress"] == [{"to": [{"podSelector": {}}]}]
    # Apart from the node's own pods, every rule names its destination and its ports: no open egress.
    for name, spec in egress.items():
        for rule in spec["egress"]:
            assert rule.get("to"), (name, rule)
            if name != "lianxin-egress-same-node":
                assert rule.get("ports"), (name, rule)
            for peer in rule["to"]:
                assert peer.get("ipBlock", {}).get("cidr") != "0.0.0.0/0", (name, rule)
    (dns,) = egress["lianxin-egress-dns"]["egress"]
    assert dns["to"] == [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
        }
    ]
    assert {(p["protocol"], p["port"]) for p in dns["ports"]} == {("UDP", 53), ("TCP", 53)}
    backing = {rule["ports"][0]["port"] for rule in egress["lianxin-egress-backing"]["egress"]}
    assert backing == {5432, 5672}  # PostgreSQL and RabbitMQ
    (otlp,) = egress["lianxin-egress-otlp"]["egress"]
    assert otlp["ports"] == [{"protocol": "TCP", "port": 4317}]
    # Only the exchange (its link's pump and the api) goes up the tiers.
    parent = egress["lianxin-egress-parent"]
    assert parent["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "exchange"}}
    (link,) = parent["egress"]
    config = _config(docs)
    if production_overlay == "province":
        # The national system, outside the cluster, on the port of LIANXIN_NATIONAL.
        assert "ipBlock" in link["to"][0]
        assert link["ports"] == [{"protocol": "TCP", "port": int(config["LIANXIN_NATIONAL"].rsplit(":", 1)[1])}]
    else:
        host, port = config["LIANXIN_PARENT"].rsplit(":", 1)
        parent_namespace = host.split(".")[1]  # exchange-api.<namespace>.svc.cluster.local
        assert link["to"] == [
            {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": parent_namespace}},
                "podSelector": {
                    "matchLabels": {"app.kubernetes.io/name": "exchange", "app.kubernetes.io/component": "api"}
                },
            }
        ]
        assert link["ports"] == [{"protocol": "TCP", "port": int(port)}]


def test_a_child_tiers_egress_reaches_what_its_parents_ingress_lets_in() -> None:
    if KUBECTL is None:
        _tool_missing("kubectl (needed to render deploy/k8s with kustomize)")
    for child, parent in (("city", "province"), ("county", "city")):
        (link,) = _egress(_render(child))["lianxin-egress-parent"]["egress"]
        (parent_namespace,) = _of_kind(_render(parent), "Namespace")
        assert link["to"][0]["namespaceSelector"]["matchLabels"] == {
            "kubernetes.io/metadata.name": parent_namespace["metadata"]["name"]
        }
        (admits,) = _by_name(_render(parent), "NetworkPolicy")["lianxin-child-links"]["spec"]["ingress"]
        (child_namespace,) = _of_kind(_render(child), "Namespace")
        labels = child_namespace["metadata"]["labels"]
        assert admits["from"][0]["namespaceSelector"]["matchLabels"].items() <= labels.items(), child
        assert admits["ports"] == link["ports"], child


# --------------------------------------------------------------------------- host mode (services/host.py)

HOSTS = "province-hosts"


def _hosts_rendered() -> tuple[Doc, ...]:
    if KUBECTL is None:
        _tool_missing("kubectl (needed to render deploy/k8s with kustomize)")
    return _render(HOSTS)


def test_the_host_overlay_validates_against_the_kubernetes_schemas() -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    for doc in _hosts_rendered():
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:  # pragma: no cover - the message is the point
            pytest.fail(f"{HOSTS}: {doc['kind']}/{doc['metadata']['name']} is invalid: {error.message}")


def test_a_statefulset_of_hosts_serves_the_topology_one_host_per_pod_ordinal() -> None:
    from services.common.regions import RegionTree
    from services.topology import load_topology, parse_topology

    docs = _hosts_rendered()
    (statefulset,) = _of_kind(docs, "StatefulSet")
    (topology_map,) = [d for d in _of_kind(docs, "ConfigMap") if d["metadata"]["name"].startswith("lianxin-topology")]
    regions = RegionTree.load()
    topology = parse_topology(topology_map["data"]["topology.yaml"], regions)
    assert topology == load_topology("sichuan", regions)  # all 205 nodes, placed as `lianxin up` places them
    assert statefulset["spec"]["replicas"] == topology.hosts
    (service,) = [s for s in _of_kind(docs, "Service") if s["metadata"]["name"] == statefulset["spec"]["serviceName"]]
    assert service["spec"]["clusterIP"] == "None"  # stable pod names: lianxin-host-N.lianxin-host
    pod = statefulset["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    args = container["args"]
    assert args[:3] == ["host", "--topology", "/etc/lianxin/topology.yaml"]
    assert args[args.index("--host-index") + 1] == "$(HOST_INDEX)"
    assert (
        args[args.index("--host-address") + 1]
        == f"{statefulset['metadata']['name']}-{{host}}.{service['metadata']['name']}"
    )
    index = next(e for e in container["env"] if e["name"] == "HOST_INDEX")
    assert index["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.labels['apps.kubernetes.io/pod-index']"
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/etc/lianxin"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["configMap"]["name"] == topology_map["metadata"]["name"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert set(container[probe]) - {"periodSeconds", "failureThreshold"} == {"grpc"}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
