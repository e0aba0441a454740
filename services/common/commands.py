"""Operator commands for security: ``lianxin certs``, ``lianxin token``, ``lianxin audit verify``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from services.common.audit import Anchor
    from services.common.settings import Settings


def cmd_certs(args: argparse.Namespace) -> int:
    """A development CA and one certificate per node code in ``--out``."""
    from services.common.tls import write_dev_pki

    codes = [code.strip() for code in args.nodes.split(",") if code.strip()]
    bad = [code for code in codes if len(code) != 6 or not code.isdigit()]
    if bad:
        print(f"not 6-digit region codes: {', '.join(bad)}", file=sys.stderr)
        return 2
    hosts = [h.strip() for h in args.hosts.split(",") if h.strip()]
    for path in write_dev_pki(Path(args.out), codes, hosts=hosts):
        print(path)
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    """A signed development operator token, printed on stdout."""
    from services.common.security import issue_token, load_token_key
    from services.common.settings import Settings

    key = load_token_key(args.key or Settings().token_key)
    roles = [r.strip() for r in args.roles.split(",") if r.strip()]
    try:
        token = issue_token(
            key, subject=args.subject, node=args.node, unit=args.unit, roles=roles, ttl_s=int(args.ttl * 3600)
        )
    except ValueError as error:
        print(str(error), file=sys.stderr)
        return 2
    print(token)
    return 0


def cmd_audit_verify(_args: argparse.Namespace) -> int:
    """Walk this node's keyed audit chain and compare it with the anchors its parent holds.

    Exit 1 on a changed, deleted, rewritten or truncated record.
    """
    from services.common.audit import AuditLog, load_audit_key
    from services.common.db import make_engine, service_database_url
    from services.common.settings import Settings

    settings = Settings()
    anchors = parent_anchors(settings) if settings.parent else []
    engine = make_engine(service_database_url(settings, "audit"), service="audit")
    try:
        report = AuditLog(engine, settings.node, key=load_audit_key(settings)).verify(anchors)
    finally:
        engine.dispose()
    for problem in report.problems:
        print(problem)
    held = f", {len(anchors)} anchors held by the parent" if settings.parent else ", no parent to hold anchors"
    print(f"{report.checked} records checked{held}: {'OK' if report.ok else 'TAMPERED'}")
    return 0 if report.ok else 1


def parent_anchors(settings: Settings) -> list[Anchor]:
    """The heads of this node's audit chain that its parent holds (ExchangeService.ListAuditAnchors)."""
    import grpc
    from lianxin.exchange.v1 import exchange_service_pb2 as exchange_pb2
    from lianxin.exchange.v1 import exchange_service_pb2_grpc as exchange_grpc

    from services.common.audit import Anchor
    from services.common.grpcclient import instrumented_channel
    from services.common.tls import client_credentials

    assert settings.parent is not None
    credentials = client_credentials(settings.tls_dir, settings.node)
    channel: grpc.Channel = instrumented_channel(settings.parent, credentials=credentials)
    try:
        reply = exchange_grpc.ExchangeServiceStub(channel).ListAuditAnchors(
            exchange_pb2.ListAuditAnchorsRequest(child_node=settings.node), timeout=10
        )
    finally:
        channel.close()
    return [Anchor(a.head.sequence, a.head.hash) for a in reply.anchors]


def cmd_keys_new(args: argparse.Namespace) -> int:
    """A new data key for the keyring; append it to LIANXIN_DATA_KEYS and name it in LIANXIN_DATA_KEY_ID."""
    import datetime as dt

    from services.common.crypto import new_data_key

    key_id = args.id or f"k{dt.datetime.now(dt.UTC):%Y%m%d}"
    print(f"{key_id}:{new_data_key()}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    certs = subparsers.add_parser("certs", help="make a development CA and node certificates (mTLS)")
    certs.add_argument("--out", required=True, help="directory for ca.pem, <code>.pem, <code>.key")
    certs.add_argument("--nodes", required=True, help="comma-separated region codes, e.g. 510000,511100,511102")
    certs.add_argument("--hosts", default="localhost,127.0.0.1", help="extra DNS names / IPs in every cert")
    certs.set_defaults(func=cmd_certs)

    token = subparsers.add_parser("token", help="issue a development operator token")
    token.add_argument("--subject", required=True, help="who (operator id)")
    token.add_argument("--node", required=True, help="the operator's region code (their scope)")
    token.add_argument("--unit", default="", help="the operator's unit (handling units)")
    token.add_argument(
        "--roles", required=True, help="comma-separated: clerk,handler,supervisor,auditor,admin,evaluator"
    )
    token.add_argument("--ttl", type=float, default=8.0, help="hours")
    token.add_argument("--key", help="HMAC key or key file (default LIANXIN_TOKEN_KEY)")
    token.set_defaults(func=cmd_token)

    keys = subparsers.add_parser("keys", help="data keys (SM4) for LIANXIN_DATA_KEYS")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    new_key = keys_sub.add_parser("new", help="print a new key line: <id>:<base64 16 bytes>")
    new_key.add_argument("--id", default="", help="key id (default k<yyyymmdd>)")
    new_key.set_defaults(func=cmd_keys_new)

    audit = subparsers.add_parser("audit", help="audit trail tools")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    verify = audit_sub.add_parser("verify", help="verify this node's SM3-chained audit trail")
    verify.set_defaults(func=cmd_audit_verify)
