"""A federation with web gateways and one checked browser visitor (console errors, width at 375 px, axe-core)."""

from __future__ import annotations

import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.federation import Federation

AXE = Path(__file__).parents[1] / "browser" / "vendor" / "axe-core" / "axe.min.js"
MOBILE = {"width": 375, "height": 812}
DESKTOP = {"width": 1280, "height": 900}


@dataclass
class WebFederation:
    federation: Federation
    passwords: dict[str, str]
    token_key: str

    def url(self, node: str) -> str:
        url = self.federation.node(node).web_url
        assert url is not None
        return url.rstrip("/")

    def grpc(self, node: str) -> str:
        return self.federation.node(node).address


@dataclass
class Visitor:
    """One person in one browser context (own cookies), at 375 px wide, with every page checked."""

    page: Any
    console_errors: list[str] = field(default_factory=list)
    urls: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)

    def goto(self, url: str) -> Any:
        return self.page.goto(url)

    def check(self, name: str, *, allow_console: tuple[str, ...] = ()) -> None:
        """No console error, no sideways scrolling at 375 px, no serious axe violation; screenshot on request."""
        page = self.page
        page.wait_for_load_state("load")
        errors = [e for e in self.console_errors if not any(a in e for a in allow_console)]
        assert not errors, f"{name}: console errors {errors}"
        self.console_errors.clear()
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= MOBILE["width"] + 1, f"{name}: the page is {width}px wide at 375px (sideways scrolling)"
        page.evaluate(AXE.read_text("utf-8"))
        result = page.evaluate(
            "async () => { const r = await axe.run(document, {resultTypes: ['violations']});"
            " return r.violations.map(v => ({id: v.id, impact: v.impact, help: v.help,"
            " nodes: v.nodes.slice(0, 3).map(n => n.target.join(' '))})); }"
        )
        serious = [v for v in result if v["impact"] in ("serious", "critical")]
        assert not serious, f"{name}: accessibility violations {serious}"
        self.checked.append(name)
        shots = os.environ.get("LIANXIN_WEB_SCREENSHOTS")
        if shots:
            Path(shots).mkdir(parents=True, exist_ok=True)
            page.set_viewport_size(DESKTOP)
            page.screenshot(path=str(Path(shots) / f"{name}.png"), full_page=True)
            page.set_viewport_size(MOBILE)
            page.screenshot(path=str(Path(shots) / f"{name}-mobile.png"), full_page=False)


def post_form(url: str, fields: dict[str, str], cookie: str = "") -> tuple[int, str]:
    """POST a form as a browser would, outside the browser (to send what a page would never send)."""
    data = urllib.parse.urlencode(fields).encode()
    request = urllib.request.Request(url, data=data, method="POST")
    if cookie:
        request.add_header("Cookie", cookie)
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
