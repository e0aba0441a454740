"""The four scenarios of ``lianxin bench`` as plain functions: each returns its rows (figure beside a
baseline measured in the same run) and the raw counts behind them.

They talk to the nodes the way operators and other nodes do: over gRPC (SubmitCase, ListReplicas,
LinkStatus, GetMetrics). Only the baselines and the warehouse load touch a database directly.
"""

from __future__ import annotations

import itertools
import math
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import grpc
import sqlalchemy as sa
from lianxin.exchange.v1 import exchange_service_pb2 as exchange_pb2
from lianxin.exchange.v1 import exchange_service_pb2_grpc as exchange_grpc
from lianxin.intake.v1 import intake_service_pb2_grpc as intake_grpc
from lianxin.stats.v1 import stats_service_pb2 as stats_pb2
from lianxin.stats.v1 import stats_service_pb2_grpc as stats_grpc
from sqlalchemy.sql.elements import quoted_name

from bench.baselines import raw_insert_loop
from bench.cpu import process_cpu_seconds
from bench.faults.proxy import TcpProxy
from bench.harness.echo import METHOD as ECHO_METHOD
from bench.harness.measure import Done, Sample, closed_loop, open_loop, sequential
from bench.harness.procs import Backend, NodeProcess, stop_all
from bench.harness.progress import Progress
from bench.harness.report import Row, ScenarioResult
from bench.harness.workload import Submissions
from bench.stats.generate import bulk_insert, counties_of, generate
from services.common.db import make_engine
from services.common.migrations import upgrade
from services.common.regions import RegionTree
from services.common.settings import Settings
from services.common.timeutil import CHINA
from services.exchange.link import Backoff
from services.exchange.models import link_cursor, replica
from services.federation import BUSINESS_SERVICES
from services.node import Node
from services.stats.domain import StatsConfig, month_name, shift_month

COUNTY, CITY, PROVINCE = "511102", "511100", "510000"
HOPS = 2  # county → city → province
INTAKE_SERVICE = "lianxin.intake.v1.IntakeService"
POLL_S = 0.02  # how often visibility and link lag are polled: the resolution of those figures
CATCHUP_POLL_S = 0.25  # a catch-up's lag once its first batch is acknowledged (its end is read from the parent)
LINK_BATCH = 500  # the exchange link's batch size (LIANXIN_EXCHANGE_BATCH default)
# Up-log events per submitted case today (registered, work order created, accepted, assigned); only
# the first guess of how many cases to submit, corrected after each round.
EVENTS_PER_CASE_GUESS = 4.0


def _pcts(
    rows: list[Row], scenario: str, label: str, sample: Sample, base: Sample, base_is: str, scale: float = 1.0
) -> None:
    for name, q in (("p50", 0.50), ("p95", 0.95), ("p99", 0.99)):
        rows.append(Row(scenario, f"{label}{name}", sample.ms(q), "ms", base.ms(q) * scale, base_is))


def _error_kind(error: BaseException) -> str:
    return error.code().name if isinstance(error, grpc.Call) else type(error).__name__


def _async(start: Callable[[], grpc.Future]) -> Callable[[Done], None]:
    """An open-loop ``send`` from a function starting one gRPC future call."""

    def send(done: Done) -> None:
        future = start()

        def finished(f: grpc.Future) -> None:
            error = f.exception()
            done(None if error is None else _error_kind(error))

        future.add_done_callback(finished)

    return send


def _wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)  # polling a condition with a deadline


# --------------------------------------------------------------------------- intake


@dataclass(frozen=True)
class IntakeOptions:
    rate: float = 50.0
    duration: float = 10.0
    concurrency: int = 8
    workers: int = 16
    host: str = "node"  # "node": lianxin node (five services, as lianxin up); "serve": lianxin serve --service intake
    replicas: int = 1  # "serve" only: api processes on one database, as deploy/k8s runs them

    @property
    def host_command(self) -> tuple[str, ...]:
        return ("node",) if self.host == "node" else ("serve", "--service", "intake")

    def describe(self) -> str:
        text = f"lianxin {' '.join(self.host_command)}"
        return text if self.replicas == 1 else f"{text} ×{self.replicas}"


