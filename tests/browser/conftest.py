"""A real federation with web gateways and token security, and Debian's chromium driven by Playwright.

Every page a test opens goes through ``Visitor.check``: no console errors, no horizontal scrolling
at 375 px, and no serious or critical axe-core violation (axe is vendored and run in the page).
With LIANXIN_WEB_SCREENSHOTS=<dir> the checked pages are also saved as PNG (docs/web.md uses them).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from services.federation import Federation
from tests.conftest import unavailable
from tests.helpers import free_port_block

AXE = Path(__file__).parent / "vendor" / "axe-core" / "axe.min.js"
MOBILE = {"width": 375, "height": 812}
DESKTOP = {"width": 1280, "height": 900}
TOPOLOGY = (("510000", None), ("511100", "510000"), ("511102", "511100"), ("511111", "511100"))


@pytest.fixture(scope="session")
def chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        unavailable("chromium", "Debian's chromium is not installed (apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        unavailable("playwright", "the playwright package is not installed")
    assert path is not None
    return path


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


@pytest.fixture(scope="module")
def web_federation(tmp_path_factory: pytest.TempPathFactory, chromium: str) -> Iterator[WebFederation]:
    from services.federation import demo_sign_in

    size = len(TOPOLOGY)
    base = free_port_block(3 * size, start=23000)
    token_key = secrets.token_hex(32)
    data_dir = Path(tmp_path_factory.mktemp("webfed"))
    # 领导批转: a leader class only the leader-queue test's cases fall in (its keyword is theirs alone).
    leader_classes = data_dir / "leader_classes.yaml"
    leader_classes.write_text(
        "classes:\n  - {id: major-safety, name: 重大安全事故隐患, leader: 市委书记, keywords: [危化品]}\n", "utf-8"
    )
    fed = Federation(
        data_dir=data_dir,
        base_port=base,
        metrics_base_port=base + size,
        web_base_port=base + 2 * size,
        topology=TOPOLOGY,
        with_national=False,
        extra_env={
            "LIANXIN_LOG_LEVEL": "WARNING",
            "LIANXIN_AUTH": "1",
            "LIANXIN_TOKEN_KEY": token_key,
            "LIANXIN_CITIZEN_RATE_PER_MIN": "1000",
            # The tests submit many cases as one complainant; the per-submitter limit is not theirs to test.
            "LIANXIN_INTAKE_RATE_LIMIT": "1000/3600",
            "LIANXIN_LEADER_CLASSES": str(leader_classes),
        },
    )
    demo_sign_in(fed)
    passwords = json.loads((fed.data_dir / "web-demo-passwords.json").read_text("utf-8"))
    try:
        fed.start(ready_timeout_s=180)
        yield WebFederation(fed, passwords, token_key)
    finally:
        fed.stop()


@pytest.fixture(scope="module")
def browser(chromium: str) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        instance = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            yield instance
        finally:
            instance.close()


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


@pytest.fixture
def visit(browser: Any) -> Iterator[Any]:
    """A factory of Visitors; each gets its own browser context (its own cookies)."""
    contexts: list[Any] = []

    def make() -> Visitor:
        context = browser.new_context(viewport=MOBILE, locale="zh-CN")
        contexts.append(context)
        page = context.new_page()
        visitor = Visitor(page)
        page.on("console", lambda m: visitor.console_errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: visitor.console_errors.append(str(e)))
        page.on("request", lambda r: visitor.urls.append(r.url))
        return visitor

    yield make
    for context in contexts:
        context.close()
