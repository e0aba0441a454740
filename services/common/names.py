"""The names of a node's services, importable with no dependency (``lianxin --help`` needs them)."""

from __future__ import annotations

# The five business services (DESIGN §2): each has a database, migrations, an api and a worker.
SERVICES: tuple[str, ...] = ("intake", "routing", "exchange", "video", "stats")
# Each one's gRPC service name (``/<name>/<Method>`` is a method's path).
SERVICE_NAMES: dict[str, str] = {service: f"lianxin.{service}.v1.{service.capitalize()}Service" for service in SERVICES}

# The RPCs a node's links call on its parent and the province's on the national system: node-to-node
# traffic, authenticated by certificate (security) and never traced as requests of their own (telemetry).
LINK_METHODS: frozenset[str] = frozenset(
    {
        "lianxin.exchange.v1.ExchangeService/PushEvents",
        "lianxin.exchange.v1.ExchangeService/PullDown",
        "lianxin.exchange.v1.ExchangeService/AckDown",
        "lianxin.exchange.v1.ExchangeService/ListAuditAnchors",
        "lianxin.national.v1.NationalService/ReportCases",
        "lianxin.national.v1.NationalService/FetchTransfers",
        "lianxin.national.v1.NationalService/AckTransfers",
    }
)
