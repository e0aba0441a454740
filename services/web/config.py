"""Settings of one web gateway: where its node's five services answer, its port, keys and accounts."""

from __future__ import annotations

import secrets
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

SERVICE_NAMES: tuple[str, ...] = ("intake", "routing", "exchange", "video", "stats")


class WebSettings(BaseSettings):
    """``LIANXIN_WEB_*`` variables; the node, token key and data dir come from the node's ``Settings``."""

    model_config = SettingsConfigDict(env_prefix="LIANXIN_WEB_", frozen=True, extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(default=8080, description="HTTP port of the gateway; 0 picks a free one")
    grpc: str = Field(default="127.0.0.1:7400", description="host:port of the node (all five services)")
    # Production runs each service behind its own address (deploy/k8s); unset falls back to ``grpc``.
    intake: str | None = None
    routing: str | None = None
    exchange: str | None = None
    video: str | None = None
    stats: str | None = None
    # The node's public port (LIANXIN_PUBLIC_PORT: citizen methods only, 80 KiB receive limit): the
    # portal's citizen calls (intake's and video's) go there; per service in production like the
    # above. Unset: they share the node's port with everything else.
    public_grpc: str | None = None
    public_intake: str | None = None
    public_video: str | None = None
    session_key: str | None = Field(
        default=None,
        description="HMAC key of session cookies (or a file path); every replica needs the same one",
    )
    accounts_file: Path | None = Field(
        default=None, description="operator accounts (JSON); default <data_dir>/web-accounts.json"
    )
    secure_cookies: bool = Field(default=False, description="mark cookies Secure (behind HTTPS)")
    session_ttl_s: int = Field(default=8 * 3600, description="how long a sign-in lasts")
    rpc_timeout_s: float = 5.0
    workers: int = Field(
        default=1,
        ge=1,
        le=64,
        description="gateway processes sharing the port (no session state: any of them serves any request)",
    )
    trusted_proxies: str = Field(
        default="",
        description="comma-separated addresses/networks of proxies whose X-Forwarded-For is believed",
    )

    def target(self, service: str) -> str:
        value: str | None = getattr(self, service)
        return value or self.grpc

    def public_target(self, service: str) -> str:
        """Where a citizen's call to ``service`` goes: its public port if there is one, else ``target``."""
        value: str | None = getattr(self, f"public_{service}")
        return value or self.public_grpc or self.target(service)


def load_key(value: str | None, *, fallback: Path | None = None) -> bytes:
    """A key given inline or as a file path; without one, a random key kept in ``fallback`` (created once)."""
    if value:
        path = Path(value)
        if len(value) < 256 and path.is_file():
            return path.read_bytes().strip()
        return value.encode()
    if fallback is None:
        return secrets.token_bytes(32)
    if fallback.is_file():
        return fallback.read_bytes().strip()
    fallback.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_hex(32).encode()
    fallback.write_bytes(key)
    fallback.chmod(0o600)
    return key
