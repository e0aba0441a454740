"""The per-request figures at 0 stored cases and at N (``lianxin bench --stored N``), side by side.

For each size a lone county node (``lianxin node``, all five services, as ``lianxin up``) gets a
database of its own, preloaded with N cases of skewed history (``bench.preload``); both nodes run
at once and one client calls, one call at a time and alternating between the two nodes (so both
sizes see the same moments of a shared machine), SubmitCase, TrackCase, GetCase and a unit's inbox
(ListWorkOrders of the open work orders, a page of 20). The 0-stored figures are the same-run
baseline: a request
whose cost grows with the stored data shows a ratio above 1 (issue 20's goal: at most 1.5 at
1,000,000). The per-submitter rate limit is on, as in production, so its count runs too.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
from lianxin.common.v1 import common_pb2
from lianxin.exchange.v1 import exchange_service_pb2 as exchange_pb2
from lianxin.exchange.v1 import exchange_service_pb2_grpc as exchange_grpc
from lianxin.intake.v1 import intake_service_pb2 as pb
from lianxin.intake.v1 import intake_service_pb2_grpc as intake_grpc
from lianxin.routing.v1 import routing_service_pb2 as routing_pb2
from lianxin.routing.v1 import routing_service_pb2_grpc as routing_grpc
from lianxin.stats.v1 import stats_service_pb2 as stats_pb2
from lianxin.stats.v1 import stats_service_pb2_grpc as stats_grpc
from lianxin.video.v1 import video_service_pb2 as video_pb2
from lianxin.video.v1 import video_service_pb2_grpc as video_grpc

from bench.harness.measure import Sample
from bench.harness.procs import Backend, NodeProcess, stop_all
from bench.harness.progress import Progress
from bench.harness.report import Row, ScenarioResult
from bench.harness.workload import Submissions
from bench.preload import preload
from bench.preload_history import CITY, History, preload_history
from bench.stats import synthetic
from services.common.settings import Settings
from services.common.timeutil import to_timestamp
from services.stats.domain import StatsConfig, shift_month, stat_month_of

COUNTY = "511102"  # as the other scenarios (scenarios.COUNTY)
RPCS = ("SubmitCase", "TrackCase", "GetCase", "ListWorkOrders")
# At the city node (bench.preload_history): a supervisor's drill-down, a leader's visits and a
# booking, the child's link. Bookings fill the leader's December slots: at most BOOKINGS a node.
HISTORY_RPCS = ("DrillDown", "DrillDownUnit", "ListVisits", "BookVisit", "PushEvents", "PullDown", "ListReplicas")
ALL_RPCS = RPCS + HISTORY_RPCS
BOOKINGS = 40
# A unit's inbox: its work orders still being handled.
INBOX_STATES = (
    common_pb2.CASE_STATE_ASSIGNED,
    common_pb2.CASE_STATE_ACCEPTED,
    common_pb2.CASE_STATE_IN_PROGRESS,
    common_pb2.CASE_STATE_EXTENDED,
    common_pb2.CASE_STATE_OBJECTED,
    common_pb2.CASE_STATE_REOPENED,
)


@dataclass
class Figures:
    """One size's samples, by RPC."""

    stored: int
    samples: dict[str, Sample] = field(default_factory=dict)


class _Target:
    """One node under measurement: its stubs and the cases submitted to it."""

    def __init__(self, channel: grpc.Channel, stored: int) -> None:
        self.stored = stored
        self.intake = intake_grpc.IntakeServiceStub(channel)
        self.routing = routing_grpc.RoutingServiceStub(channel)
        self.submissions = Submissions(COUNTY)
        self.made: list[tuple[str, str, str]] = []  # (case id, tracking code, phone's last 4)
        self.inbox: routing_pb2.ListWorkOrdersRequest | None = None

    def submit(self, n: int) -> None:
        request = self.submissions.request(0, n)
        reply = self.intake.SubmitCase(request, timeout=30)
        if n >= 0:  # not a warm-up call
            self.made.append((reply.case.case_id, reply.tracking_code, request.complainant.phone[-4:]))

    def track(self, n: int) -> None:
        _, code, last4 = self.made[n % len(self.made)]
        self.intake.TrackCase(pb.TrackCaseRequest(tracking_code=code, phone_last4=last4), timeout=30)

    def get(self, n: int) -> None:
        self.intake.GetCase(pb.GetCaseRequest(case_id=self.made[n % len(self.made)][0]), timeout=30)

    def list_inbox(self, n: int) -> None:
        assert self.inbox is not None
        self.routing.ListWorkOrders(self.inbox, timeout=30)

    def find_inbox(self, timeout: float = 120.0) -> None:
        """The unit of the last submitted case, once routing has taken it off the bus."""
        ask = routing_pb2.ListWorkOrdersRequest(case_id=self.made[-1][0])
        deadline = time.monotonic() + timeout
        routed = self.routing.ListWorkOrders(ask, timeout=30).work_orders
        while not routed and time.monotonic() < deadline:
            time.sleep(0.2)
            routed = self.routing.ListWorkOrders(ask, timeout=30).work_orders
        if routed:
            self.inbox = routing_pb2.ListWorkOrdersRequest(
                unit_id=routed[0].unit_id, states=INBOX_STATES, page=common_pb2.PageRequest(page_size=20)
            )