def raw_insert(url: str, *, clients: int, duration: float, progress: Progress, label: str) -> Sample:
    """Single-row INSERT + COMMIT loops through SQLAlchemy with the services' own engine settings."""
    engine = make_engine(url, service="bench", pool_size=max(5, clients), max_overflow=clients)
    insert, drop = raw_insert_loop(engine)
    try:
        with progress.phase(label, seconds=duration, unit="rows") as phase:
            return closed_loop(insert, clients=clients, duration=duration, phase=phase)
    finally:
        drop()
        engine.dispose()


def intake(backend: Backend, echo_address: str, options: IntakeOptions, progress: Progress) -> ScenarioResult:
    """SubmitCase at a target rate (open loop) and at saturation (closed loop) on a lone county node."""
    command = options.host_command
    nodes = [
        NodeProcess(
            COUNTY,
            backend,
            "solo",
            workers=options.workers,
            command=command,
            services=BUSINESS_SERVICES if options.host == "node" else (INTAKE_SERVICE,),
            replica=replica,
        )
        for replica in range(options.replicas)
    ]
    progress.note(f"starting node {COUNTY} ({options.describe()}, {backend.label}) ...")
    try:
        # One at a time: the first migrates the database, the others find it done.
        for node in nodes:
            node.start()
            node.wait_ready()
        return _intake(backend, nodes, echo_address, options, progress)
    finally:
        stop_all(nodes)


SUBMIT_METHOD = "lianxin.intake.v1.IntakeService/SubmitCase"


def client_target(nodes: Sequence[NodeProcess]) -> tuple[str, list[tuple[str, Any]]]:
    """(target, channel options) reaching every api replica, calls spread round robin (one replica: plain)."""
    if len(nodes) == 1:
        return nodes[0].address, []
    return "ipv4:" + ",".join(node.address for node in nodes), [("grpc.lb_policy_name", "round_robin")]


