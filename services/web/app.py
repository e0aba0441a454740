"""Composition root of the web gateway: the Starlette app, its pages, cookies, CSRF, headers and metrics.

Every page is a plain function ``view(page) -> Response`` run in a worker thread (gRPC calls block),
or, for the busiest pages (the inbox, the case page), a coroutine awaited on the event loop that asks
the node through grpc.aio (``Page.acall``); ``page()`` wraps either with what every request needs:
the signed session, the CSRF check on every POST, the security headers and the request metrics. No
session state lives in the process.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, timedelta, timezone
from pathlib import Path
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from jinja2 import Environment, PackageLoader, select_autoescape
from lianxin.routing.v1 import routing_service_pb2 as routing_pb2
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from services.common.calendar import ChineseWorkingCalendar
from services.common.errors import DomainError
from services.common.regions import RegionTree
from services.common.security import citizen_address_metadata, issue_token, load_token_key, rule_for
from services.common.settings import Settings
from services.common.tls import client_credentials
from services.web import labels
from services.web.accounts import AccountStore
from services.web.client import CallFailed, NodeClient
from services.web.config import WebSettings, load_key
from services.web.dispatch import PageTable
from services.web.forwarding import Network, citizen_address, parse_proxies
from services.web.session import Sessions, Signer, new_nonce
from services.web.timing import received_at

log = logging.getLogger(__name__)
UNITS_TTL_S = 300.0
WORKDAYS_KEPT = 20_000  # (today, due day) pairs; a day's worth of every deadline a gateway shows

CHINA = timezone(timedelta(hours=8))
STATIC_DIR = Path(__file__).parent / "static"
STATIC_PROBE = "<!doctype html><html lang=zh-CN><title>static</title><p>static</p></html>"

# No inline script or style anywhere: the pages use only files from /static (and SVG attributes).
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}
# Every answer's headers unless its view set its own, encoded once as uvicorn sends them (lower-case
# names, in this order): not set one by one through Starlette's MutableHeaders on every page.
DEFAULT_HEADERS = tuple(
    (name.lower().encode("latin-1"), value.encode("latin-1"))
    for name, value in {**SECURITY_HEADERS, "Cache-Control": "no-store"}.items()
)


@dataclass
class Gateway:
    """What every page needs: settings, the node client, keys, accounts, regions, templates, metrics."""

    node_settings: Settings
    settings: WebSettings
    client: NodeClient
    signer: Signer
    accounts: AccountStore
    regions: RegionTree
    token_key: bytes | None
    templates: Environment
    calendar: ChineseWorkingCalendar = field(default_factory=ChineseWorkingCalendar)
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    trusted_proxies: tuple[Network, ...] = ()
    _portal_token: tuple[str, float] | None = field(default=None, init=False, repr=False)
    _units: tuple[float, list[Any]] | None = field(default=None, init=False, repr=False)
    _workdays: dict[tuple[date, date], int | None] = field(default_factory=dict, init=False, repr=False)
    # (route, method, status) -> its counter and histogram children; routes and methods are the
    # table's, statuses the few a page answers with.
    _series: dict[tuple[str, str, int], tuple[Any, Any]] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self.sessions = Sessions(self.signer)
        self.requests = Counter(
            "lianxin_web_requests_total",
            "HTTP requests answered by the web gateway, by route and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.seconds = Histogram(
            "lianxin_web_request_seconds",
            "Server time of a web request, by route",
            ["route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=self.registry,
        )

    def count(self, route: str, method: str, status: int, seconds: float) -> None:
        """One answered request in the metrics. The series' children are kept by their labels:
        prometheus_client's ``labels()`` checks and joins its labels under a lock on every call."""
        key = (route, method, status)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = (self.requests.labels(route, method, str(status)), self.seconds.labels(route))
        series[0].inc()
        series[1].observe(seconds)

    @property
    def node(self) -> str:
        return self.node_settings.node

    def portal_token(self) -> str | None:
        """The public pages' own read-only token (role auditor), for figures the node shows operators only.

        None when the node needs no tokens. Minted with the node's token key and renewed before expiry.
        """
        if self.token_key is None:
            return None
        now = time.time()
        cached = self._portal_token
        if cached is None or cached[1] - 60 < now:
            token = issue_token(
                self.token_key, subject=f"web-portal@{self.node}", node=self.node, roles=["auditor"], ttl_s=600
            )
            cached = (token, now + 600)
            self._portal_token = cached
        return cached[0]

    def units(self) -> list[Any]:
        """The node's handling units (routing's ListUnits), kept five minutes: catalogues change rarely.

        Only a cache (each replica its own); an empty list when routing does not answer, so pages
        fall back to the unit codes.
        """
        if (fresh := self._fresh_units()) is not None:
            return fresh
        try:
            reply = self.client.call(self.client.routing.ListUnits, routing_pb2.ListUnitsRequest(), self.portal_token())
        except CallFailed:
            return self._units[1] if self._units is not None else []
        return self._keep_units(reply.units)

    async def units_async(self) -> list[Any]:
        """``units()`` for a page on the event loop (a template's ``unit_name`` then finds them kept)."""
        if (fresh := self._fresh_units()) is not None:
            return fresh
        try:
            reply = await self.client.acall("routing", "ListUnits", routing_pb2.ListUnitsRequest(), self.portal_token())
        except CallFailed:
            return self._units[1] if self._units is not None else []
        return self._keep_units(reply.units)

    def _fresh_units(self) -> list[Any] | None:
        cached = self._units
        return cached[1] if cached is not None and time.monotonic() - cached[0] < UNITS_TTL_S else None

    def _keep_units(self, units: Any) -> list[Any]:
        self._units = (time.monotonic(), list(units))
        return self._units[1]

    def workdays_until(self, today: date, due: date) -> int | None:
        """``calendar.workdays_between(today, due)``, remembered: the calendar counts day by day, and
        an inbox of deadlines years past (or a closed case's page) counted thousands of days a page."""
        key = (today, due)
        if key not in self._workdays:
            if len(self._workdays) >= WORKDAYS_KEPT:
                self._workdays.clear()
            try:
                self._workdays[key] = self.calendar.workdays_between(today, due)
            except DomainError:
                self._workdays[key] = None
        return self._workdays[key]

    def unit_name(self, unit_id: str) -> str:
        """区生态环境局 for a work order's unit id; the id itself for a unit of another node."""
        return next((u.name for u in self.units() if u.unit_id == unit_id), unit_id)

    def cookie(self, kind: str) -> str:
        # Browsers share cookies across ports of one host: the node's code keeps gateways apart.
        return f"lx_{kind}_{self.node}"