class _City:
    """The city node under measurement (bench.preload_history): its stubs and its history."""

    def __init__(self, channel: grpc.Channel, stored: int, history: History) -> None:
        self.stored = stored
        self.history = history
        self.stats = stats_grpc.StatsServiceStub(channel)
        self.video = video_grpc.VideoServiceStub(channel)
        self.exchange = exchange_grpc.ExchangeServiceStub(channel)
        self.month = shift_month(stat_month_of(datetime.now(UTC), StatsConfig()), -1)
        self.pushed = history.child_up
        self.booked = 0

    def publish_schedule(self) -> None:
        patterns = [video_pb2.WeeklyPattern(weekday=d, start_time="09:00", end_time="12:00") for d in range(1, 6)]
        schedule = video_pb2.Schedule(
            leader_id=self.history.leader,
            node=CITY,
            weekly_patterns=patterns,
            slot_minutes=30,
            buffer_minutes=0,
            max_per_session=6,
            room_ids=[self.history.room],
        )
        self.video.PublishSchedule(video_pb2.PublishScheduleRequest(actor="bench", schedule=schedule), timeout=30)

    def _metrics(self, region: str, unit: str) -> None:
        figures = ["received", "reply_rate", "satisfaction_rate"]
        ask = stats_pb2.GetMetricsRequest(
            region_code=region, unit_id=unit, month=self.month, metrics=figures, include_case_ids=True
        )
        self.stats.GetMetrics(ask, timeout=30)

    def drill(self, n: int) -> None:
        self._metrics(self.history.child, "")

    def drill_unit(self, n: int) -> None:
        self._metrics(CITY, self.history.units[0] if self.history.units else "")

    def visits(self, n: int) -> None:
        ask = video_pb2.ListVisitsRequest(
            leader_id=self.history.leader,
            not_before=to_timestamp(datetime.now(UTC) - timedelta(days=30)),
            page=common_pb2.PageRequest(page_size=20),
        )
        self.video.ListVisits(ask, timeout=30)

    def book(self, n: int) -> None:
        self.booked += 1
        case_id = f"{self.history.child}-20261206-{800_000 + self.booked:06d}"
        self.video.BookVisit(
            video_pb2.BookVisitRequest(case_id=case_id, actor="bench", leader_id=self.history.leader), timeout=30
        )

    def push(self, n: int) -> None:
        self.pushed += 1
        env = synthetic.registered(
            f"{self.history.child}-20261206-{900_000 + self.pushed:06d}",
            region=self.history.child,
            at=datetime.now(UTC),
        )
        item = exchange_pb2.ExchangeItem(position=self.pushed, envelope=env.SerializeToString(), case_sequence=1)
        self.exchange.PushEvents(
            exchange_pb2.PushEventsRequest(child_node=self.history.child, items=[item]), timeout=30
        )

    def pull(self, n: int) -> None:
        after = max(0, self.history.down_head - 3)
        self.exchange.PullDown(
            exchange_pb2.PullDownRequest(child_node=self.history.child, after_position=after, max_items=50), timeout=30
        )

    def replicas(self, n: int) -> None:
        cases = self.history.replica_cases
        ask = exchange_pb2.ListReplicasRequest(case_id=cases[n % len(cases)], max_items=10)
        self.exchange.ListReplicas(ask, timeout=30)