def _intake(
    backend: Backend, nodes: Sequence[NodeProcess], echo_address: str, o: IntakeOptions, progress: Progress
) -> ScenarioResult:
    result = ScenarioResult("intake")
    submissions = Submissions(COUNTY)
    numbers = itertools.count()
    target, channel_options = client_target(nodes)
    with (
        grpc.insecure_channel(target, options=channel_options) as node_channel,
        grpc.insecure_channel(echo_address) as echo_channel,
    ):
        stub = intake_grpc.IntakeServiceStub(node_channel)
        echo = echo_channel.unary_unary(ECHO_METHOD)
        payload = submissions.request(0, 0).SerializeToString()  # the echo carries a submission's bytes
        for i in range(5 * len(nodes)):  # first connections, lazily built caches (of every replica)
            stub.SubmitCase(submissions.request(-1, i), timeout=30)
            echo(payload, timeout=10)
        total = max(1, int(o.rate * o.duration))

        c = o.concurrency
        # The baselines first, while the node is idle: after the SubmitCase phases its in-process
        # consumers (routing, stats, exchange) still work off the events, and that CPU is not theirs.
        with progress.phase(f"grpcio echo at {o.rate:g}/s", total=total) as phase:
            echo_open = open_loop(
                _async(lambda: echo.future(payload, timeout=30)), rate=o.rate, duration=o.duration, phase=phase
            )
        with progress.phase(f"grpcio echo, {c} clients", seconds=o.duration, unit="calls") as phase:
            echo_sat = closed_loop(lambda w, n: echo(payload, timeout=30), clients=c, duration=o.duration, phase=phase)
        url = backend.service_url("solo", COUNTY, "bench")
        raw_n = raw_insert(url, clients=c, duration=o.duration, progress=progress, label=f"raw INSERT+COMMIT ×{c}")
        raw_1 = raw_insert(url, clients=1, duration=o.duration, progress=progress, label="raw INSERT+COMMIT ×1")
        with progress.phase(f"SubmitCase at {o.rate:g}/s", total=total) as phase:
            submit_open = open_loop(
                _async(lambda: stub.SubmitCase.future(submissions.request(-2, next(numbers)), timeout=30)),
                rate=o.rate,
                duration=o.duration,
                phase=phase,
            )
        with progress.phase(f"SubmitCase, {c} clients", seconds=o.duration, unit="calls") as phase:
            submit_sat = closed_loop(
                lambda w, n: stub.SubmitCase(submissions.request(w, n), timeout=30),
                clients=c,
                duration=o.duration,
                phase=phase,
            )

    on = "" if o.replicas == 1 else f", {o.replicas} api processes"
    open_name = f"intake at {o.rate:g}/s (open loop{on})"
    rows = result.rows
    rows.append(Row(open_name, "achieved rate", submit_open.rate, "/s", echo_open.rate, "grpcio echo, same schedule"))
    _pcts(rows, open_name, "latency ", submit_open, echo_open, "grpcio echo, same schedule")
    sat_name = f"intake saturation ({c} clients{on})"
    rows.append(Row(sat_name, "rate", submit_sat.rate, "/s", echo_sat.rate, f"grpcio echo, {c} clients"))
    rows.append(Row(sat_name, "rate", submit_sat.rate, "/s", raw_n.rate, f"raw INSERT+COMMIT, {c} loops, same DB"))
    rows.append(Row(sat_name, "rate", submit_sat.rate, "/s", raw_1.rate, "raw INSERT+COMMIT, 1 loop, same DB"))
    _pcts(rows, sat_name, "latency ", submit_sat, echo_sat, f"grpcio echo, {c} clients")
    result.details = {
        "host": o.describe(),
        "api_replicas": o.replicas,
        "server_threads": o.workers,
        "submit_open_loop": submit_open.summary(),
        "echo_open_loop": echo_open.summary(),
        "submit_saturation": submit_sat.summary(),
        "echo_saturation": echo_sat.summary(),
        "raw_insert_clients": raw_n.summary(),
        "raw_insert_lone": raw_1.summary(),
    }
    if len(nodes) > 1:
        # Where the calls went: a replica that took none would make this a one-process figure.
        result.details["submit_calls_per_replica"] = [node.calls_handled(SUBMIT_METHOD) for node in nodes]
    for name, sample in (("SubmitCase at the target rate", submit_open), ("SubmitCase at saturation", submit_sat)):
        if sample.errors:
            result.notes.append(f"{name}: {sample.errors} failed calls {sample.error_kinds}")
    return result


# --------------------------------------------------------------------------- the chain


class Chain:
    """County 511102 → city 511100 → province 510000 as three ``lianxin node`` processes on loopback,
    like ``lianxin up``; the county reaches its parent through a TCP proxy the harness can cut."""

    def __init__(self, backend: Backend, *, workers: int = 16) -> None:
        self.province = NodeProcess(PROVINCE, backend, "chain", workers=workers)
        self.city = NodeProcess(CITY, backend, "chain", workers=workers, parent=self.province.address)
        self.proxy = TcpProxy(self.city.address)
        self.county = NodeProcess(COUNTY, backend, "chain", workers=workers)
        self.backend = backend

    def start(self, progress: Progress) -> Chain:
        self.proxy.start()
        self.county.parent = self.proxy.address
        progress.note(f"starting nodes {PROVINCE} ← {CITY} ← {COUNTY} ({self.backend.label}) ...")
        # All three at once (start-up is most of a quick run); a child that comes up before its parent
        # retries with backoff, and the propagation warm-up waits until a case has crossed both links.
        for node in (self.province, self.city, self.county):
            node.start()
        for node in (self.province, self.city, self.county):
            node.wait_ready()
        return self

    def stop(self) -> None:
        stop_all((self.county, self.city, self.province))
        self.proxy.close()


