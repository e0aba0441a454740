"""Typed node settings, read once from ``LIANXIN_*`` environment variables and passed down."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common.names import SERVICES

__all__ = [
    "SERVICES",
    "ExchangeSettings",
    "IntakeSettings",
    "KeySettings",
    "RoutingSettings",
    "Settings",
    "StatsSettings",
    "markdown_table",
]

REPO = Path(__file__).resolve().parents[2]

# Outbox relay poll intervals when LIANXIN_RELAY_INTERVAL_S is unset: a production worker polls (the
# api process commits in another process); an embedded node's relay is woken by its own commits.
RELAY_POLL_S = 0.2
RELAY_SAFETY_POLL_S = 30.0
# Query RPC threads per server when LIANXIN_QUERY_WORKERS is unset (Settings.query_threads says why).
SQLITE_QUERY_THREADS = 2
POSTGRES_QUERY_THREADS = 4


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
    grpc_host: str = Field(default="127.0.0.1", description="where gRPC (and /metrics) listen")
    grpc_port: int = Field(default=0, description="gRPC port; 0 picks a free port")
    metrics_port: int | None = Field(default=0, description="Prometheus /metrics port; 0 picks one, None disables")
    grpc_workers: int = Field(
        default=16, description="gRPC handler threads per process (the most calls it serves at once)"
    )
    query_workers: int | None = Field(
        default=None,
        description=(
            "threads of the read-only query RPCs (the console's and portal's reads) per server, beside"
            " grpc_workers; 0: they run on the grpc_workers threads; unset: 2 on SQLite, 4 on PostgreSQL"
        ),
    )
    log_level: str = Field(default="INFO", description="logging level")
    log_json: bool = Field(default=True, description="one JSON object per log line (false: plain text)")
    regions_file: Path | None = Field(default=None, description="region CSV; default is the bundled Sichuan list")
    relay_interval_s: float | None = Field(
        default=None,
        description=(
            "outbox relay poll interval; unset: 30 s where the relay is woken by each commit (an embedded"
            " node; a worker on PostgreSQL, by LISTEN/NOTIFY), this is then only the safety poll; 0.2 s in a"
            " worker on SQLite"
        ),
    )
    sweep_interval_s: float = Field(default=60.0, description="routing's deadline sweep interval")
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
        default=5.0,
        gt=0,
        description=(
            "how old a readiness answer (health per service) may be: a probe's Check re-checks the"
            " database when the last check is older; unasked, every 60 s"
        ),
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
    # Per-service sections (read through the typed properties below: settings.intake, ...)
    shared_data: Path | None = Field(
        default=None, description="folder with messages.csv to train the category model; unset: ../shared/data"
    )
    intake_classifier: str = Field(
        default="auto", description="off: no category model; else loaded (or trained on first start) in the background"
    )
    intake_rate_limit: str = Field(
        default="5/3600", description="submits per seconds per submitter (count/seconds); 0 turns the limit off"
    )
    notice_retry: str = Field(
        default="5/30", description="progress notices: attempts/first delay in seconds, doubling (30 s, 1, 2, 4 min)"
    )
    notice_interval_s: float = Field(
        default=1.0,
        description=(
            "how often a worker sends the progress notice outbox (an embedded node sends when a commit"
            " queues a notice or a retry falls due, else every 30 s)"
        ),
    )
    time_limits: str = Field(default="", description="YAML of time limits per tier and category; unset: national")
    leader_classes: str = Field(default="", description="YAML of the 领导批转 classes; unset: none")
    calendar_files: str = Field(default="", description="official calendar files, comma-separated paths")
    stats_month_start_day: int = Field(default=1, description="first day of the statistical month")
    stats_satisfied_after_workdays: int = Field(
        default=20, description="working days after a reply when an unrated case counts as satisfied"
    )
    stats_gauge_interval_s: float = Field(default=30.0, description="how often the business gauges are refreshed")
    stats_rollup_interval_s: float = Field(default=60.0, description="how often the daily rollups roll forward")
    # exchange.domain.BATCH_ITEMS (tests/unit/test_settings.py checks they agree).
    exchange_batch: int = Field(
        default=500,
        description="items per PushEvents/PullDown batch (small values let tests stop a process between batches)",
    )
    exchange_key: str = Field(
        default="", description="package signing key, or a file of keys (one a line); unset: the node's own key file"
    )
    audit_key: str = Field(default="", description="audit chain HMAC key (a value or a file); unset: generated")
    data_keys: str = Field(default="", description="SM4 keyring k1:<base64 16 bytes>,k2:...; unset: generated")
    data_keys_file: str = Field(default="", description="a file holding the keyring instead of LIANXIN_DATA_KEYS")
    data_key_id: str = Field(default="", description="the current key of the keyring; unset: the last listed")
    data_key: str = Field(default="", description="legacy single data key (base64), read when no keyring is set")
    index_key: str = Field(default="", description="blind-index key (base64); unset: derived from the first key")

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

    def query_threads(self) -> int:
        """Threads of the query RPCs: the setting, else by the backend.

        On SQLite a read holds the GIL but for SQLite's own steps, and each step hands the GIL to
        another query thread that waits for it: in one node process under 50 console clients, with 4
        threads the node switched ~100 times a case page and served 550 pages/s, with 2 ~35 times and
        600–625/s, with 1 ~22 times and 675–700/s. 2, not 1: a slow read (the board, the dashboard:
        3–4 ms; a search more) would hold every clerk's read behind it on one thread. Where several
        api processes share the reads, 4 did better (docs/operations.md, "Query threads"). On
        PostgreSQL a read mostly waits for the server's answers: the inbox served 285 pages/s with
        one thread, 590–610 with four (docs/web.md, "The eleventh session").
        """
        if self.query_workers is not None:
            return self.query_workers
        on_sqlite = self.database_url is None or self.database_url.startswith("sqlite")
        return SQLITE_QUERY_THREADS if on_sqlite else POSTGRES_QUERY_THREADS

    @property
    def intake(self) -> IntakeSettings:
        limit, window = _count_per(self.intake_rate_limit, "intake_rate_limit", 3600)
        attempts, first_delay = _count_per(self.notice_retry, "notice_retry", 30)
        return IntakeSettings(
            classifier=self.intake_classifier != "off",
            shared_data=self.shared_data if self.shared_data is not None else REPO.parent / "shared" / "data",
            rate_limit=limit,
            rate_window=window,
            notice_attempts=attempts,
            notice_first_delay=first_delay,
            notice_interval_s=self.notice_interval_s,
        )

    @property
    def routing(self) -> RoutingSettings:
        return RoutingSettings(
            time_limits=Path(self.time_limits) if self.time_limits else None,
            leader_classes=Path(self.leader_classes) if self.leader_classes else None,
            calendar_files=tuple(p.strip() for p in self.calendar_files.split(",") if p.strip()),
        )

    @property
    def stats(self) -> StatsSettings:
        return StatsSettings(
            month_start_day=self.stats_month_start_day,
            satisfied_after_workdays=self.stats_satisfied_after_workdays,
            gauge_interval_s=self.stats_gauge_interval_s,
            rollup_interval_s=self.stats_rollup_interval_s,
        )

    @property
    def exchange(self) -> ExchangeSettings:
        return ExchangeSettings(batch_size=self.exchange_batch, package_key=self.exchange_key.strip())

    @property
    def keys(self) -> KeySettings:
        return KeySettings(
            data_keys=self.data_keys,
            data_keys_file=self.data_keys_file,
            data_key=self.data_key,
            data_key_id=self.data_key_id,
            index_key=self.index_key,
            audit_key=self.audit_key,
        )

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


def _count_per(raw: str, name: str, default_seconds: float) -> tuple[int, timedelta]:
    """``count/seconds`` (``5/3600``); the seconds may be left out."""
    count, _, seconds = raw.partition("/")
    try:
        return int(count), timedelta(seconds=float(seconds or default_seconds))
    except ValueError as error:
        raise ValueError(f"LIANXIN_{name.upper()}: expected count/seconds, got {raw!r}") from error


@dataclass(frozen=True)
class IntakeSettings:
    """Intake's section: the category model, the per-submitter limit, progress notices."""

    classifier: bool
    shared_data: Path
    rate_limit: int
    rate_window: timedelta
    notice_attempts: int
    notice_first_delay: timedelta
    notice_interval_s: float


