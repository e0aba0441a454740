"""Operator tokens, the per-RPC policy table, response masking and field encryption (no servers)."""

from __future__ import annotations

import base64
import os

import pytest
from cryptography.exceptions import InvalidTag
from lianxin.common.v1 import common_pb2
from lianxin.intake.v1 import intake_service_pb2 as intake_pb2

from services.common.crypto import AesGcmCipher, Sm4GcmCipher, cipher_from_env, sm4_available
from services.common.errors import Unauthenticated
from services.common.rate_limit import RateLimiter
from services.common.security import (
    CITIZEN_METHODS,
    PEER_METHODS,
    Access,
    Principal,
    build_policy,
    issue_token,
    redact,
    verify_token,
)
from services.common.settings import SERVICES

KEY = b"unit-test-key"
ALL_SERVICES = [
    "lianxin.intake.v1.IntakeService",
    "lianxin.routing.v1.RoutingService",
    "lianxin.exchange.v1.ExchangeService",
    "lianxin.video.v1.VideoService",
    "lianxin.stats.v1.StatsService",
    "lianxin.national.v1.NationalService",
]


def _load_descriptors() -> None:
    import importlib

    for service in (*SERVICES, "national"):
        suffix = "_service_pb2"
        importlib.import_module(f"lianxin.{service}.v1.{service}{suffix}")


def test_token_round_trip_names_subject_node_unit_roles() -> None:
    token = issue_token(KEY, subject="li", node="511100", unit="u-env", roles=["handler"], ttl_s=60)
    principal = verify_token(KEY, token)
    assert (principal.subject, principal.node, principal.unit, principal.roles) == (
        "li",
        "511100",
        "u-env",
        frozenset({"handler"}),
    )


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: t[:-2] + ("AA" if not t.endswith("AA") else "BB"),  # signature changed
        lambda t: issue_token(b"other-key", subject="li", node="510000", roles=["admin"]),  # foreign key
        lambda t: "not-a-token",
        lambda t: issue_token(KEY, subject="li", node="511100", roles=["clerk"], ttl_s=-1),  # expired
    ],
)
def test_forged_expired_or_malformed_tokens_are_refused(mangle: object) -> None:
    token = issue_token(KEY, subject="li", node="511100", roles=["clerk"])
    with pytest.raises(Unauthenticated):
        verify_token(KEY, mangle(token))  # type: ignore[operator]


def test_claims_cannot_be_widened_without_the_key() -> None:
    token = issue_token(KEY, subject="li", node="511102", roles=["clerk"])
    prefix, _body, mac = token.split(".")
    widened = (
        base64.urlsafe_b64encode(b'{"exp":9999999999,"node":"510000","roles":["admin"],"sub":"li","unit":""}')
        .decode()
        .rstrip("=")
    )
    with pytest.raises(Unauthenticated):
        verify_token(KEY, f"{prefix}.{widened}.{mac}")


def test_unknown_roles_are_not_issued() -> None:
    with pytest.raises(ValueError):
        issue_token(KEY, subject="li", node="511102", roles=["root"])


def test_every_method_of_every_service_has_a_rule() -> None:
    _load_descriptors()
    policy = build_policy(ALL_SERVICES)
    from google.protobuf import descriptor_pool

    pool = descriptor_pool.Default()
    for service in ALL_SERVICES:
        for method in pool.FindServiceByName(service).methods:
            rule = policy[f"{service}/{method.name}"]
            if rule.access is Access.OPERATOR:
                assert rule.roles, method.full_name
    assert {m for m, r in policy.items() if r.access is Access.CITIZEN} == CITIZEN_METHODS
    assert {m for m, r in policy.items() if r.access is Access.PEER} <= PEER_METHODS
    # Reads are not audited, writes are.
    assert not policy["lianxin.intake.v1.IntakeService/GetCase"].mutating
    assert policy["lianxin.routing.v1.RoutingService/CloseWorkOrder"].mutating


def _case_reply() -> intake_pb2.GetCaseResponse:
    person = common_pb2.Person(name="张三", id_number="510102199001011234", phone="13812345678", address="某街1号")
    return intake_pb2.GetCaseResponse(case=common_pb2.Case(case_id="511102-1", complainant=person))


def test_office_roles_see_personal_data_masked() -> None:
    reply = _case_reply()
    redact(reply, Principal("s", "511102", "", frozenset({"supervisor"})))
    person = reply.case.complainant
    assert (person.name, person.id_number, person.phone, person.address) == (
        "张*",
        "510102********1234",
        "138****5678",
        "",
    )


