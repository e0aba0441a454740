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
    """Run the gateway of ``LIANXIN_NODE`` (configured by LIANXIN_* and LIANXIN_WEB_*) until a signal.

    With ``LIANXIN_WEB_WORKERS`` > 1, that many processes (uvicorn's supervisor, each building its own
    app and channels) accept on the one socket: the pages hold no session state.
    """
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    from services.common.logs import configure_logging
    from services.common.settings import Settings
    from services.web.config import WebSettings, load_key

    node_settings = settings or Settings()
    configure_logging(node_settings.log_level, json=node_settings.log_json)
    web = WebSettings()
    # The session key file exists before any worker starts, so all of them sign with the same key.
    load_key(web.session_key, fallback=Path(node_settings.data_dir) / "web-session.key")
    sock = socket.socket(socket.AF_INET6 if ":" in web.host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((web.host, web.port))
    host, port = sock.getsockname()[:2]
    workers = f", {web.workers} workers" if web.workers > 1 else ""
    print(f"web gateway of node {node_settings.node} on http://{host}:{port}/ (node {web.grpc}{workers})", flush=True)
    # proxy_headers off: uvicorn would otherwise believe X-Forwarded-For from 127.0.0.1; the gateway
    # decides itself, from LIANXIN_WEB_TRUSTED_PROXIES only (services/web/forwarding.py).
    # http: uvicorn's httptools protocol noting when each request arrived (the pages' Server-Timing).
    options: dict[str, Any] = dict(
        log_level="warning",
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=5,
        proxy_headers=False,
        http="services.web.timing:TimedHttpToolsProtocol",
    )
    if web.workers == 1:
        app = _app(node_settings)
        uvicorn.Server(uvicorn.Config(app, **options)).run(sockets=[sock])
        return 0
    # Each worker is a fresh interpreter that builds the app from the same environment.
    config = uvicorn.Config("services.web.commands:_app", factory=True, workers=web.workers, **options)
    Multiprocess(config, sockets=[sock]).run()
    return 0


def _app(settings: Settings | None = None) -> Any:
    """The gateway's ASGI app for ``LIANXIN_NODE`` (a worker's factory: settings from the environment)."""
    from services.common.logs import configure_logging
    from services.common.settings import Settings
    from services.web.app import build_app, build_gateway
    from services.web.config import WebSettings

    if settings is None:  # a worker process: configured here, as serve() configures the single one
        settings = Settings()
        configure_logging(settings.log_level, json=settings.log_json)
    return build_app(build_gateway(settings, WebSettings()))


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