def _visible(stub: exchange_grpc.ExchangeServiceStub, case_id: str) -> bool:
    reply = stub.ListReplicas(exchange_pb2.ListReplicasRequest(case_id=case_id, max_items=0), timeout=10)
    return int(reply.count) > 0


def warm_up(chain: Chain, progress: Progress) -> None:
    """One case submitted at the county and seen at the province: both links connected and working."""
    with (
        grpc.insecure_channel(chain.county.address) as county_channel,
        grpc.insecure_channel(chain.province.address) as province_channel,
    ):
        county = intake_grpc.IntakeServiceStub(county_channel)
        province = exchange_grpc.ExchangeServiceStub(province_channel)
        with progress.phase("chain warm-up (links connect)"):
            first = county.SubmitCase(Submissions(COUNTY).request(-1, 0), timeout=30).case.case_id
            _wait_for(lambda: _visible(province, first), 120, f"case {first} to reach {PROVINCE}")


# --------------------------------------------------------------------------- idle


# Issue 21's goal for an idle node: cost follows work, not the number of nodes.
IDLE_GOAL_MS_PER_S = 2.0


@dataclass(frozen=True)
class IdleOptions:
    seconds: float = 30.0
    settle_s: float = 3.0  # after the warm-up case, its events finish travelling first


def idle(chain: Chain, o: IdleOptions, progress: Progress) -> ScenarioResult:
    """CPU each node process burns per second while nothing happens (links up, no requests)."""
    result = ScenarioResult("idle")
    nodes = [("county", chain.county), ("city", chain.city), ("province", chain.province)]
    with progress.phase("idle: settling", seconds=o.settle_s):
        time.sleep(o.settle_s)  # the warm-up case's events finish their way (not an ordering wait)
    pids = {label: node.pid for label, node in nodes}
    before = {label: process_cpu_seconds([pid]) for label, pid in pids.items()}
    with progress.phase(f"idle: CPU of {len(nodes)} nodes", seconds=o.seconds):
        started = time.perf_counter()
        time.sleep(o.seconds)  # measuring what an idle node costs over this window
        elapsed = time.perf_counter() - started
    figures: dict[str, float] = {}
    for label, node in nodes:
        after, start = process_cpu_seconds([pids[label]]), before[label]
        if after is None or start is None:
            raise RuntimeError(f"cannot read the CPU time of node {node.code} from /proc")
        figures[label] = (after - start) / elapsed * 1000.0
        result.rows.append(
            Row(
                f"idle CPU per node ({o.seconds:g} s, links up)",
                f"{label} {node.code}",
                figures[label],
                "ms/s",
                IDLE_GOAL_MS_PER_S,
                "goal (issue 21)",
            )
        )
    result.details = {
        "seconds": round(elapsed, 3),
        "cpu_ms_per_s": {f"{label} {node.code}": round(figures[label], 3) for label, node in nodes},
        "max_ms_per_s": round(max(figures.values()), 3),
        "goal_ms_per_s": IDLE_GOAL_MS_PER_S,
    }
    return result


@dataclass(frozen=True)
class PropagationOptions:
    cases: int = 60
    rate: float = 2.0
    echo_round_trips: int = 200


