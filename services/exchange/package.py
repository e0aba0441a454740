"""Signed offline change packages for separated networks (离线交换包): build, seal and verify.

A package is one JSON document: a header (format, origin node, cursor range, time), the items
(base64 protobuf envelopes with their up-log positions and per-case link sequences, and commands
climbing toward a node above, marked ``"kind": "command"``) and an
HMAC-SHA256 signature over the canonical JSON of everything else. Import checks the signature before anything else, so a
tampered or foreign file is refused as a whole and changes nothing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

FORMAT = "lianxin-exchange-package/2"
KEY_ENV = "LIANXIN_EXCHANGE_KEY"
# Development only: production sets LIANXIN_EXCHANGE_KEY per link (shared by the two operators).
DEV_KEY = "lianxin-dev-exchange-key"


class PackageRefused(Exception):
    """The file is not a package we can trust; the message says why."""


@dataclass(frozen=True)
class Package:
    origin_node: str
    since: int
    until: int
    created_at: str
    items: list[tuple[int, bytes, int]]  # (up-log position, serialized envelope or command, case sequence)
    kinds: dict[int, str] = field(default_factory=dict)  # position -> "command" (envelopes are not listed)


def signing_key() -> bytes:
    return os.environ.get(KEY_ENV, DEV_KEY).encode()


def _canonical(document: dict[str, object]) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def seal(
    *,
    origin_node: str,
    since: int,
    created_at: str,
    items: Sequence[tuple[int, bytes, int]],
    key: bytes,
    kinds: dict[int, str] | None = None,
) -> bytes:
    """The signed file contents for ``items`` (position, serialized envelope, case sequence) after ``since``.

    ``kinds`` marks the positions that hold a command; a package without commands reads as before.
    """
    marked = kinds or {}
    document: dict[str, object] = {
        "format": FORMAT,
        "origin_node": origin_node,
        "since": since,
        "until": max((p for p, _, _ in items), default=since),
        "created_at": created_at,
        "items": [
            {"position": p, "body": base64.b64encode(b).decode(), "case_sequence": n}
            | ({"kind": marked[p]} if p in marked else {})
            for p, b, n in items
        ],
    }
    document["signature"] = hmac.new(key, _canonical(document), hashlib.sha256).hexdigest()
    return json.dumps(document, sort_keys=True, ensure_ascii=True, indent=0).encode()


def open_package(data: bytes, *, key: bytes) -> Package:
    """Verify and read a package; raises ``PackageRefused`` for anything not exactly as sealed."""
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError) as error:
        raise PackageRefused("not a package: unreadable JSON") from error
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise PackageRefused(f"not a package: format is not {FORMAT}")
    signature = document.pop("signature", None)
    if not isinstance(signature, str):
        raise PackageRefused("unsigned package")
    expected = hmac.new(key, _canonical(document), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(signature, expected):
        raise PackageRefused("signature mismatch: the file was altered or signed with another key")
    try:
        items = [
            (int(i["position"]), base64.b64decode(i["body"], validate=True), int(i["case_sequence"]))
            for i in document["items"]
        ]
        kinds = {int(i["position"]): str(i["kind"]) for i in document["items"] if "kind" in i}
        if any(kind != "command" for kind in kinds.values()):
            raise PackageRefused("malformed package body: unknown item kind")
        return Package(
            origin_node=str(document["origin_node"]),
            since=int(document["since"]),
            until=int(document["until"]),
            created_at=str(document["created_at"]),
            items=items,
            kinds=kinds,
        )
    except (KeyError, TypeError, ValueError) as error:
        raise PackageRefused("malformed package body") from error
