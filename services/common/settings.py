"""Typed node settings, read once from ``LIANXIN_*`` environment variables and passed down."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common.names import SERVICES

__all__ = ["SERVICES", "Settings"]

# Outbox relay poll intervals when LIANXIN_RELAY_INTERVAL_S is unset: a production worker polls (the
# api process commits in another process); an embedded node's relay is woken by its own commits.
RELAY_POLL_S = 0.2
RELAY_SAFETY_POLL_S = 30.0


class Settings(BaseSettings):
    """Everything a node or a single service process needs to know about its place in the world."""

    model_config = SettingsConfigDict(env_prefix="LIANXIN_", frozen=True, extra="ignore")

    node: str = Field(default="510000", description="6-digit GB/T 2260 region code of this node")
    parent: str | None = Field(default=None, description="host:port of the parent node's gRPC endpoint")
    national: str | None = Field(default=None, description="host:port of the national system (province only)")
    database_url: str | None = Field(
        default=None,
        description=(
            "SQLAlchemy URL. May contain {node} and {service}. Unset: one SQLite file per service "
            "under data_dir/<node>/. On PostgreSQL every service gets its own schema."
        ),
    )
    data_dir: Path = Field(default=Path("var"), description="where embedded SQLite files and caches live")
    amqp_uri: str | None = Field(default=None, description="RabbitMQ URI; unset means the in-process bus")
    grpc_host: str = "127.0.0.1"
    grpc_port: int = Field(default=0, description="0 picks a free port")
    metrics_port: int | None = Field(default=0, description="Prometheus /metrics port; 0 picks one, None disables")
    grpc_workers: int = 16
    log_level: str = "INFO"
    log_json: bool = True
    regions_file: Path | None = Field(default=None, description="region CSV; default is the bundled Sichuan list")
    relay_interval_s: float | None = Field(
        default=None,
        description=(
            "outbox relay poll interval; unset: 0.2 s in a worker (it polls), 30 s in an embedded node"
            " (its relay is woken by each commit, this is only the safety poll)"
        ),
    )
    sweep_interval_s: float = Field(default=60.0, description="deadline sweep interval")
    health_port: int | None = Field(
        default=None,
        description="a plaintext port serving only grpc.health.v1 (Kubernetes probes cannot speak mTLS); unset: none",
    )
    public_port: int | None = Field(
        default=None,
        description=(
            "a second gRPC port serving only the public (citizen) methods with a small receive limit"
            " (PUBLIC_RECEIVE_BYTES), for the web gateway and the internet-facing ingress; 0 picks one; unset: none"
        ),
    )
    readiness_interval_s: float = Field(
        default=5.0, gt=0, description="how often an api checks its database for readiness (health per service)"
    )
    otel_exporter: str = Field(
        default="none", description="none | console | memory, added to what the standard OTEL_* environment asks"
    )
    # Security (docs/security.md). Everything is off by default so ``lianxin up`` needs no setup.
    auth: bool = Field(default=False, description="require operator tokens on every non-public RPC")
    token_key: str | None = Field(default=None, description="HMAC key of operator tokens (or a file path)")
    tls_dir: Path | None = Field(default=None, description="dir with ca.pem, <node>.pem, <node>.key: mTLS on")
    require_mtls: bool = Field(default=False, description="production: node-to-node calls need a peer cert")
    audit: bool = Field(default=False, description="audit every mutating RPC (always on when auth is on)")
    audit_anchor_interval_s: float = Field(
        default=60.0, description="how often at most the audit chain head is sent to the parent as an anchor"
    )
    citizen_rate_per_min: int = Field(default=30, description="citizen RPCs per peer per minute (auth on)")
    video_peers: str = Field(
        default="",
        description="other nodes' gRPC endpoints for joint video receptions: 511102=host:port,511100=host:port",
    )

    @field_validator("node")
    @classmethod
    def _six_digits(cls, value: str) -> str:
        if len(value) != 6 or not value.isdigit():
            raise ValueError(f"must be a 6-digit region code, got {value!r}")
        return value

    @field_validator("video_peers")
    @classmethod
    def _peer_list(cls, value: str) -> str:
        parse_peers(value)
        return value

    def relay_poll_s(self, *, woken_by_commits: bool) -> float:
        """The relay's poll interval: the setting, else the default of the host (see ``relay_interval_s``)."""
        if self.relay_interval_s is not None:
            return self.relay_interval_s
        return RELAY_SAFETY_POLL_S if woken_by_commits else RELAY_POLL_S

    def with_overrides(self, **changes: object) -> Settings:
        """A copy with some fields changed (settings are frozen so nodes cannot share mutations)."""
        return self.model_copy(update=changes)


def parse_peers(value: str) -> dict[str, str]:
    """``code=host:port`` pairs separated by commas → {node code: address}; ValueError naming a bad pair."""
    peers: dict[str, str] = {}
    for pair in filter(None, (p.strip() for p in value.split(","))):
        code, _, address = pair.partition("=")
        host, _, port = address.strip().rpartition(":")
        if len(code.strip()) != 6 or not code.strip().isdigit() or not host or not port.isdigit():
            raise ValueError(f"LIANXIN_VIDEO_PEERS: expected code=host:port, got {pair!r}")
        peers[code.strip()] = address.strip()
    return peers