def propagation(chain: Chain, echo_address: str, o: PropagationOptions, progress: Progress) -> ScenarioResult:
    """Cases submitted at the county, timed from their scheduled send until the province holds them."""
    result = ScenarioResult("propagation")
    submissions = Submissions(COUNTY)
    with (
        grpc.insecure_channel(chain.county.address) as county_channel,
        grpc.insecure_channel(chain.province.address) as province_channel,
        grpc.insecure_channel(echo_address) as echo_channel,
    ):
        county = intake_grpc.IntakeServiceStub(county_channel)
        province = exchange_grpc.ExchangeServiceStub(province_channel)
        echo = echo_channel.unary_unary(ECHO_METHOD)
        payload = submissions.request(0, 0).SerializeToString()

        with progress.phase("propagation warm-up (links connect)"):
            first = county.SubmitCase(submissions.request(-1, 0), timeout=30).case.case_id
            _wait_for(lambda: _visible(province, first), 120, f"case {first} to reach {PROVINCE}")
        with progress.phase("grpcio echo round trips", total=o.echo_round_trips) as phase:
            rtt = sequential(lambda i: echo(payload, timeout=10), count=o.echo_round_trips, phase=phase)

        pending: dict[str, float] = {}
        sample = Sample(offered=o.cases)
        lock = threading.Lock()
        sent_all = threading.Event()
        errors: list[str] = []

        give_up = threading.Event()

        def watch() -> None:
            while not give_up.is_set() and not (sent_all.is_set() and not pending):
                with lock:
                    waiting = list(pending.items())
                for case_id, scheduled in waiting:
                    try:
                        seen = _visible(province, case_id)
                    except grpc.RpcError as error:
                        errors.append(_error_kind(error))
                        continue
                    if seen:
                        now = time.perf_counter()
                        with lock:
                            pending.pop(case_id, None)
                            sample.latencies.append(now - scheduled)
                        phase.advance()
                time.sleep(POLL_S)  # the poll interval bounds the resolution of the figure

        with progress.phase(f"propagation at {o.rate:g} cases/s", total=o.cases) as phase:
            watcher = threading.Thread(target=watch, name="bench-propagation-watch", daemon=True)
            watcher.start()
            start = time.perf_counter()
            for i in range(o.cases):
                scheduled = start + i / o.rate
                pause = scheduled - time.perf_counter()
                if pause > 0:
                    time.sleep(pause)  # pacing the offered load
                try:
                    case_id = county.SubmitCase(submissions.request(0, i), timeout=30).case.case_id
                except grpc.RpcError as error:
                    errors.append(_error_kind(error))
                    continue
                with lock:
                    pending[case_id] = scheduled
            sent_all.set()
            watcher.join(timeout=120)
            give_up.set()
            sample.seconds = time.perf_counter() - start
    missing = len(pending)
    sample.errors = missing + len(errors)
    name = f"propagation {COUNTY}→{CITY}→{PROVINCE}"
    _pcts(result.rows, name, "submit → at province ", sample, rtt, f"grpcio echo round trip × {HOPS} hops", HOPS)
    result.details = {
        "cases": o.cases,
        "rate": o.rate,
        "seen_at_province": sample.count,
        "never_seen_within_120s": missing,
        "poll_interval_s": POLL_S,
        "propagation": sample.summary(),
        "echo_round_trip": rtt.summary(),
        "errors": errors[:20],
    }
    if missing or errors:
        result.notes.append(f"{missing} cases not seen at {PROVINCE}; errors {errors[:5]}")
    return result


# --------------------------------------------------------------------------- catch-up


@dataclass(frozen=True)
class CatchupOptions:
    events: int = 10_000
    concurrency: int = 8
    settle_s: float = 1.0
    timeout_s: float = 900.0


def _up_lag(stub: exchange_grpc.ExchangeServiceStub) -> int:
    reply = stub.LinkStatus(exchange_pb2.LinkStatusRequest(peer_node=CITY), timeout=10)
    for link in reply.links:
        if link.peer_node == CITY and link.direction == exchange_pb2.LINK_DIRECTION_UP:
            return int(link.lag_events)
    raise RuntimeError(f"node {COUNTY} reports no link to {CITY}")


