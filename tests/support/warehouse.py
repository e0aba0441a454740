"""Stats' warehouse on a real database, fed a fixed set of events whose figures were computed by hand."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import grpc
from lianxin.events.v1 import events_pb2
from lianxin.stats.v1 import stats_service_pb2 as stats_pb2
from lianxin.stats.v1 import stats_service_pb2_grpc as stats_grpc
from sqlalchemy import Engine

from bench.stats import synthetic as syn
from services.common.calendar import ChineseWorkingCalendar, end_of_day
from services.common.grpcserver import GrpcServer
from services.common.regions import RegionTree
from services.common.service import NodeHooks, ServiceParts
from services.common.settings import Settings
from services.common.timeutil import CHINA
from services.node import build_service
from services.stats.domain import StatsConfig

A, B, C = "511102-20261012-000001", "511102-20261012-000002", "511102-20261013-000003"
D, E = "511111-20261014-000004", "511111-20261014-000005"
F, G = "511102-20260930-000006", "511102-20261025-000007"
U1, U2 = "511102:城乡建设", "511111:城乡建设"


def cn(month: int, day: int, hour: int = 10) -> datetime:
    return datetime(2026, month, day, hour, tzinfo=CHINA)


def due(month: int, day: int) -> datetime:
    return end_of_day(datetime(2026, month, day).date())


def fixture_events() -> list[events_pb2.EventEnvelope]:
    dl = {"accept_notice": due(10, 15), "settle": due(10, 30)}
    return [
        # A: accepted on time, replied after 4 working days, closed on time, rated satisfied.
        syn.registered(
            A, region="511102", at=cn(10, 12, 9), channel="web", title="小区施工噪音", body="夜间施工噪音扰民"
        ),
        syn.work_order_created(A, version=2, at=cn(10, 12, 11), unit_id=U1, deadlines=dl),
        syn.work_order_changed(A, version=3, at=cn(10, 13), action="accept", to_state="ACCEPTED"),
        syn.work_order_changed(A, version=4, at=cn(10, 16), action="reply", to_state="REPLIED"),
        syn.work_order_changed(A, version=5, at=cn(10, 20), action="close", to_state="CLOSED"),
        syn.evaluated(A, version=6, at=cn(10, 21), rating="satisfied", unit_id=U1),
        # B: a repeat of A; accepted late, replied late (16 working days), closed late, never rated,
        # supervised once.
        syn.registered(B, region="511102", at=cn(10, 12, 9), channel="hotline", repeat_of=A),
        syn.work_order_created(B, version=2, at=cn(10, 12, 11), unit_id=U1, deadlines=dl),
        syn.work_order_changed(B, version=3, at=cn(10, 16), action="accept", to_state="ACCEPTED"),
        syn.supervision(B, version=4, at=cn(11, 1), level="supervise"),
        syn.work_order_changed(B, version=5, at=cn(11, 3), action="reply", to_state="REPLIED"),
        syn.work_order_changed(B, version=6, at=cn(11, 4), action="close", to_state="CLOSED"),
        # C: replied after 5 working days, rated unsatisfied, not closed.
        syn.registered(C, region="511102", at=cn(10, 13, 9), channel="app", category="环境保护"),
        syn.work_order_created(
            C,
            version=2,
            at=cn(10, 13, 11),
            unit_id="511102:环境保护",
            deadlines={"accept_notice": due(10, 16), "settle": due(10, 30)},
        ),
        syn.work_order_changed(C, version=3, at=cn(10, 14), action="accept", to_state="ACCEPTED"),
        syn.work_order_changed(C, version=4, at=cn(10, 20), action="reply", to_state="REPLIED"),
        syn.evaluated(C, version=5, at=cn(10, 22), rating="unsatisfied"),
        # D: accepted on time, never replied (overdue after 13 Nov), only chased (催办 is not 督办).
        syn.registered(D, region="511111", at=cn(10, 14, 9), channel="letter"),
        syn.work_order_created(
            D, version=2, at=cn(10, 14, 11), unit_id=U2, deadlines={"accept_notice": due(10, 19), "settle": due(11, 13)}
        ),
        syn.work_order_changed(D, version=3, at=cn(10, 15), action="accept", to_state="ACCEPTED"),
        syn.supervision(D, version=4, at=cn(11, 16), level="chase"),
        # E: withdrawn before any decision: owes nothing.
        syn.registered(E, region="511111", at=cn(10, 14, 9), channel="wechat", category="交通运输"),
        syn.work_order_created(
            E, version=2, at=cn(10, 14, 11), unit_id=U2, deadlines={"accept_notice": due(10, 19), "settle": due(11, 13)}
        ),
        syn.withdrawn(E, version=3, at=cn(10, 15)),
        # F (30 Sep) and G (25 Oct): registered only; they move between months with start day 21.
        syn.registered(F, region="511102", at=cn(9, 30), channel="hotline"),
        syn.registered(G, region="511102", at=cn(10, 25), channel="web", category="教育文体"),
    ]


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


class Warehouse:
    """The stats service of node 乐山市 (511100) with its gRPC server, on the given database."""

    def __init__(self, database_url: str, tmp_path: Path, *, start_day: int = 1) -> None:
        self.clock = Clock(cn(12, 31))
        url = None if database_url.startswith("sqlite") else database_url
        self.settings = Settings(node="511100", data_dir=tmp_path, database_url=url, metrics_port=None)
        self.parts: ServiceParts
        self.engine: Engine
        self.parts, self.engine = build_service(
            self.settings,
            "stats",
            regions=RegionTree.load(),
            clock=self.clock,
            hooks=NodeHooks(stats_config=StatsConfig(month_start_day=start_day), calendar=ChineseWorkingCalendar()),
        )
        self.server = GrpcServer(self.parts.servicers, settings=self.settings)
        self.server.start()
        self.channel = grpc.insecure_channel(self.server.address)
        self.stub = stats_grpc.StatsServiceStub(self.channel)

    def deliver(self, env: events_pb2.EventEnvelope, source: str | None = None) -> None:
        event = syn.bus_event(env, source=source)
        handlers = [
            s.handle for s in self.parts.subscriptions if (s.source, s.event_type) == (event.source, event.event_type)
        ]
        assert handlers, f"stats does not subscribe to {event.source}/{event.event_type}"
        for handle in handlers:
            handle(event)

    def metrics(self, **kwargs: object) -> dict[str, stats_pb2.Metric]:
        reply = self.stub.GetMetrics(stats_pb2.GetMetricsRequest(**kwargs), timeout=10)  # type: ignore[arg-type]
        return {m.name: m for m in reply.metrics}

    def close(self) -> None:
        self.channel.close()
        self.server.stop(0.5)
        self.engine.dispose()