def test_a_handling_unit_never_sees_who_complained() -> None:
    reply = _case_reply()
    redact(reply, Principal("h", "511102", "u-env", frozenset({"handler"})))
    assert reply.case.complainant == common_pb2.Person()
    assert reply.case.case_id == "511102-1"


def test_rate_limiter_refuses_after_the_budget_and_refills() -> None:
    now = [0.0]
    limiter = RateLimiter(3, clock=lambda: now[0])
    assert [limiter.allow("ip") for _ in range(4)] == [True, True, True, False]
    assert limiter.allow("other-ip")
    now[0] += 20.0  # one token per 20 s at 3/min
    assert limiter.allow("ip")


# --------------------------------------------------------------------------- encryption at rest


def _ring(**keys: bytes) -> str:
    return ",".join(f"{kid}:{base64.b64encode(key).decode()}" for kid, key in keys.items())


@pytest.mark.skipif(not sm4_available(), reason="OpenSSL without SM4")
def test_default_cipher_is_sm4_gcm_with_sm3_index() -> None:
    cipher = cipher_from_env({})
    assert isinstance(cipher, Sm4GcmCipher)
    blob = cipher.encrypt("13812345678", context="cases.phone")
    assert b"13812345678" not in blob
    assert cipher.decrypt(blob, context="cases.phone") == "13812345678"
    with pytest.raises(InvalidTag):
        cipher.decrypt(blob, context="cases.id_number")  # bound to its column
    assert cipher.blind_index("phone", "13812345678") == cipher.blind_index("phone", "13812345678")
    assert cipher.blind_index("phone", "13812345678") != cipher.blind_index("phone", "13812345679")


@pytest.mark.skipif(not sm4_available(), reason="OpenSSL without SM4")
def test_rotation_reencrypts_with_the_current_key_and_keeps_the_index() -> None:
    k1, k2 = os.urandom(16), os.urandom(16)
    old = cipher_from_env({"LIANXIN_DATA_KEYS": _ring(k1=k1), "LIANXIN_DATA_KEY_ID": "k1"})
    new = cipher_from_env({"LIANXIN_DATA_KEYS": _ring(k1=k1, k2=k2), "LIANXIN_DATA_KEY_ID": "k2"})
    assert isinstance(new, Sm4GcmCipher)
    blob = old.encrypt("510102199001011234", context="cases.id_number")
    assert new.decrypt(blob, context="cases.id_number") == "510102199001011234"  # old blobs still open
    rotated = new.rotate(blob, context="cases.id_number")
    assert rotated.startswith(b"k2:")
    assert Sm4GcmCipher("k2", {"k2": k2}, new.index_key).decrypt(rotated, context="cases.id_number") == (
        "510102199001011234"
    )
    # Lookups by blind index survive the rotation: the index key does not change with data keys.
    assert old.blind_index("id_number", "x") == new.blind_index("id_number", "x")


def test_keys_from_a_secret_file(tmp_path: object) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "keys"
    path.write_text("# data keys\n" + _ring(a=os.urandom(16)).replace(",", "\n") + "\n", "utf-8")
    cipher = cipher_from_env({"LIANXIN_DATA_KEYS_FILE": str(path)})
    assert cipher.key_id == "a"
    assert cipher.decrypt(cipher.encrypt("x", context="c"), context="c") == "x"


def test_aes_fallback_still_round_trips() -> None:
    cipher = AesGcmCipher("k", os.urandom(32), os.urandom(32))
    assert cipher.decrypt(cipher.rotate(cipher.encrypt("x", context="c"), context="c"), context="c") == "x"


def test_lianxin_token_and_certs_commands(tmp_path: object, capsys: pytest.CaptureFixture[str]) -> None:
    import argparse
    from pathlib import Path

    from services.common.commands import register
    from services.common.tls import cert_region

    parser = argparse.ArgumentParser(prog="lianxin")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(
        ["token", "--subject", "li", "--node", "511100", "--unit", "u1", "--roles", "handler,auditor", "--key", "k"]
    )
    assert args.func(args) == 0
    principal = verify_token(b"k", capsys.readouterr().out.strip())
    assert principal.roles == frozenset({"handler", "auditor"}) and principal.node == "511100"

    out = Path(str(tmp_path)) / "pki"
    args = parser.parse_args(["certs", "--out", str(out), "--nodes", "510000,511100"])
    assert args.func(args) == 0
    assert cert_region((out / "511100.pem").read_bytes()) == "511100"
    bad = parser.parse_args(["certs", "--out", str(out), "--nodes", "5100"])
    assert bad.func(bad) == 2