def measure_city(addresses: Sequence[tuple[int, str, History]], calls: int, progress: Progress) -> list[Figures]:
    """``calls`` of each history RPC on every (stored, address, history) city node, in lockstep."""
    channels = [grpc.insecure_channel(address) for _, address, _ in addresses]
    try:
        targets = [_City(c, stored, h) for (stored, _, h), c in zip(addresses, channels, strict=True)]
        for target in targets:
            target.publish_schedule()
        figures = [Figures(target.stored) for target in targets]
        phases: list[tuple[str, Callable[[_City, int], None], int]] = [
            ("DrillDown", _City.drill, calls),
            ("DrillDownUnit", _City.drill_unit, calls),
            ("ListVisits", _City.visits, calls),
            ("BookVisit", _City.book, min(calls, BOOKINGS)),
            ("PushEvents", _City.push, calls),
            ("PullDown", _City.pull, calls),
            ("ListReplicas", _City.replicas, calls),
        ]
        for rpc, call, count in phases:
            sizes = " and ".join(f"{t.stored:,}" for t in targets)
            with progress.phase(f"{rpc}, {sizes} stored", total=count) as ph:
                for figure, sample in zip(figures, _lockstep(targets, call, count, ph), strict=True):
                    figure.samples[rpc] = sample
        return figures
    finally:
        for channel in channels:
            channel.close()


def _lockstep(
    targets: Sequence[Any], call: Callable[[Any, int], None], count: int, phase: Any, warmup: int = 3
) -> list[Sample]:
    """``count`` calls on each target, one at a time, alternating between them (and which goes
    first), so both sizes see the same moment of a shared machine."""
    for n in range(warmup):
        for target in targets:
            call(target, -1 - n)
    samples = [Sample(offered=count) for _ in targets]
    for n in range(count):
        order = range(len(targets)) if n % 2 == 0 else reversed(range(len(targets)))
        for index in order:
            began = time.perf_counter()
            call(targets[index], n)
            took = time.perf_counter() - began
            samples[index].latencies.append(took)
            samples[index].seconds += took  # the rate of one caller: calls per second spent calling
        phase.advance()
    return samples


def measure(addresses: Sequence[tuple[int, str]], calls: int, progress: Progress) -> list[Figures]:
    """``calls`` of each RPC on every (stored, address) node, in lockstep."""
    channels = [grpc.insecure_channel(address) for _, address in addresses]
    try:
        targets = [_Target(channel, stored) for (stored, _), channel in zip(addresses, channels, strict=True)]
        figures = [Figures(target.stored) for target in targets]
        phases: list[tuple[str, Callable[[_Target, int], None]]] = [
            ("SubmitCase", _Target.submit),
            ("TrackCase", _Target.track),
            ("GetCase", _Target.get),
            ("ListWorkOrders", _Target.list_inbox),
        ]
        for rpc, call in phases:
            if rpc == "TrackCase":
                for target in targets:
                    target.find_inbox()
            if rpc == "ListWorkOrders" and any(t.inbox is None for t in targets):
                continue
            with progress.phase(f"{rpc}, {' and '.join(f'{t.stored:,}' for t in targets)} stored", total=calls) as ph:
                for figure, sample in zip(figures, _lockstep(targets, call, calls, ph), strict=True):
                    figure.samples[rpc] = sample
        return figures
    finally:
        for channel in channels:
            channel.close()


def _ready(node: NodeProcess, progress: Progress, attempts: int = 5) -> None:
    """Wait for ``node``, starting it again when it gave up: on a shared PostgreSQL a start can find
    every connection slot taken for a moment, and the preload before it took many minutes."""
    for attempt in range(1, attempts + 1):
        try:
            node.wait_ready(timeout=600)
            return
        except RuntimeError as error:
            if attempt == attempts:
                raise
            progress.note(f"{error}; starting it again ({attempt}/{attempts - 1})")
            node.stop()
            time.sleep(10)
            node.start()


