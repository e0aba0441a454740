"""The pages' own route table in front of Starlette (issue 17): a page found by one dict lookup.

Starlette's router tries every route's regular expression in turn until one matches (the console's
inbox is behind the portal's routes, the case page further still), and two exception layers wrap
every request in closures of their own; that was a fifth of the gateway's CPU per console page. The
page wrapper (``services.web.app.page``) already answers every failure of a page itself, so those
layers had nothing to do for a page. Here a request for a page of the table goes straight to its
wrapper: an exact path, or a path that is a prefix and one parameter at the end
(``/console/case/{case_id}``, which Starlette matches as ``[^/]+``). Anything else (static files,
/metrics, /healthz, HEAD, a method the path does not take, a trailing slash to redirect) goes to
Starlette as before, so its answers for those do not change.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette._utils import get_route_path
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

Endpoint = Callable[[Request], Awaitable[Response]]


class PageTable:
    """An ASGI app: the table's pages by (method, path), every other request to ``fallback``."""

    def __init__(self, fallback: Starlette) -> None:
        self.fallback = fallback
        self.exact: dict[tuple[str, str], Endpoint] = {}
        # (method, path up to its last "/") -> the endpoint and the name of the last segment's parameter
        self.tails: dict[tuple[str, str], tuple[Endpoint, str]] = {}

    def add(self, path: str, methods: list[str], endpoint: Endpoint) -> bool:
        """Serve ``path`` for ``methods`` from the table; False for a path shape it does not take
        (a parameter before the end, a typed converter): Starlette keeps that route alone."""
        prefix, _, last = path.rpartition("/")
        if "{" not in path:
            # Starlette takes the first route that matches: a parameter route added before this path
            # would answer it there, so such a path stays with Starlette.
            if any(self.find(method, path) for method in methods):
                return False
            for method in methods:
                self.exact[(method, path)] = endpoint
            return True
        if "{" in prefix or not (last.startswith("{") and last.endswith("}")) or ":" in last:
            return False
        for method in methods:
            self.tails.setdefault((method, prefix + "/"), (endpoint, last[1:-1]))
        return True

    def find(self, method: str, path: str) -> tuple[Endpoint, dict[str, Any]] | None:
        """The endpoint and path parameters of a request, or None: not a page of the table."""
        exact = self.exact.get((method, path))
        if exact is not None:
            return exact, {}
        slash = path.rfind("/") + 1
        value = path[slash:]
        tail = self.tails.get((method, path[:slash])) if value else None
        if tail is None:
            return None
        return tail[0], {tail[1]: value}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        found = self.find(scope["method"], get_route_path(scope)) if scope["type"] == "http" else None
        if found is None:
            await self.fallback(scope, receive, send)
            return
        endpoint, params = found
        # What Starlette and its router would have put in the scope for the page.
        scope["app"] = self.fallback
        scope["router"] = self.fallback.router
        scope["path_params"] = params
        scope["endpoint"] = endpoint
        response = await endpoint(Request(scope, receive, send))
        await response(scope, receive, send)
