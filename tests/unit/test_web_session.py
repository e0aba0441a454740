"""The web gateway's stateless pieces: signed cookies, CSRF tokens, password hashes, field errors in Chinese."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from services.common.security import Principal
from services.web.accounts import AccountStore, check_password, ensure_demo_accounts, hash_password
from services.web.labels import field_error
from services.web.session import Operator, Sessions, Signer


def test_a_cookie_signed_by_one_replica_is_read_by_another_and_a_changed_one_is_not() -> None:
    one, other = Signer(b"k" * 32), Signer(b"k" * 32)
    value = one.dumps("session", {"sub": "clerk"}, ttl_s=60)
    assert other.loads("session", value) == {"sub": "clerk", "exp": other.loads("session", value)["exp"]}  # type: ignore[index]
    body, mac = value.rsplit(".", 1)
    assert other.loads("session", body[:-2] + "xx." + mac) is None
    assert other.loads("flash", value) is None  # a cookie of one purpose is not accepted for another
    assert Signer(b"x" * 32).loads("session", value) is None


def test_an_expired_cookie_is_refused() -> None:
    signer = Signer(b"k" * 32)
    assert signer.loads("session", signer.dumps("session", {"a": 1}, ttl_s=-1)) is None


def test_csrf_token_matches_only_its_own_nonce() -> None:
    signer = Signer(b"k" * 32)
    token = signer.csrf_token("nonce-1")
    assert signer.csrf_ok("nonce-1", token)
    assert not signer.csrf_ok("nonce-2", token)
    assert not signer.csrf_ok("nonce-1", None)
    assert not signer.csrf_ok(None, token)


def test_passwords_are_stored_as_scrypt_hashes_and_checked() -> None:
    stored = hash_password("correct horse")
    assert stored.startswith("scrypt$") and "correct horse" not in stored
    assert check_password("correct horse", stored)
    assert not check_password("wrong", stored)
    assert not check_password("correct horse", "md5$abc")


def test_demo_accounts_are_created_once_with_their_roles(tmp_path: Path) -> None:
    store = AccountStore(tmp_path / "accounts.json")
    nodes = [("511102", "county", "lszq-xfj", "lszq-sthjj")]
    first = ensure_demo_accounts(store, nodes, password_file=tmp_path / "pw.json")
    again = ensure_demo_accounts(store, nodes, password_file=tmp_path / "pw.json")
    assert [a.password for a in first] == [a.password for a in again]
    clerk = next(a for a in first if a.username == "clerk-511102")
    assert store.authenticate("clerk-511102", clerk.password) is not None
    assert store.authenticate("clerk-511102", "nope") is None
    handler = store.get("handler-511102")
    assert handler is not None and handler.roles == ("handler",) and handler.unit == "lszq-sthjj"


def test_the_services_reasons_read_as_chinese_field_errors() -> None:
    assert "手机号码" in field_error("must be a mainland mobile number: 11 digits starting 13–19")
    assert field_error("must not be empty") == "此项必须填写"
    assert "100" in field_error("must be at most 100 characters, got 120")


def _session(signer: Signer, ttl_s: int) -> str:
    principal = Principal(subject="clerk-511102", node="511102", unit="", roles=frozenset({"clerk"}))
    return signer.dumps("session", Operator(token="t", principal=principal).to_cookie(), ttl_s=ttl_s)


def test_a_verified_session_is_remembered_until_it_expires_and_a_changed_one_is_not_found(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    signer = Signer(b"k" * 32)
    sessions = Sessions(signer)
    value = _session(signer, 60)
    first = sessions.operator(value)
    assert first is not None and first.principal.subject == "clerk-511102"
    checks: list[str] = []
    monkeypatch.setattr(Signer, "loads", lambda self, purpose, raw: checks.append(raw))
    assert sessions.operator(value) is first and checks == []  # no HMAC or JSON the second time
    body, mac = value.rsplit(".", 1)
    assert sessions.operator(body[:-2] + "xx." + mac) is None and len(checks) == 1  # checked, refused
    monkeypatch.undo()
    monkeypatch.setattr(time, "time", lambda: first.principal.expires + 1.0)
    assert sessions.operator(value) is None  # expired, remembered or not
    assert sessions.operator("") is None and sessions.operator(None) is None


def test_the_remembered_sessions_are_bounded() -> None:
    signer = Signer(b"k" * 32)
    sessions = Sessions(signer, kept=2)
    values = [_session(signer, 60 + n) for n in range(3)]
    assert all(sessions.operator(v) is not None for v in values)
    assert len(sessions._known) <= 2