def stored_scenario(backend: Backend, *, stored: int, calls: int, workers: int, progress: Progress) -> ScenarioResult:
    """Rows: each RPC's p50 and rate at ``stored`` cases beside the same at 0, measured in lockstep."""
    preload_s = 0.0
    nodes = []
    for size in (0, stored):
        group = f"stored{size}"
        backend.prepare(group, COUNTY)
        if size:
            settings = Settings(
                node=COUNTY, data_dir=backend.data_dir(group), database_url=backend.database_template(group)
            )
            with progress.phase(f"preload {size:,} cases ({backend.label})", total=size) as phase:
                preload_s = preload(settings, size, progress=lambda n, _total: phase.set(n)).seconds
        # The per-submitter rate limit on, as in production: its count is part of every submit.
        nodes.append(NodeProcess(COUNTY, backend, group, workers=workers, env={"LIANXIN_INTAKE_RATE_LIMIT": "5/3600"}))
    progress.note(f"starting node {COUNTY} twice, with 0 and {stored:,} stored cases ({backend.label}) ...")
    try:
        for node in nodes:
            node.start()
        for node in nodes:
            _ready(node, progress)
        empty, full = measure([(0, nodes[0].address), (stored, nodes[1].address)], calls, progress)
    finally:
        stop_all(nodes)
    history_figures, history_s = _history(backend, stored=stored, calls=calls, workers=workers, progress=progress)
    for figure, more in zip((empty, full), history_figures, strict=True):
        figure.samples.update(more.samples)
    result = ScenarioResult("stored")
    name = f"{stored:,} stored cases, one call at a time"
    for rpc in ALL_RPCS:
        at_n, at_0 = full.samples.get(rpc), empty.samples.get(rpc)
        if at_n is None or at_0 is None:
            result.notes.append(f"{rpc}: not measured (no work order was routed)")
            continue
        result.rows.append(Row(name, f"{rpc} p50", at_n.ms(0.5), "ms", at_0.ms(0.5), f"{rpc} p50, 0 stored"))
        result.rows.append(Row(name, f"{rpc} rate", at_n.rate, "/s", at_0.rate, f"{rpc} rate, 0 stored"))
    result.details = {
        "stored": stored,
        "calls": calls,
        "preload_s": round(preload_s, 1),
        "history_preload_s": round(history_s, 1),
        "at_0": {rpc: s.summary() for rpc, s in empty.samples.items()},
        f"at_{stored}": {rpc: s.summary() for rpc, s in full.samples.items()},
    }
    return result


def _history(
    backend: Backend, *, stored: int, calls: int, workers: int, progress: Progress
) -> tuple[list[Figures], float]:
    """The city node twice (in this process, exchange, video and stats): with ``stored`` cases of
    four years' history, and with the same months' rate for two months only (the same month to
    drill into, the same recent visits, a short log): what grows with the years shows as a ratio
    above 1."""
    from services.node import Node

    recent = max(1, stored * 2 // 48)
    nodes, histories, seconds = [], [], 0.0
    for size, months in ((recent, 2), (stored, 48)):
        group = f"history{size}"
        backend.prepare(group, CITY)
        template = backend.database_template(group)
        settings = Settings(
            node=CITY,
            data_dir=backend.data_dir(group),
            database_url=template,
            metrics_port=None,
            grpc_workers=workers,
        )
        with progress.phase(f"history of {size:,} cases over {months} months ({backend.label})", total=1) as phase:
            history = preload_history(settings, size, months=months)
            phase.set(1)
        seconds = max(seconds, history.seconds)
        histories.append(history)
        nodes.append(Node(settings, services=("exchange", "video", "stats")))
    progress.note(f"starting node {CITY} twice, with {recent:,} and {stored:,} cases of history ({backend.label}) ...")
    try:
        for node in nodes:
            node.start()
        addresses = [(recent, nodes[0].address, histories[0]), (stored, nodes[1].address, histories[1])]
        return measure_city(addresses, calls, progress), seconds
    finally:
        for node in nodes:
            node.stop(grace=0.5)


def side_by_side(result: ScenarioResult) -> str:
    """The table docs/performance.md shows: p50 and rate at 0 and at N, and their ratio."""
    stored = result.details.get("stored", 0)
    lines = [
        f"{'RPC':<16} {'p50 ms @0':>10} {f'p50 ms @{stored:,}':>16} {'× p50':>7} {'/s @0':>8} {f'/s @{stored:,}':>13}"
    ]
    at_0, at_n = result.details.get("at_0", {}), result.details.get(f"at_{stored}", {})
    for rpc in ALL_RPCS:
        if rpc in at_0 and rpc in at_n:
            a, b = at_0[rpc], at_n[rpc]
            ratio = b["p50_ms"] / a["p50_ms"] if a["p50_ms"] else 0.0
            p50s = f"{a['p50_ms']:>10.2f} {b['p50_ms']:>16.2f} {ratio:>7.2f}"
            lines.append(f"{rpc:<16} {p50s} {a['rate']:>8.0f} {b['rate']:>13.0f}")
    return "\n".join(lines)
