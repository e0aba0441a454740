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
from pathlib import Path

from services.common.crypto import create_once

FORMAT = "lianxin-exchange-package/2"
KEY_ENV = "LIANXIN_EXCHANGE_KEY"
# The node's own signing keys, <data_dir>/<node>/exchange-key (one per line, the last one signs),
# and the keys of each child's packages, <data_dir>/<node>/exchange-keys/<child> (any line verifies).
KEY_FILE = "exchange-key"
CHILD_KEYS_DIR = "exchange-keys"


class PackageRefused(Exception):
    """The file is not a package we can trust; the message says why."""


class PackageKeyMissing(Exception):
    """No key to sign or verify with; the message says where to put one."""


def _key_lines(text: str) -> list[bytes]:
    return [line.strip().encode() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def _configured_keys(configured: str) -> list[bytes]:
    """``LIANXIN_EXCHANGE_KEY`` (``settings.exchange.package_key``): a key, or a file of keys (one a line)."""
    configured = configured.strip()
    if not configured:
        return []
    path = Path(configured)
    if len(configured) < 256 and path.is_file():
        return _key_lines(path.read_text("utf-8"))
    return [configured.encode()]


def new_package_key() -> str:
    """A fresh package signing key (one line of a key file, or a ``LIANXIN_EXCHANGE_KEY`` value)."""
    return base64.b64encode(os.urandom(32)).decode()


def signing_key(node_dir: Path, *, production: bool, configured: str = "") -> bytes:
    """The key this node signs its packages with.

    ``configured``, the ``LIANXIN_EXCHANGE_KEY`` setting (the last key when it names a file), else
    the node's own key file, generated on first use (mode 0600) like its data keys. Production (data keys configured)
    never generates one: without a configured key it refuses, so no package is ever signed with a
    key nobody chose; there is no built-in default.
    """
    keys = _configured_keys(configured)
    if keys:
        return keys[-1]
    path = node_dir / KEY_FILE
    if production and not path.exists():
        raise PackageKeyMissing(
            f"{KEY_ENV}: packages need this node's signing key; set {KEY_ENV} to a key or a key file "
            "(a new key: lianxin exchange new-key)"
        )
    keys = _key_lines(create_once(path, new_package_key() + "\n"))
    if not keys:
        raise PackageKeyMissing(f"{path}: no key in the file")
    return keys[-1]


def verification_keys(node_dir: Path, origin_node: str, configured: str = "") -> list[bytes]:
    """The keys a package from ``origin_node`` may be signed with: ``LIANXIN_EXCHANGE_KEY``, else
    ``exchange-keys/<origin>`` (the child's key, handed over once by its operator). None: refused."""
    keys = _configured_keys(configured)
    if keys:
        return keys
    path = node_dir / CHILD_KEYS_DIR / origin_node
    keys = _key_lines(path.read_text("utf-8")) if path.is_file() else []
    if not keys:
        raise PackageKeyMissing(
            f"no key for packages from {origin_node}: copy {origin_node}'s {KEY_FILE} to {path} (or set {KEY_ENV})"
        )
    return keys


def origin_of(data: bytes) -> str:
    """The origin node a package claims (unverified: only to choose the key that verifies it)."""
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError) as error:
        raise PackageRefused("not a package: unreadable JSON") from error
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise PackageRefused(f"not a package: format is not {FORMAT}")
    return str(document.get("origin_node", ""))


@dataclass(frozen=True)
class Package:
    origin_node: str
    since: int
    until: int
    created_at: str
    items: list[tuple[int, bytes, int]]  # (up-log position, serialized envelope or command, case sequence)
    kinds: dict[int, str] = field(default_factory=dict)  # position -> "command" (envelopes are not listed)


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


def open_package(data: bytes, *, key: bytes | Sequence[bytes]) -> Package:
    """Verify and read a package; raises ``PackageRefused`` for anything not exactly as sealed.

    ``key`` may be several keys (during a rotation): the package must be signed with one of them."""
    origin_of(data)  # a readable package document, or refused
    document = json.loads(data)
    signature = document.pop("signature", None)
    if not isinstance(signature, str):
        raise PackageRefused("unsigned package")
    keys = [key] if isinstance(key, bytes) else list(key)
    if not any(
        hmac.compare_digest(signature, hmac.new(k, _canonical(document), hashlib.sha256).hexdigest()) for k in keys
    ):
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