@dataclass(frozen=True)
class RoutingSettings:
    """Routing's section: the node's own rule files (each optional)."""

    time_limits: Path | None
    leader_classes: Path | None
    calendar_files: tuple[str, ...]


@dataclass(frozen=True)
class StatsSettings:
    """Stats' section: the statistical month, the satisfaction window, refresh intervals."""

    month_start_day: int
    satisfied_after_workdays: int
    gauge_interval_s: float
    rollup_interval_s: float


@dataclass(frozen=True)
class ExchangeSettings:
    """Exchange's section: the PushUp batch and the package signing key(s)."""

    batch_size: int
    package_key: str


@dataclass(frozen=True)
class KeySettings:
    """The node's secrets for data at rest and the audit chain (docs/security.md)."""

    data_keys: str
    data_keys_file: str
    data_key: str
    data_key_id: str
    index_key: str
    audit_key: str

    @property
    def configured(self) -> bool:
        """True when data keys are configured (the production way), not generated."""
        return bool(self.data_keys or self.data_keys_file or self.data_key)

    def environ(self) -> dict[str, str]:
        """The data key variables that are set, as ``crypto.cipher_from_env`` reads them."""
        named = {
            "LIANXIN_DATA_KEYS": self.data_keys,
            "LIANXIN_DATA_KEYS_FILE": self.data_keys_file,
            "LIANXIN_DATA_KEY": self.data_key,
            "LIANXIN_DATA_KEY_ID": self.data_key_id,
            "LIANXIN_INDEX_KEY": self.index_key,
        }
        return {name: value for name, value in named.items() if value}


def _default_text(name: str) -> str:
    field = Settings.model_fields[name]
    value = field.default
    if value is None or value == "":
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    return f"`{value}`"


def markdown_table() -> str:
    """The table of every ``LIANXIN_*`` variable of ``Settings`` (docs/operations.md holds it verbatim)."""
    rows = ["| variable | meaning | default |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        meaning = (field.description or "").replace("|", "\\|")
        rows.append(f"| `LIANXIN_{name.upper()}` | {meaning} | {_default_text(name)} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(markdown_table(), end="")
