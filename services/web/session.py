"""Stateless signed cookies: the operator's session, short flashes, and the CSRF token of every form.

Nothing is kept in the process, so any replica of the gateway can serve any request: a cookie is
``<base64url JSON>.<HMAC-SHA256>`` under the gateway's session key, with an expiry inside.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

from services.common.security import Principal


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class Signer:
    key: bytes

    def _mac(self, purpose: str, body: str) -> str:
        return _b64(hmac.new(self.key, f"{purpose}|{body}".encode(), hashlib.sha256).digest())

    def dumps(self, purpose: str, payload: dict[str, Any], *, ttl_s: int) -> str:
        body = _b64(json.dumps({**payload, "exp": int(time.time()) + ttl_s}, separators=(",", ":")).encode())
        return f"{body}.{self._mac(purpose, body)}"

    def loads(self, purpose: str, value: str | None) -> dict[str, Any] | None:
        """The payload, or None when the value is missing, forged, for another purpose or expired."""
        if not value or "." not in value:
            return None
        body, mac = value.rsplit(".", 1)
        if not hmac.compare_digest(mac, self._mac(purpose, body)):
            return None
        try:
            payload = json.loads(_unb64(body))
        except ValueError:
            return None
        if not isinstance(payload, dict) or int(payload.get("exp", 0)) <= time.time():
            return None
        return payload

    def csrf_token(self, nonce: str) -> str:
        return self._mac("csrf", nonce)

    def csrf_ok(self, nonce: str | None, token: str | None) -> bool:
        return bool(nonce and token) and hmac.compare_digest(self.csrf_token(nonce or ""), token or "")


def new_nonce() -> str:
    return secrets.token_urlsafe(18)


@dataclass(frozen=True)
class Operator:
    """A signed-in operator: the token the node checks, and the claims the pages use."""

    token: str
    principal: Principal
    display_name: str = ""

    def to_cookie(self) -> dict[str, Any]:
        p = self.principal
        return {
            "tok": self.token,
            "sub": p.subject,
            "node": p.node,
            "unit": p.unit,
            "roles": sorted(p.roles),
            "name": self.display_name,
        }

    @classmethod
    def from_cookie(cls, data: dict[str, Any]) -> Operator:
        principal = Principal(
            subject=str(data["sub"]),
            node=str(data["node"]),
            unit=str(data.get("unit", "")),
            roles=frozenset(str(r) for r in data["roles"]),
            expires=int(data["exp"]),
        )
        return cls(token=str(data["tok"]), principal=principal, display_name=str(data.get("name", "")))


class Sessions:
    """The operators of session cookies already verified, by each cookie's exact value, until it expires.

    A console page read its session cookie's HMAC and JSON again on every request (~10 % of the
    gateway's CPU per page, issue 17). Only a value that passed ``Signer.loads`` is kept, so a changed
    or forged cookie is never found here; each replica keeps its own, nothing is shared.
    """

    def __init__(self, signer: Signer, *, kept: int = 10_000) -> None:
        self.signer = signer
        self.kept = kept
        self._known: dict[str, Operator] = {}

    def operator(self, value: str | None) -> Operator | None:
        if not value:
            return None
        known = self._known.get(value)
        if known is not None:
            if known.principal.expires > time.time():
                return known
            self._known.pop(value, None)
        data = self.signer.loads("session", value)
        if data is None:
            return None
        try:
            operator = Operator.from_cookie(data)
        except (KeyError, TypeError, ValueError):
            return None
        if len(self._known) >= self.kept:
            self._known.clear()
        self._known[value] = operator
        return operator