def bare_batched_insert(url: str, *, child: str, events: int) -> tuple[float, int]:
    """(rows/s, rows) of a bare batched INSERT of the parent's latest replicas from ``child`` into a copy
    of the replica table (same columns and indexes), batches of the link's size, one commit each."""
    engine = make_engine(url, service="exchange")
    metadata = sa.MetaData()
    copy = replica.to_metadata(metadata, name="bench_replica_copy")
    for index in copy.indexes:
        index.name = quoted_name(f"bench_copy_{index.name}", None)  # index names are per schema on PostgreSQL
    try:
        with engine.connect() as conn:
            rows = [
                dict(r._mapping)
                for r in conn.execute(
                    sa.select(replica)
                    .where(replica.c.child_node == child)
                    .order_by(replica.c.received_at.desc())
                    .limit(events)
                )
            ]
        metadata.drop_all(engine)
        metadata.create_all(engine)
        started = time.perf_counter()
        for i in range(0, len(rows), LINK_BATCH):
            with engine.begin() as conn:
                conn.execute(copy.insert(), rows[i : i + LINK_BATCH])
        elapsed = time.perf_counter() - started
        return (len(rows) / elapsed if elapsed > 0 else 0.0), len(rows)
    finally:
        metadata.drop_all(engine)
        engine.dispose()


def last_push_stored(url: str, *, child: str) -> float | None:
    """Unix time at which the parent last stored a push of ``child``'s (its ``child_up`` cursor's contact
    time, written in the same transaction as the push's events), or None without one."""
    engine = make_engine(url, service="exchange")
    try:
        with engine.connect() as conn:
            at = conn.execute(
                sa.select(link_cursor.c.last_contact).where(
                    link_cursor.c.peer == child, link_cursor.c.kind == "child_up"
                )
            ).scalar()
    finally:
        engine.dispose()
    if at is None:
        return None
    return float((at if at.tzinfo is not None else at.replace(tzinfo=UTC)).timestamp())


def _submit_cases(
    stub: intake_grpc.IntakeServiceStub, submissions: Submissions, first: int, count: int, clients: int
) -> None:
    """Submit ``count`` cases with ``clients`` threads; any failure aborts the scenario."""
    numbers = iter(range(first, first + count))
    lock = threading.Lock()
    failures: list[BaseException] = []

    def client() -> None:
        while not failures:
            with lock:
                n = next(numbers, None)
            if n is None:
                return
            try:
                stub.SubmitCase(submissions.request(0, n), timeout=30)
            except grpc.RpcError as error:
                failures.append(error)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise RuntimeError(f"SubmitCase failed while loading the county: {_error_kind(failures[0])}")


def _settle(read: Callable[[], int], quiet_s: float, phase: Any, timeout: float = 900.0) -> int:
    """Poll ``read`` until its value has not changed for ``quiet_s`` seconds; return that value."""
    last, since = read(), time.monotonic()
    deadline = since + timeout
    while time.monotonic() - since < quiet_s:
        if time.monotonic() > deadline:
            raise TimeoutError(f"still changing after {timeout:g} s")
        time.sleep(0.1)  # waiting for the backlog to stop growing
        value = read()
        phase.set(value)
        if value != last:
            last, since = value, time.monotonic()
    return last


