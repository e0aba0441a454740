"""The gateway's page table answers each page as Starlette's router would have, and leaves it the rest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from starlette.routing import Match, Route

from services.common.settings import Settings
from services.web.app import build_app, build_gateway
from services.web.config import WebSettings
from services.web.dispatch import PageTable


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> PageTable:
    data_dir: Path = tmp_path_factory.mktemp("web-dispatch")
    # Channels connect lazily: nothing answers on port 9, and nothing is asked here.
    return build_app(build_gateway(Settings(node="511102", data_dir=data_dir), WebSettings(grpc="127.0.0.1:9")))


def _starlette_choice(table: PageTable, method: str, path: str) -> tuple[Any, dict[str, Any]] | None:
    """The endpoint and path parameters Starlette's router picks: the first full match, in order."""
    scope = {"type": "http", "method": method, "path": path, "root_path": ""}
    for route in table.fallback.router.routes:
        match, child = route.matches(scope)
        if match is Match.FULL:
            return (route.endpoint if isinstance(route, Route) else route), child.get("path_params", {})
    return None


def _page_paths(table: PageTable) -> list[tuple[str, str]]:
    paths = []
    for route in table.fallback.router.routes:
        if isinstance(route, Route) and route.methods:
            concrete = route.path.replace("{case_id}", "511102-20261206-000001")
            paths += [(method, concrete) for method in sorted(route.methods) if method != "HEAD"]
    return paths


def test_every_page_is_found_in_the_table_as_starlette_routes_it(table: PageTable) -> None:
    found_pages = 0
    for method, path in _page_paths(table):
        found = table.find(method, path)
        if found is None:  # /healthz and /metrics stay with Starlette
            assert path in {"/healthz", "/metrics"}, (method, path)
            continue
        found_pages += 1
        assert found == _starlette_choice(table, method, path), (method, path)
    assert found_pages >= 25
    _endpoint, params = table.find("GET", "/console/case/511102-20261206-000001") or (None, {})
    assert params == {"case_id": "511102-20261206-000001"}
    assert table.find("POST", "/console/case/x") != table.find("GET", "/console/case/x")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("HEAD", "/console"),  # Starlette answers HEAD for a GET route
        ("PUT", "/console"),  # 405 with its Allow header
        ("GET", "/console/"),  # the redirect to /console
        ("GET", "/console/case/"),  # an empty parameter: no route, as [^/]+ needs a character
        ("GET", "/console/case/a/b"),
        ("GET", "/static/site.css"),
        ("GET", "/metrics"),
        ("GET", "/nowhere"),
    ],
)
def test_what_is_not_a_page_goes_to_starlette(table: PageTable, method: str, path: str) -> None:
    assert table.find(method, path) is None


def test_a_parameter_route_listed_first_keeps_the_paths_it_matches() -> None:
    async def first(_request: Any) -> Any:
        raise AssertionError

    async def second(_request: Any) -> Any:
        raise AssertionError

    table = PageTable(fallback=None)  # type: ignore[arg-type]
    assert table.add("/case/{case_id}", ["GET"], first)
    assert not table.add("/case/new", ["GET"], second)  # Starlette would answer it with the first route
    assert table.find("GET", "/case/new") == (first, {"case_id": "new"})
    assert not table.add("/a/{b}/c", ["GET"], second)  # a parameter before the end: Starlette's alone
    assert not table.add("/a/{n:int}", ["GET"], second)  # a typed converter
