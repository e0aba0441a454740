"""StatsService gRPC adapter."""

from __future__ import annotations

from typing import Any

from lianxin.stats.v1 import stats_service_pb2 as stats_pb2
from lianxin.stats.v1 import stats_service_pb2_grpc as stats_grpc
from sqlalchemy.orm import Session, sessionmaker

from services.common.errors import InvalidArgument
from services.common.regions import RegionTree
from services.common.timeutil import from_timestamp, to_timestamp
from services.stats import handlers
from services.stats.store import SqlWarehouse


class StatsServicer(stats_grpc.StatsServiceServicer):
    def __init__(self, *, session_factory: sessionmaker[Session], regions: RegionTree, node: str) -> None:
        self._factory = session_factory
        self._regions = regions
        self._node = node

    def GetMetrics(self, request: stats_pb2.GetMetricsRequest, context: Any) -> stats_pb2.GetMetricsResponse:
        region = request.region_code or self._node
        if region not in self._regions:
            raise InvalidArgument("region_code", f"unknown region code {region}")
        if not self._regions.contains(self._node, region):
            raise InvalidArgument("region_code", f"{region} is outside this node's subtree ({self._node})")
        names = list(request.metrics) or ["received"]
        unknown = [n for n in names if n not in handlers.DEFINITIONS]
        if unknown:
            raise InvalidArgument("metrics", f"unknown metric {unknown[0]!r}; known: {sorted(handlers.DEFINITIONS)}")
        start = from_timestamp(request.period_start)
        end = from_timestamp(request.period_end)
        with self._factory() as session:
            value = handlers.received(
                SqlWarehouse(session),
                self._regions,
                region_code=region,
                start=start,
                end=end,
                with_ids=request.include_case_ids,
            )
        metric = stats_pb2.Metric(
            name=value.name,
            definition=value.definition,
            value=value.value,
            numerator=value.numerator,
            denominator=value.denominator,
            case_ids=value.case_ids,
        )
        response = stats_pb2.GetMetricsResponse(metrics=[metric])
        if start:
            response.period_start.CopyFrom(to_timestamp(start))
        if end:
            response.period_end.CopyFrom(to_timestamp(end))
        return response