def catchup(chain: Chain, o: CatchupOptions, progress: Progress) -> ScenarioResult:
    """Cut the county off, let it accumulate ``events`` up-log events, restore the link, and time the
    parent (the city) acknowledging them all."""
    result = ScenarioResult("catchup")
    submissions = Submissions(COUNTY)
    with grpc.insecure_channel(chain.county.address) as county_channel:
        county = intake_grpc.IntakeServiceStub(county_channel)
        link = exchange_grpc.ExchangeServiceStub(county_channel)
        _wait_for(lambda: _up_lag(link) == 0, 120, f"node {COUNTY} to have no backlog before the cut")

        chain.proxy.cut()
        cut_at = time.perf_counter()
        with progress.phase("link cut: county accumulates", total=o.events, unit="events") as phase:
            events, cases, per_case = 0, 0, EVENTS_PER_CASE_GUESS
            while events < o.events:
                batch = max(1, math.ceil((o.events - events) / per_case))
                _submit_cases(county, submissions, cases, batch, o.concurrency)
                cases += batch
                settled = _settle(lambda: _up_lag(link), o.settle_s, phase)
                # A relay run reaches a consumer in one batch, so the up-log grows in steps: the county
                # is done when its outboxes are empty as well.
                while chain.county.outbox_backlog():
                    settled = _settle(lambda: _up_lag(link), o.settle_s, phase)
                per_case = max(0.5, settled / cases)
                if settled == events:
                    raise RuntimeError(f"node {COUNTY} appended no up-log events for {batch} new cases")
                events = settled
        accumulate_seconds = time.perf_counter() - cut_at

        with progress.phase("link back: catch-up", total=events, unit="events") as phase:
            restored, restored_wall = time.perf_counter(), time.time()
            chain.proxy.restore()
            before = restored  # the last poll at which the parent had acknowledged none of them
            first: float | None = None
            while True:
                lag = _up_lag(link)
                now = time.perf_counter()
                if lag >= events:
                    before = now
                elif first is None:
                    first = now
                phase.set(events - min(lag, events))
                if lag == 0:
                    polled_done = now
                    break
                if now - restored > o.timeout_s:
                    raise TimeoutError(f"the parent had not caught up after {o.timeout_s:g} s ({lag} events left)")
                # Often until the first batch is acknowledged (the resume delay's resolution), then
                # seldom: a LinkStatus costs the county several queries, and 50 a second competed with
                # the catch-up it measures. When the parent had everything is read from its own record.
                time.sleep(POLL_S if first is None else CATCHUP_POLL_S)
    stored_wall = last_push_stored(chain.backend.service_url("chain", CITY, "exchange"), child=COUNTY)
    # The parent's commit of the last part of the catch-up (its child_up cursor's contact time, written
    # in that transaction); the poll that saw it, when the record is missing or not from this catch-up.
    stored = restored + (stored_wall - restored_wall) if stored_wall is not None else None
    done = stored if stored is not None and restored < stored <= polled_done else polled_done
    first = first if first is not None else done

    base_rate, base_rows = bare_batched_insert(
        chain.backend.service_url("chain", CITY, "exchange"), child=COUNTY, events=events
    )
    name = f"catch-up {COUNTY}→{CITY} ({events:,} events, from link back)"
    base_is = f"bare batched INSERT of the same rows ({LINK_BATCH}/commit), parent's DB"
    # End to end (issue 21): from the moment the link is back, reconnecting included, until the
    # parent has everything. The rate once batches flow (leaving the reconnect out) is in the details.
    rate = events / max(done - restored, 1e-9)
    result.rows += [
        Row(name, "catch-up rate", rate, "/s", base_rate, base_is),
        Row(name, "link back → parent has all", done - restored, "s", events / base_rate, base_is),
        Row(name, "link back → first batch acked", first - restored, "s", Backoff().cap_s, "link retry backoff cap"),
    ]
    result.details = {
        "events": events,
        "cases_submitted_while_cut": cases,
        "cut_seconds": round(accumulate_seconds, 3),
        # Submitting is quick; the node's in-process consumers (routing, stats, exchange) turning the
        # cases into up-log events are what takes the time, so this is their sustained rate.
        "up_log_events_per_s_while_cut": round(events / accumulate_seconds, 1),
        "resume_delay_s": round(first - restored, 3),
        "catch_up_window_s": round(done - before, 3),
        "rate_once_flowing": round(events / max(done - before, 1e-9), 1),
        "total_s": round(done - restored, 3),
        "done_from": "the parent's commit of the last push" if done != polled_done else "the poll that saw it",
        "total_s_as_polled": round(polled_done - restored, 3),
        "poll_interval_s": POLL_S,
        "poll_interval_s_once_flowing": CATCHUP_POLL_S,
        "baseline_rows": base_rows,
        "baseline_rate": round(base_rate, 1),
    }
    return result


# --------------------------------------------------------------------------- stats


@dataclass(frozen=True)
class StatsOptions:
    cases: int = 100_000
    queries: int = 50
    months: int = 12
    workers: int = 16
    seed: int = 7


