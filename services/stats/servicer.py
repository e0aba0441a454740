"""StatsService gRPC adapter: translate requests, delegate to the handlers, translate answers."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from lianxin.common.v1 import common_pb2
from lianxin.stats.v1 import stats_service_pb2 as stats_pb2
from lianxin.stats.v1 import stats_service_pb2_grpc as stats_grpc
from sqlalchemy.orm import Session, sessionmaker

from services.common.errors import InvalidArgument
from services.common.regions import RegionTree
from services.common.timeutil import from_duration, from_timestamp, to_timestamp
from services.stats import handlers
from services.stats.domain import DEFINITIONS_ZH, RankRow, StatsConfig, month_bounds, parse_month
from services.stats.hotspot import HotspotRules
from services.stats.store import SqlWarehouse

_CONTENT_TYPES = {".md": "text/markdown", ".csv": "text/csv", ".png": "image/png"}


def channel_name(value: int) -> str:
    if not value:
        return ""
    try:
        return str(common_pb2.Channel.Name(value)).removeprefix("CHANNEL_").lower()  # type: ignore[arg-type]
    except ValueError:
        raise InvalidArgument("channel", f"unknown channel value {value}") from None


def _duration(value: Any, field: str) -> timedelta | None:
    # Whole minutes at least: a hotspot window or baseline of a few nanoseconds is meaningless
    # (and divides by zero in the rate test).
    found = from_duration(value, field)
    if found is not None and found < timedelta(minutes=1):
        raise InvalidArgument(field, "must be at least one minute")
    return found


class StatsServicer(stats_grpc.StatsServiceServicer):
    def __init__(
        self,
        *,
        session_factory: sessionmaker[Session],
        regions: RegionTree,
        node: str,
        config: StatsConfig | None = None,
        clock: Callable[[], datetime],
        hotspot_rules: HotspotRules | None = None,
    ) -> None:
        self._factory = session_factory
        self._regions = regions
        self._node = node
        self._config = config or StatsConfig()
        self._clock = clock
        self._rules = hotspot_rules or HotspotRules()

    def GetMetrics(self, request: stats_pb2.GetMetricsRequest, context: Any) -> stats_pb2.GetMetricsResponse:
        months: tuple[str, ...] = ()
        start = from_timestamp(request.period_start, "period_start")
        end = from_timestamp(request.period_end, "period_end")
        if request.month:
            parse_month(request.month)
            months = (request.month,)
            start, end = month_bounds(request.month, self._config)
        where = handlers.make_slice(
            self._regions,
            self._node,
            region_code=request.region_code,
            unit_id=request.unit_id,
            category=request.category,
            channel=channel_name(request.channel),
            months=months,
            start=None if months else start,
            end=None if months else end,
        )
        as_of = self._clock()
        with self._factory() as session:
            values = handlers.get_metrics(
                SqlWarehouse(session),
                where,
                names=list(request.metrics),
                as_of=as_of,
                with_ids=request.include_case_ids,
            )
        response = stats_pb2.GetMetricsResponse(
            metrics=[
                stats_pb2.Metric(
                    name=v.name,
                    definition=v.definition,
                    definition_zh=DEFINITIONS_ZH.get(v.name, ""),
                    value=v.value,
                    numerator=v.numerator,
                    denominator=v.denominator,
                    case_ids=v.case_ids,
                )
                for v in values
            ]
        )
        if start:
            response.period_start.CopyFrom(to_timestamp(start))
        if end:
            response.period_end.CopyFrom(to_timestamp(end))
        response.as_of.CopyFrom(to_timestamp(as_of))
        return response

    def _rows(self, rows: list[RankRow], *, units: bool) -> list[stats_pb2.Ranking]:
        out = []
        for row in rows:
            if units:
                prefix = row.key.split(":", 1)[0]
                region = prefix if prefix in self._regions else ""
                name, unit = row.key, row.key
            else:
                region, name, unit = row.key, self._regions.get(row.key).name, ""
            out.append(
                stats_pb2.Ranking(
                    region_code=region,
                    name=name,
                    value=row.value,
                    cases=row.cases,
                    rank=row.rank,
                    change_vs_previous=row.change_vs_previous,
                    flagged=row.flagged,
                    unit_id=unit,
                )
            )
        return out

    def RankRegions(self, request: stats_pb2.RankRegionsRequest, context: Any) -> stats_pb2.RankRegionsResponse:
        with self._factory() as session:
            rows = handlers.rank_regions(
                SqlWarehouse(session),
                self._regions,
                self._node,
                parent_region_code=request.parent_region_code,
                metric=request.metric,
                month=request.month,
                year=request.year,
                min_cases=request.min_cases,
                as_of=self._clock(),
            )
        return stats_pb2.RankRegionsResponse(rows=self._rows(rows, units=False))

    def RankUnits(self, request: stats_pb2.RankUnitsRequest, context: Any) -> stats_pb2.RankUnitsResponse:
        with self._factory() as session:
            rows = handlers.rank_units(
                SqlWarehouse(session),
                self._regions,
                self._node,
                region_code=request.region_code,
                metric=request.metric,
                month=request.month,
                year=request.year,
                min_cases=request.min_cases,
                as_of=self._clock(),
            )
        return stats_pb2.RankUnitsResponse(rows=self._rows(rows, units=True))

    def ListHotspots(self, request: stats_pb2.ListHotspotsRequest, context: Any) -> stats_pb2.ListHotspotsResponse:
        rules = self._rules
        window = _duration(request.window, "window")
        baseline = _duration(request.baseline, "baseline")
        if window is not None:
            rules = HotspotRules(**{**rules.__dict__, "window": window})
        if baseline is not None:
            rules = HotspotRules(**{**rules.__dict__, "baseline": baseline})
        as_of = from_timestamp(request.as_of, "as_of") or self._clock()
        with self._factory() as session:
            found = handlers.hotspots(
                SqlWarehouse(session),
                self._regions,
                self._node,
                region_code=request.region_code,
                as_of=as_of,
                rules=rules,
            )
        return stats_pb2.ListHotspotsResponse(
            hotspots=[
                stats_pb2.Hotspot(
                    region_code=h.region_code,
                    category=h.category,
                    count=h.count,
                    baseline=h.baseline,
                    score=h.score,
                    keywords=h.keywords,
                    example_case_ids=h.example_case_ids,
                    topics=[
                        stats_pb2.HotspotTopic(
                            label=t.label,
                            top_terms=t.top_terms,
                            case_ids=t.case_ids,
                            count=t.count,
                            previous_count=t.previous_count,
                            growth=t.growth,
                            unit_ids=t.units,
                        )
                        for t in h.topics
                    ],
                )
                for h in found
            ]
        )

    def GetBulletin(self, request: stats_pb2.GetBulletinRequest, context: Any) -> stats_pb2.GetBulletinResponse:
        from services.stats.bulletin import write_bulletin

        if not request.month:
            raise InvalidArgument("month", "give the statistical month YYYY-MM")
        parse_month(request.month)
        with tempfile.TemporaryDirectory(prefix="lianxin-bulletin-") as tmp, self._factory() as session:
            written = write_bulletin(
                SqlWarehouse(session),
                self._regions,
                self._node,
                region_code=request.region_code or self._node,
                month=request.month,
                out_dir=Path(tmp),
                config=self._config,
                as_of=self._clock(),
                rules=self._rules,
            )
            markdown = written.markdown.read_text("utf-8")
            files = [
                stats_pb2.BulletinFile(
                    name=path.name, content_type=_CONTENT_TYPES.get(path.suffix, ""), content=path.read_bytes()
                )
                for path in written.files
            ]
        return stats_pb2.GetBulletinResponse(markdown=markdown, files=files)
