"""`lianxin web` (one gateway) and `lianxin web-account` (add an operator account to the accounts file)."""

from __future__ import annotations

import argparse
import getpass
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

# Only light modules here: `lianxin --help` loads every commands.py (tests/unit/test_cli.py).
if TYPE_CHECKING:
    from services.common.settings import Settings


def serve(settings: Settings | None = None) -> int:
    """Run the gateway of ``LIANXIN_NODE`` (configured by LIANXIN_* and LIANXIN_WEB_*) until a signal."""
    import uvicorn

    from services.common.logs import configure_logging
    from services.common.settings import Settings
    from services.web.app import build_app, build_gateway
    from services.web.config import WebSettings

    node_settings = settings or Settings()
    configure_logging(node_settings.log_level, json=node_settings.log_json)
    web = WebSettings()
    app = build_app(build_gateway(node_settings, web))
    sock = socket.socket(socket.AF_INET6 if ":" in web.host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((web.host, web.port))
    host, port = sock.getsockname()[:2]
    print(f"web gateway of node {node_settings.node} on http://{host}:{port}/ (node {web.grpc})", flush=True)
    # proxy_headers off: uvicorn would otherwise believe X-Forwarded-For from 127.0.0.1; the gateway
    # decides itself, from LIANXIN_WEB_TRUSTED_PROXIES only (services/web/forwarding.py).
    config = uvicorn.Config(
        app, log_level="warning", access_log=False, lifespan="on", timeout_graceful_shutdown=5, proxy_headers=False
    )
    uvicorn.Server(config).run(sockets=[sock])
    return 0


def cmd_web(_args: argparse.Namespace) -> int:
    return serve()


def cmd_web_account(args: argparse.Namespace) -> int:
    from services.common.settings import Settings
    from services.web.accounts import Account, AccountStore, hash_password

    settings = Settings()
    path = Path(args.file) if args.file else Path(settings.data_dir) / "web-accounts.json"
    password = args.password if args.password is not None else getpass.getpass("password: ")
    if len(password) < 8:
        print("the password must have at least 8 characters", file=sys.stderr)
        return 2
    roles = tuple(r.strip() for r in args.roles.split(",") if r.strip())
    try:
        AccountStore(path).put(
            [Account(args.username, hash_password(password), args.node, roles, args.unit, args.display_name)]
        )
    except ValueError as error:
        print(str(error), file=sys.stderr)
        return 2
    print(f"account {args.username} ({', '.join(roles)} at {args.node}) saved in {path}")
    return 0


def register(sub: Any) -> None:
    web = sub.add_parser("web", help="run the web gateway (citizen portal + operator console) of LIANXIN_NODE")
    web.set_defaults(func=cmd_web)

    account = sub.add_parser("web-account", help="add or replace an operator account of the web console")
    account.add_argument("username")
    account.add_argument("--node", required=True, help="region code the operator works for")
    account.add_argument("--roles", required=True, help="comma-separated: clerk, handler, supervisor, auditor, admin")
    account.add_argument("--unit", default="", help="unit id (handlers)")
    account.add_argument("--display-name", default="")
    account.add_argument("--password", help="default: asked on the terminal")
    account.add_argument("--file", help="accounts file (default <LIANXIN_DATA_DIR>/web-accounts.json)")
    account.set_defaults(func=cmd_web_account)
