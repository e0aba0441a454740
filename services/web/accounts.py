"""Operator accounts of the web console: a JSON file of scrypt password hashes, roles and scope.

An account maps a person to the same claims as an operator token (node, unit, roles), so after a
password sign-in the gateway issues a token and the node enforces the scope, exactly as for gRPC.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from services.common.security import ROLES

# scrypt parameters (RFC 7914): n=2**14, r=8, p=1 uses 16 MiB and ~40 ms per check here.
_N, _R, _P, _DKLEN = 2**14, 8, 1, 32
_SCHEME = "scrypt"


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P, dklen=_DKLEN)
    encode = base64.b64encode
    return f"{_SCHEME}${_N}${_R}${_P}${encode(salt).decode()}${encode(digest).decode()}"


def check_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != _SCHEME:
            return False
        expected = base64.b64decode(digest)
        actual = hashlib.scrypt(
            password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p), dklen=len(expected)
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


@dataclass(frozen=True)
class Account:
    username: str
    password_hash: str
    node: str
    roles: tuple[str, ...]
    unit: str = ""
    display_name: str = ""


class AccountStore:
    """The accounts file, read on every sign-in so an edit needs no restart (sign-ins are rare)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _read(self) -> dict[str, Account]:
        if not self.path.is_file():
            return {}
        rows = json.loads(self.path.read_text("utf-8"))
        return {
            row["username"]: Account(
                username=row["username"],
                password_hash=row["password_hash"],
                node=row["node"],
                roles=tuple(row["roles"]),
                unit=row.get("unit", ""),
                display_name=row.get("display_name", ""),
            )
            for row in rows
        }

    def get(self, username: str) -> Account | None:
        return self._read().get(username)

    def authenticate(self, username: str, password: str) -> Account | None:
        account = self.get(username.strip())
        if account is None:
            # Same work for an unknown name, so timing does not tell which names exist.
            check_password(password, hash_password("", salt=b"0" * 16))
            return None
        return account if check_password(password, account.password_hash) else None

    def put(self, accounts: Iterable[Account]) -> None:
        current = self._read()
        for account in accounts:
            unknown = set(account.roles) - set(ROLES)
            if unknown:
                raise ValueError(f"unknown roles {sorted(unknown)}; known: {', '.join(ROLES)}")
            current[account.username] = account
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(
            json.dumps([asdict(a) for a in current.values()], ensure_ascii=False, indent=1), encoding="utf-8"
        )
        tmp.chmod(0o600)
        os.replace(tmp, self.path)


@dataclass(frozen=True)
class DemoAccount:
    username: str
    password: str
    node: str
    roles: tuple[str, ...]
    unit: str
    display_name: str


def demo_accounts_for(node: str, tier: str, office_unit: str) -> list[tuple[str, tuple[str, ...], str, str]]:
    """(username, roles, unit, display name) of the demo operators of one node."""
    rows: list[tuple[str, tuple[str, ...], str, str]] = [
        (f"clerk-{node}", ("clerk", "handler"), office_unit, "信访办工作人员"),
        (f"supervisor-{node}", ("supervisor",), "", "督查督办"),
        (f"admin-{node}", ("admin",), "", "系统管理员"),
        (f"evaluator-{node}", ("evaluator",), "", "第三方评价组"),
    ]
    if tier == "county":
        rows.append((f"handler-{node}", ("handler",), "", "承办单位"))
    return rows


def ensure_demo_accounts(
    store: AccountStore, nodes: Sequence[tuple[str, str, str, str]], *, password_file: Path
) -> list[DemoAccount]:
    """Create each node's demo accounts once (random passwords, kept 0600 beside the accounts file).

    ``nodes`` lists (node, tier, office unit, a handling unit). Returns every demo account with its password.
    """
    known: dict[str, str] = {}
    if password_file.is_file():
        known = json.loads(password_file.read_text("utf-8"))
    created: list[Account] = []
    out: list[DemoAccount] = []
    for node, tier, office_unit, handling_unit in nodes:
        for username, roles, unit, display in demo_accounts_for(node, tier, office_unit):
            unit = unit or (handling_unit if roles == ("handler",) else "")
            password = known.get(username)
            if password is None or store.get(username) is None:
                password = secrets.token_urlsafe(9)
                known[username] = password
                created.append(Account(username, hash_password(password), node, roles, unit, display))
            out.append(DemoAccount(username, password, node, roles, unit, display))
    if created:
        store.put(created)
        password_file.parent.mkdir(parents=True, exist_ok=True)
        password_file.write_text(json.dumps(known, indent=1), encoding="utf-8")
        password_file.chmod(0o600)
    return out
