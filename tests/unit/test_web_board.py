"""The public reply board (张榜公布) names each unit as people know it, not by its code."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import grpc
import pytest
from lianxin.stats.v1 import stats_service_pb2 as stats_pb2

from services.stats.domain.metrics import DEFINITIONS_ZH
from services.web import portal
from services.web.app import Gateway
from services.web.client import CallFailed
from services.web.labels import METRIC_LABELS


class _Stats:
    """Stats as the board asks it: each unit's figure of a metric, the unit named by its code (as stats does)."""

    def RankUnits(self, request: stats_pb2.RankUnitsRequest) -> stats_pb2.RankUnitsResponse:
        rows = [
            stats_pb2.Ranking(unit_id=unit, name=unit, value=0.5, cases=cases)
            for unit, cases in (("lszq-sthjj", 7), ("lszq-other", 3))
        ]
        return stats_pb2.RankUnitsResponse(rows=rows)

    def GetMetrics(self, request: stats_pb2.GetMetricsRequest) -> stats_pb2.GetMetricsResponse:
        return stats_pb2.GetMetricsResponse()


class _Client:
    stats = _Stats()

    @staticmethod
    def start(method: Any, request: Any, token: str | None = None) -> Any:
        return method(request)

    @staticmethod
    def result(future: Any) -> Any:
        return future


class _Gateway:
    node = "511102"
    unit_name = Gateway.unit_name  # the real lookup, over routing's ListUnits below

    @staticmethod
    def portal_token() -> None:
        return None

    @staticmethod
    def units() -> list[Any]:
        return [SimpleNamespace(unit_id="lszq-sthjj", name="乐山市市中生态环境局")]


def test_the_board_names_each_unit_and_shows_the_code_only_for_an_unknown_unit() -> None:
    page: Any = SimpleNamespace(gateway=_Gateway(), client=_Client())
    figures = portal._ask_unit_figures(page, "2026-11")
    assert figures is not None
    assert [u["name"] for u in figures[0]] == ["乐山市市中生态环境局", "lszq-other"]


class _CountingStats(_Stats):
    """A month no unit has figures in yet (or, with ``failing``, a stats service that does not answer)."""

    def __init__(self, *, failing: bool = False) -> None:
        self.asked = 0
        self.failing = failing

    def RankUnits(self, request: stats_pb2.RankUnitsRequest) -> stats_pb2.RankUnitsResponse:
        self.asked += 1
        if self.failing:  # the call's future: its result raises, as the gateway's client's does
            return CallFailed(grpc.StatusCode.UNAVAILABLE, "stats is restarting")  # type: ignore[return-value]
        return stats_pb2.RankUnitsResponse()


def _answer(future: Any) -> Any:
    if isinstance(future, CallFailed):
        raise future
    return future


def _board_page(stats: _Stats) -> Any:
    client = SimpleNamespace(stats=stats, start=_Client.start, result=_answer)
    return SimpleNamespace(gateway=_Gateway(), client=client)


def test_a_month_without_figures_is_kept_a_minute_like_any_other(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(portal, "_unit_figures_cache", {})
    stats = _CountingStats()
    page = _board_page(stats)
    assert portal._unit_figures(page, "2026-12") == ([], {})
    assert portal._unit_figures(page, "2026-12") == ([], {})
    assert stats.asked == len(portal.UNIT_METRICS), "the empty month was asked again on the next board page"


def test_a_failed_answer_is_not_kept_so_the_next_page_asks_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(portal, "_unit_figures_cache", {})
    stats = _CountingStats(failing=True)
    page = _board_page(stats)
    assert portal._unit_figures(page, "2026-12") == ([], {})
    stats.failing = False
    portal._unit_figures(page, "2026-12")
    assert stats.asked == 2 * len(portal.UNIT_METRICS), "a failure was kept as the month's figures"


def test_every_figure_is_named_on_the_web_as_the_stats_definition_names_it() -> None:
    # The board shows stats' Chinese definitions beside the web's column names: one term for one rule.
    for metric, label in METRIC_LABELS.items():
        term = DEFINITIONS_ZH[metric].split("：", 1)[0]
        assert label.removesuffix("（工作日）") == term, metric
