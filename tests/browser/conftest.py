"""A real federation with web gateways and token security, and Debian's chromium driven by Playwright.

Every page a test opens goes through ``Visitor.check``: no console errors, no horizontal scrolling
at 375 px, and no serious or critical axe-core violation (axe is vendored and run in the page).
With LIANXIN_WEB_SCREENSHOTS=<dir> the checked pages are also saved as PNG (docs/web.md uses them).
"""

from __future__ import annotations

import json
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.federation import Federation
from tests.support.helpers import free_port_block
from tests.support.services import unavailable
from tests.support.web import MOBILE, Visitor, WebFederation

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