def stat_months(count: int, today: datetime | None = None) -> list[str]:
    """The ``count`` whole statistical months before the current one, oldest first."""
    now = (today or datetime.now(UTC)).astimezone(CHINA)
    current = month_name(now.year, now.month)
    return [shift_month(current, -i) for i in range(count, 0, -1)]


def _counted(chunks: Iterator[list[tuple[Any, ...]]], advance: Callable[[int], None]) -> Iterator[list[Any]]:
    for rows in chunks:
        yield rows
        advance(len(rows))


def stats(backend: Backend, o: StatsOptions, progress: Progress) -> ScenarioResult:
    """GetMetrics (all metrics, one region, one month) over gRPC on a generated warehouse."""
    result = ScenarioResult("stats")
    tree = RegionTree.load()
    backend.prepare("stats", PROVINCE)
    url = backend.service_url("stats", PROVINCE, "stats")
    months = stat_months(o.months)
    engine = make_engine(url, service="stats")
    node: Node | None = None
    try:
        upgrade(engine, "stats")
        with progress.phase("stats: loading the warehouse", total=o.cases, unit="cases") as phase:
            chunks = generate(
                o.cases, tree=tree, root=PROVINCE, months=months, config=StatsConfig(), seed=o.seed, chunk=20_000
            )
            load_started = time.perf_counter()
            bulk_insert(engine, _counted(chunks, phase.advance), defer_indexes=True)
            with engine.begin() as conn:
                conn.exec_driver_sql("ANALYZE")  # planners need statistics of the facts and the rollups
            load_seconds = time.perf_counter() - load_started
        # The stats service alone, as its production api process serves it, in this process: the
        # queries are sequential, so the client never competes with the server for the GIL.
        settings = Settings(
            node=PROVINCE,
            data_dir=backend.data_dir("stats"),
            database_url=backend.database_template("stats"),
            metrics_port=None,
            grpc_workers=o.workers,
            log_json=False,
            log_level="WARNING",
            auth=False,
            tls_dir=None,
        )
        node = Node(settings, services=("stats",)).start()
        rng = random.Random(o.seed)
        cities = list(tree.children[PROVINCE])
        counties = counties_of(tree, PROVINCE)
        levels: list[tuple[str, Callable[[], str]]] = [
            ("province", lambda: PROVINCE),
            ("city", lambda: rng.choice(cities)),
            ("county", lambda: rng.choice(counties)),
        ]
        samples: dict[str, Sample] = {}
        with grpc.insecure_channel(node.address) as channel:
            stub = stats_grpc.StatsServiceStub(channel)
            for level, pick in levels:

                def query(_i: int, pick: Callable[[], str] = pick) -> None:
                    request = stats_pb2.GetMetricsRequest(region_code=pick(), month=rng.choice(months))
                    stub.GetMetrics(request, timeout=120)

                with progress.phase(f"stats GetMetrics, {level}", total=o.queries) as phase:
                    samples[level] = sequential(query, count=o.queries, phase=phase)

        def count(_i: int) -> None:
            with engine.connect() as conn:
                conn.execute(sa.text("SELECT count(*) FROM case_facts")).scalar_one()

        with progress.phase("bare COUNT(*) over the facts", total=o.queries) as phase:
            baseline = sequential(count, count=o.queries, phase=phase)
    finally:
        if node is not None:
            node.stop(grace=1.0)
        engine.dispose()
    name = f"stats GetMetrics ({o.cases:,} cases)"
    for level in ("province", "city", "county"):
        _pcts(result.rows, name, f"{level} ", samples[level], baseline, "SELECT count(*) over all facts, same DB")
    result.details = {
        "cases": o.cases,
        "months": months,
        "load_seconds": round(load_seconds, 2),
        "queries_per_level": o.queries,
        **{level: s.summary() for level, s in samples.items()},
        "baseline_count": baseline.summary(),
    }
    return result