class Page:
    """One request as a page sees it: the form, the operator, and helpers to answer."""

    def __init__(self, gateway: Gateway, request: Request, form: Mapping[str, str], nonce: str) -> None:
        self.gateway = gateway
        self.request = request
        self.form = form
        self.nonce = nonce
        self.cookies: list[tuple[str, str, int]] = []  # name, value, max-age (0 deletes)
        self.operator = gateway.sessions.operator(request.cookies.get(gateway.cookie("session")))

    @property
    def client(self) -> NodeClient:
        return self.gateway.client

    @property
    def token(self) -> str | None:
        return self.operator.token if self.operator else None

    def call(self, method: Callable[..., Any], request: Any, *, timeout: float | None = None) -> Any:
        return self.client.call(method, request, self.token, timeout=timeout)

    async def acall(self, service: str, method: str, request: Any) -> Any:
        """``call`` for an async view: awaited on the event loop, no worker thread."""
        return await self.client.acall(service, method, request, self.token)

    async def aread_together(self, parts: Sequence[tuple[str, str, Any, Any]]) -> list[Any]:
        """Several reads' answers (or ``CallFailed``s), in one call to the node where it can (``NodeClient``)."""
        return await self.client.aread_together(parts, self.token)

    @property
    def citizen_address(self) -> str:
        peer = self.request.client.host if self.request.client else ""
        return citizen_address(peer, self.request.headers.getlist("x-forwarded-for"), self.gateway.trusted_proxies)

    def public(self, method: Callable[..., Any], request: Any) -> Any:
        """A public (citizen) method, naming the citizen's address to the node for its rate limit."""
        key = self.gateway.token_key
        metadata = (citizen_address_metadata(key, self.citizen_address),) if key is not None else ()
        return self.client.call(method, request, metadata=metadata)

    def query(self, name: str, default: str = "") -> str:
        return str(self.request.query_params.get(name, default)).strip()

    def field(self, name: str) -> str:
        return str(self.form.get(name, "")).strip()

    def flash(self, message: str) -> None:
        value = self.gateway.signer.dumps("flash", {"m": message}, ttl_s=120)
        self.cookies.append((self.gateway.cookie("flash"), value, 120))

    def take_flash(self) -> str:
        data = self.gateway.signer.loads("flash", self.request.cookies.get(self.gateway.cookie("flash")))
        if data is None:
            return ""
        self.cookies.append((self.gateway.cookie("flash"), "", 0))
        return str(data.get("m", ""))

    def render(self, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        gw = self.gateway
        html = gw.templates.get_template(template).render(
            page=self,
            operator=self.operator,
            node=gw.node,
            node_name=gw.regions.display_name(gw.node) if gw.node in gw.regions else gw.node,
            csrf=gw.signer.csrf_token(self.nonce),
            flash=context.pop("flash", None) or self.take_flash(),
            auth_on=gw.token_key is not None and gw.node_settings.auth,
            unit_name=gw.unit_name,
            handling_units=gw.units,
            **context,
        )
        return HTMLResponse(html, status_code=status)

    def redirect(self, url: str) -> RedirectResponse:
        return RedirectResponse(url, status_code=303)

    def error(self, status: int, title: str, message: str) -> HTMLResponse:
        return self.render("error.html", status=status, title=title, message=message)

    def may(self, full_method: str) -> bool:
        """True when the operator's roles pass the node's policy for the method (the node checks again)."""
        return self.operator is not None and self.operator.principal.has_any(rule_for(full_method).roles)


# A view is a plain function run in a worker thread (sync gRPC stubs), or a coroutine function
# awaited on the event loop (grpc.aio through Page.acall; the busiest pages, issue 17).
View = Callable[[Page], Response] | Callable[[Page], Awaitable[Response]]


def _apply(response: Response, gateway: Gateway, page: Page | None, nonce: str, fresh_nonce: bool) -> None:
    # raw_headers is the list response.headers edits too: extended in place, both stay one.
    given = {name for name, _ in response.raw_headers}
    response.raw_headers.extend(header for header in DEFAULT_HEADERS if header[0] not in given)
    secure = gateway.settings.secure_cookies
    if fresh_nonce:
        response.set_cookie(
            gateway.cookie("csrf"), nonce, max_age=86400 * 7, httponly=True, samesite="strict", secure=secure
        )
    if page is not None:
        for name, value, max_age in page.cookies:
            if max_age == 0:
                response.delete_cookie(name, httponly=True, samesite="strict", secure=secure)
            else:
                response.set_cookie(name, value, max_age=max_age, httponly=True, samesite="strict", secure=secure)


def page(gateway: Gateway, route: str, view: View) -> Callable[[Request], Awaitable[Response]]:
    """Wrap a view: cookies, CSRF on POST, headers, metrics, and one answer for every failure."""

    async def run(current: Page) -> Response:
        if inspect.iscoroutinefunction(view):
            answer: Response = await view(current)
            return answer
        return await run_in_threadpool(view, current)  # type: ignore[arg-type]

    async def endpoint(request: Request) -> Response:
        # From the request's first bytes read by the gateway, not from here: the wait for the event
        # loop to start this task is the server's time too (services/web/timing.py).
        started = received_at(request.scope)
        nonce = request.cookies.get(gateway.cookie("csrf")) or ""
        fresh = not nonce
        nonce = nonce or new_nonce()
        form: dict[str, str] = {}
        current: Page | None = None
        try:
            if request.method == "POST":
                raw = await request.form()
                form = {k: v for k, v in raw.items() if isinstance(v, str)}
                if fresh or not gateway.signer.csrf_ok(nonce, form.get("csrf")):
                    current = Page(gateway, request, {}, nonce)
                    response: Response = current.error(
                        403, "请求已失效", "表单缺少有效的安全校验码（CSRF）。请返回上一页，刷新后重新提交。"
                    )
                else:
                    current = Page(gateway, request, form, nonce)
                    response = await run(current)
            else:
                current = Page(gateway, request, {}, nonce)
                response = await run(current)
        except CallFailed as failure:
            current = current or Page(gateway, request, {}, nonce)
            response = failure_page(current, failure)
        except Exception:
            log.exception("web page failed", extra={"route": route})
            current = Page(gateway, request, {}, nonce)
            response = current.error(500, "服务暂时不可用", "页面出错了，请稍后再试。")
        _apply(response, gateway, current, nonce, fresh)
        elapsed = time.perf_counter() - started
        # Server time in the answer itself, from the request's arrival to its answer handed to uvicorn
        # (bench/web reads it; browsers show it in their dev tools). No view sets it: appended.
        response.raw_headers.append((b"server-timing", f"app;dur={elapsed * 1000:.2f}".encode("latin-1")))
        gateway.count(route, request.method, response.status_code, elapsed)
        return response

    return endpoint


def failure_page(page: Page, failure: CallFailed) -> Response:
    status = failure.status
    if status >= 500:
        log.warning("node call failed", extra={"code": failure.code.name, "details": failure.message})
    if status == 401:
        page.cookies.append((page.gateway.cookie("session"), "", 0))
        return page.redirect("/console/login")
    titles = {
        403: ("无权访问", "您的账号无权查看或办理此事项（超出本账号的地区、单位或角色范围）。"),
        404: ("未找到", "没有找到该事项，或它不在本节点。"),
        409: ("当前状态不允许此操作", labels.field_error(failure.message)),
        429: ("请求过于频繁", "请一分钟后再试。"),
        503: ("服务暂时不可用", "本地区的服务暂时无法连接，请稍后再试。"),
    }
    title, message = titles.get(status, ("服务暂时不可用", "请稍后再试。"))
    return page.error(status, title, message)


# --------------------------------------------------------------------------- template helpers


def local_time(ts: Timestamp | None, fmt: str = "%Y-%m-%d %H:%M") -> str:
    if ts is None or (ts.seconds == 0 and ts.nanos == 0):
        return ""
    return ts.ToDatetime(tzinfo=UTC).astimezone(CHINA).strftime(fmt)


def make_templates(regions: RegionTree) -> Environment:
    env = Environment(
        loader=PackageLoader("services.web", "templates"),
        autoescape=select_autoescape(["html", "svg"]),
        trim_blocks=True,
        lstrip_blocks=True,
        # The templates ship with the code: no stat() of every template file on every page.
        auto_reload=False,
    )
    env.filters["local_time"] = local_time
    env.filters["state_label"] = labels.state_label
    env.filters["state_name"] = labels.state_name
    env.filters["channel_label"] = labels.channel_label
    env.filters["history_action"] = labels.history_action
    env.filters["actor_label"] = labels.actor_label
    env.filters["public_summary"] = labels.public_summary
    env.filters["region_name"] = lambda code: regions.display_name(code) if code in regions else code
    env.filters["history_note"] = lambda note: labels.history_note(note, env.filters["region_name"])
    env.globals.update(
        STATE_LABELS=labels.STATE_LABELS,
        DEADLINE_LABELS=labels.DEADLINE_LABELS,
        HISTORY_LABELS=labels.HISTORY_LABELS,
        METRIC_LABELS=labels.METRIC_LABELS,
        ROLE_LABELS=labels.ROLE_LABELS,
        CHANNEL_LABELS=labels.CHANNEL_LABELS,
        SATISFACTION_LABELS=labels.SATISFACTION_LABELS,
        VISIT_LABELS=labels.VISIT_LABELS,
        CONSULTATION_LABELS=labels.CONSULTATION_LABELS,
        CONSULTATION_BOOKED=labels.CONSULTATION_BOOKED,
    )
    return env


def build_gateway(node_settings: Settings, settings: WebSettings, *, regions: RegionTree | None = None) -> Gateway:
    data_dir = Path(node_settings.data_dir)
    token_key = load_token_key(node_settings.token_key) if node_settings.token_key else None
    session_key = load_key(settings.session_key, fallback=data_dir / "web-session.key")
    tree = regions or RegionTree.load(node_settings.regions_file)
    return Gateway(
        node_settings=node_settings,
        settings=settings,
        client=NodeClient(settings, client_credentials(node_settings.tls_dir, node_settings.node)),
        signer=Signer(session_key),
        accounts=AccountStore(settings.accounts_file or data_dir / "web-accounts.json"),
        regions=tree,
        token_key=token_key,
        templates=make_templates(tree),
        trusted_proxies=parse_proxies(settings.trusted_proxies),
    )


def build_app(gateway: Gateway) -> PageTable:
    """The gateway's ASGI app: its pages from its own table (services/web/dispatch.py), the rest
    (static files, health, metrics, redirects, 404 and 405) from Starlette's router."""
    from services.web import console, portal

    routes: list[BaseRoute] = []
    pages: list[tuple[str, list[str], Callable[[Request], Awaitable[Response]]]] = []
    for path, name, view, methods in (*portal.ROUTES, *console.ROUTES):
        endpoint = page(gateway, name, view)
        routes.append(Route(path, endpoint, methods=methods, name=name))
        pages.append((path, methods, endpoint))
        # Every route's answered and failed series exist from the start (at 0), so the 5xx alert's
        # rate() sees the first failure.
        for method in methods:
            for status in ("200", "500"):
                gateway.requests.labels(name, method, status)
        gateway.seconds.labels(name)

    async def health(_request: Request) -> Response:
        return PlainTextResponse("ok")

    async def metrics(_request: Request) -> Response:
        return Response(generate_latest(gateway.registry), media_type=CONTENT_TYPE_LATEST)

    # The bench's same-server baseline: the same wrapper (cookies, CSRF, headers, metrics, thread
    # hop) and the same way in as the pages, around a fixed page, with no gRPC call and no template.
    probe = page(gateway, "static_probe", lambda _page: HTMLResponse(STATIC_PROBE))
    pages.append(("/bench/static", ["GET"], probe))
    routes += [
        Route("/healthz", health),
        Route("/metrics", metrics),
        Route("/bench/static", probe),
        Mount("/static", app=StaticFiles(directory=STATIC_DIR), name="static"),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        yield
        await gateway.client.aclose()
        gateway.client.close()

    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.gateway = gateway
    table = PageTable(app)
    for path, methods, endpoint in pages:
        table.add(path, methods, endpoint)
    return table


def today_month() -> str:
    return date.today().strftime("%Y-%m")
