"""Fault scenarios: steady load, a fault mid-run, load goes on, wait until quiescent, then count.

Two stacks host the scenarios, each started once and shared by its scenarios (one after another):

- ``ProductionStack``: node 511102 as ten processes (api + worker per service) on a private
  PostgreSQL cluster and a private RabbitMQ node. Faults: ``kill -9`` of any api or worker and a
  restart, RabbitMQ shut down and started, PostgreSQL stopped (immediate: a crash) and started.
- ``FederationStack``: county 511102 → city 511100 as embedded nodes, the county's parent address
  being a TCP proxy in front of the city. Faults: the link cut (connections reset, new ones
  refused) and restored; the link delayed.

Timeline of one scenario (monotonic seconds): load starts; after 30 % of ``duration`` the fault is
injected; ``outage`` later it is cleared (the restart command returned: a process is spawned, a
server accepts connections again, the link is restored or undelayed); the load runs on until
``duration``; the harness then waits (bounded) until every acknowledged case has reached every
downstream view, and counts.

What is counted, for the cases of the scenario (keys ``<prefix>-<n>``):

- ``acked``: submissions the client got an answer for; ``stored``: acked keys found at the node;
- ``lost``: an acked key with no stored case, or a stored case missing from a downstream view
  (routing's work orders, the node's statistics, the parent's replicas and statistics);
- ``doubled``: a key with more than one case, or a case that a downstream view holds more than once
  (two work orders, counted twice, received twice by the parent), or a global double count;
- ``recovery``: from the fault cleared to the first successful ack (``ack s``), and to the moment
  every case acknowledged before the clear was in every downstream view (``converged s``).
"""

from __future__ import annotations

import collections
import contextlib
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from lianxin.common.v1 import common_pb2
from lianxin.exchange.v1 import exchange_service_pb2 as exchange_pb2
from lianxin.exchange.v1 import exchange_service_pb2_grpc as exchange_grpc
from lianxin.intake.v1 import intake_service_pb2 as intake_pb2
from lianxin.intake.v1 import intake_service_pb2_grpc as intake_grpc
from lianxin.routing.v1 import routing_service_pb2 as routing_pb2
from lianxin.routing.v1 import routing_service_pb2_grpc as routing_grpc
from lianxin.stats.v1 import stats_service_pb2 as stats_pb2
from lianxin.stats.v1 import stats_service_pb2_grpc as stats_grpc

from bench.faults.cluster import EmbeddedNode, ProductionNode
from bench.faults.infra import PrivatePostgres, PrivateRabbitMQ
from bench.faults.load import LoadGenerator
from bench.faults.names import PRODUCTION_SCENARIOS, SCENARIOS
from bench.faults.proxy import TcpProxy

COUNTY = "511102"
CITY = "511100"
PAGE = 500
RPC_TIMEOUT_S = 10.0


# --------------------------------------------------------------------------- what the system holds


@dataclass
class Observation:
    """What the node under test and the views downstream of it hold for one scenario's cases."""

    stored: dict[str, list[str]]  # key (channel_ref) → case ids registered for it
    downstream: dict[str, collections.Counter[str]]  # view → how many times it holds each case id
    problems: list[tuple[str, str]] = field(default_factory=list)  # ("lost" | "doubled", what)


@dataclass
class Settings:
    duration_s: float = 20.0
    rate: float = 10.0
    outage_s: float = 2.0
    delay_ms: float = 300.0
    converge_timeout_s: float = 120.0
    pg_stop_mode: str = "immediate"
    ready_timeout_s: float = 120.0  # how long a started node process may take to serve


class Stack(Protocol):
    @property
    def node(self) -> str: ...

    @property
    def intake_address(self) -> str: ...

    def fault(self, scenario: str, settings: Settings) -> tuple[Callable[[], object], Callable[[], object]]: ...

    def observe(self, prefix: str, window: tuple[float, float]) -> Observation: ...

    def holds_downstream(self, case_ids: set[str]) -> bool: ...

    def settle(self) -> None: ...

    def diagnostics(self) -> dict[str, str]: ...

    def crashes(self) -> list[str]: ...

    def close(self) -> None: ...


def _channel(address: str) -> grpc.Channel:
    return grpc.insecure_channel(address)


def _timestamp(unix_s: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(unix_s * 1e9))
    return ts


def stored_cases(address: str, prefix: str) -> dict[str, list[str]]:
    """key → case ids of every web case whose channel_ref starts with ``prefix`` (all pages)."""
    out: dict[str, list[str]] = collections.defaultdict(list)
    with _channel(address) as channel:
        stub = intake_grpc.IntakeServiceStub(channel)
        token = ""
        while True:
            reply = stub.ListCases(
                intake_pb2.ListCasesRequest(
                    channel=common_pb2.CHANNEL_WEB, page=common_pb2.PageRequest(page_size=PAGE, page_token=token)
                ),
                timeout=RPC_TIMEOUT_S,
            )
            for case in reply.cases:
                if case.channel_ref.startswith(prefix):
                    out[case.channel_ref].append(case.case_id)
            token = reply.page.next_page_token
            if not token:
                return dict(out)


def work_orders(address: str) -> collections.Counter[str]:
    """case id → number of work orders routing holds for it."""
    counts: collections.Counter[str] = collections.Counter()
    with _channel(address) as channel:
        stub = routing_grpc.RoutingServiceStub(channel)
        token = ""
        while True:
            reply = stub.ListWorkOrders(
                routing_pb2.ListWorkOrdersRequest(page=common_pb2.PageRequest(page_size=PAGE, page_token=token)),
                timeout=RPC_TIMEOUT_S,
            )
            counts.update(order.case_id for order in reply.work_orders)
            token = reply.page.next_page_token
            if not token:
                return counts


def counted(address: str, region: str, window: tuple[float, float] | None = None) -> tuple[int, list[str]]:
    """The statistics' ``received`` figure for ``region``: (numerator, the case ids behind it)."""
    request = stats_pb2.GetMetricsRequest(region_code=region, metrics=["received"], include_case_ids=True)
    if window is not None:
        request.period_start.CopyFrom(_timestamp(window[0]))
        request.period_end.CopyFrom(_timestamp(window[1]))
    with _channel(address) as channel:
        reply = stats_grpc.StatsServiceStub(channel).GetMetrics(request, timeout=RPC_TIMEOUT_S)
    metric = reply.metrics[0]
    return int(metric.numerator), list(metric.case_ids)


def replicas(address: str, subtree: str) -> exchange_pb2.ListReplicasResponse:
    with _channel(address) as channel:
        reply: exchange_pb2.ListReplicasResponse = exchange_grpc.ExchangeServiceStub(channel).ListReplicas(
            exchange_pb2.ListReplicasRequest(subtree_node=subtree, max_items=10_000_000), timeout=RPC_TIMEOUT_S
        )
    return reply


def quarantined(address: str) -> int:
    with _channel(address) as channel:
        reply = exchange_grpc.ExchangeServiceStub(channel).ListQuarantine(
            exchange_pb2.ListQuarantineRequest(), timeout=RPC_TIMEOUT_S
        )
    return len(reply.items)


def _stats_view(
    address: str, region: str, window: tuple[float, float] | None, name: str
) -> tuple[collections.Counter[str], list[tuple[str, str]]]:
    numerator, ids = counted(address, region, window)
    problems: list[tuple[str, str]] = []
    if numerator != len(ids) and len(ids) < 10_000:  # the drill-down lists at most 10,000 ids
        problems.append(("doubled", f"{name}: received = {numerator} but {len(ids)} cases behind it"))
    return collections.Counter(ids), problems


def _safely(probe: Callable[[], bool]) -> bool:
    """A poll that meets a server still down answers 'not yet' instead of failing the run."""
    try:
        return probe()
    except grpc.RpcError:
        return False


# --------------------------------------------------------------------------- the production stack


class ProductionStack:
    """Node 511102 as ten processes on a private PostgreSQL cluster and a private RabbitMQ node."""

    node = COUNTY

    def __init__(self, workdir: Path, ready_timeout_s: float = 120.0) -> None:
        self.workdir = workdir
        self.ready_timeout_s = ready_timeout_s
        self.postgres: PrivatePostgres | None = None
        self.rabbit: PrivateRabbitMQ | None = None
        self.processes: ProductionNode | None = None

    def start(self) -> ProductionStack:
        self.postgres = PrivatePostgres()
        self.rabbit = PrivateRabbitMQ()
        # Both boot in parallel: RabbitMQ alone takes ~10 s on two cores.
        with ThreadPoolExecutor(2) as pool:
            postgres, rabbit = pool.submit(self.postgres.start), pool.submit(self.rabbit.start)
            postgres.result()
            rabbit.result()
        url = self.postgres.create_database("lianxin")
        self.processes = ProductionNode(self.node, url, self.rabbit.amqp_uri, self.workdir / "production").start(
            self.ready_timeout_s
        )
        return self

    @property
    def _node(self) -> ProductionNode:
        assert self.processes is not None, "start() first"
        return self.processes

    @property
    def intake_address(self) -> str:
        return self._node.address("intake")

    def fault(self, scenario: str, settings: Settings) -> tuple[Callable[[], object], Callable[[], object]]:
        node = self._node
        if scenario.startswith("kill-"):
            name = scenario.removeprefix("kill-")
            return (lambda: node.kill9(name)), (lambda: node.spawn(name))
        if scenario == "rabbitmq-restart":
            rabbit = self.rabbit
            assert rabbit is not None
            return rabbit.stop, rabbit.start
        if scenario == "postgres-restart":
            postgres = self.postgres
            assert postgres is not None
            return (lambda: postgres.stop(settings.pg_stop_mode)), postgres.start
        raise KeyError(scenario)

    def observe(self, prefix: str, window: tuple[float, float]) -> Observation:
        node = self._node
        stats, problems = _stats_view(node.address("stats"), self.node, window, "stats")
        return Observation(
            stored=stored_cases(node.address("intake"), prefix),
            downstream={"routing work orders": work_orders(node.address("routing")), "stats": stats},
            problems=problems,
        )

    def holds_downstream(self, case_ids: set[str]) -> bool:
        node = self._node

        def probe() -> bool:
            _, ids = counted(node.address("stats"), self.node)
            return case_ids <= set(ids) and case_ids <= set(work_orders(node.address("routing")))

        return _safely(probe)

    def settle(self) -> None:
        """Every process up again (a scenario restarts what it killed; the next one starts whole)."""
        for name in list(self._node.processes):
            self._node.wait_ready(name, 90)

    def diagnostics(self) -> dict[str, str]:
        return self._node.tracebacks() if self.processes is not None else {}

    def crashes(self) -> list[str]:
        """Every process that exited on its own so far (the supervisor restarted it)."""
        return [f"{name} (exit {code})" for _, name, code in self._node.crashes]

    def close(self) -> None:
        if self.processes is not None:
            self.processes.stop()
        for server in (self.rabbit, self.postgres):
            if server is not None:
                server.close()


# --------------------------------------------------------------------------- the federation stack


class FederationStack:
    """County 511102 → TCP proxy → city 511100, embedded nodes (SQLite, in-process bus)."""

    node = COUNTY

    def __init__(self, workdir: Path, ready_timeout_s: float = 120.0) -> None:
        self.workdir = workdir
        self.ready_timeout_s = ready_timeout_s
        self.city: EmbeddedNode | None = None
        self.county: EmbeddedNode | None = None
        self.proxy: TcpProxy | None = None
        self._crashed: list[str] = []

    def start(self) -> FederationStack:
        data = self.workdir / "federation"
        self.city = EmbeddedNode(CITY, data).start(self.ready_timeout_s)
        self.proxy = TcpProxy(self.city.address).start()
        self.county = EmbeddedNode(COUNTY, data, parent=self.proxy.address).start(self.ready_timeout_s)
        return self

    @property
    def _parts(self) -> tuple[EmbeddedNode, EmbeddedNode, TcpProxy]:
        assert self.city is not None and self.county is not None and self.proxy is not None, "start() first"
        return self.county, self.city, self.proxy

    @property
    def intake_address(self) -> str:
        return self._parts[0].address

    def fault(self, scenario: str, settings: Settings) -> tuple[Callable[[], object], Callable[[], object]]:
        proxy = self._parts[2]
        if scenario == "link-cut":
            return proxy.cut, proxy.restore
        if scenario == "link-delay":
            return (lambda: proxy.set_delay(settings.delay_ms)), (lambda: proxy.set_delay(0))
        raise KeyError(scenario)

    def observe(self, prefix: str, window: tuple[float, float]) -> Observation:
        county, city, _ = self._parts
        stats, problems = _stats_view(county.address, COUNTY, window, "county stats")
        parent_stats, parent_problems = _stats_view(city.address, COUNTY, window, "city stats")
        problems += parent_problems
        held = replicas(city.address, COUNTY)
        own = replicas(county.address, COUNTY)
        registered = collections.Counter(e.case_id for e in held.entries if e.event_type == "case_registered")
        event_ids = collections.Counter(e.event_id for e in held.entries)
        doubled_events = sum(n - 1 for n in event_ids.values() if n > 1)
        if doubled_events:
            problems.append(("doubled", f"city holds {doubled_events} county events more than once"))
        sequences: dict[str, list[int]] = collections.defaultdict(list)
        for entry in held.entries:
            sequences[entry.case_id].append(entry.case_sequence)
        gaps = [c for c, seq in sequences.items() if sorted(seq) != list(range(1, len(seq) + 1))]
        if gaps:
            problems.append(("lost", f"{len(gaps)} cases with a gap or a repeat in the city's case sequence"))
        if held.digest != own.digest:
            kind = "lost" if held.count < own.count else "doubled"
            problems.append((kind, f"city holds {held.count} county events, the county {own.count}"))
        waiting = quarantined(city.address)
        if waiting:
            problems.append(("lost", f"{waiting} items in the city's quarantine"))
        return Observation(
            stored=stored_cases(county.address, prefix),
            downstream={
                "routing work orders": work_orders(county.address),
                "stats": stats,
                "parent replicas": registered,
                "parent stats": parent_stats,
            },
            problems=problems,
        )

    def holds_downstream(self, case_ids: set[str]) -> bool:
        county, city, _ = self._parts

        def probe() -> bool:
            held = {e.case_id for e in replicas(city.address, COUNTY).entries if e.event_type == "case_registered"}
            return (
                case_ids <= held
                and case_ids <= set(counted(city.address, COUNTY)[1])
                and case_ids <= set(counted(county.address, COUNTY)[1])
                and case_ids <= set(work_orders(county.address))
            )

        return _safely(probe)

    def crashes(self) -> list[str]:
        """A node process that died on its own is noted and started again (as a supervisor would)."""
        for node in self._parts[:2]:
            process = node.process
            if process is not None and process.poll() is not None:
                self._crashed.append(f"node {node.node} (exit {process.returncode})")
                node.start(self.ready_timeout_s)
        return list(self._crashed)

    def settle(self) -> None:
        county, city, proxy = self._parts
        self.crashes()
        proxy.set_delay(0)
        if proxy.is_cut:
            proxy.restore()

        def converged() -> bool:
            return replicas(city.address, COUNTY).digest == replicas(county.address, COUNTY).digest

        deadline = time.monotonic() + 60
        while not _safely(converged) and time.monotonic() < deadline:
            time.sleep(0.2)  # polling a condition with a deadline

    def diagnostics(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for log in sorted((self.workdir / "federation").glob("*.log")):
            text = log.read_text(errors="replace")
            if "Traceback" in text:
                out[log.stem] = text[-3000:]
        return out

    def close(self) -> None:
        county, city, proxy = self.county, self.city, self.proxy
        for node in (county, city):
            if node is not None:
                node.stop()
        if proxy is not None:
            proxy.close()


# --------------------------------------------------------------------------- one scenario


@dataclass
class ScenarioResult:
    scenario: str
    acked: int
    stored: int
    lost: int
    doubled: int
    failed: int  # not acked: a status other than UNAVAILABLE/DEADLINE_EXCEEDED, or gave up
    retries: int
    ack_recovery_s: float | None  # fault cleared → first successful ack
    converged_s: float | None  # fault cleared → every case acked before the clear in every view
    max_ack_gap_s: float  # the longest time without an ack, as the client saw the outage
    fault_s: float  # how long the fault took to inject and clear (e.g. a broker's restart)
    quiescent_s: float  # after the load stopped, until every acked case was in every view
    elapsed_s: float
    crashed: list[str]  # processes that exited on their own during the scenario (restarted by the supervisor)
    codes: dict[str, int]
    lost_by_view: dict[str, int]
    doubled_by_view: dict[str, int]
    problems: list[str]

    @property
    def ok(self) -> bool:
        # Failed submissions were never acknowledged, so they are neither lost nor doubled; they are
        # reported (a client saw an error it should not retry) but do not fail the run.
        return self.lost == 0 and self.doubled == 0 and self.acked > 0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def check(
    observation: Observation, acked: dict[str, str], keys: list[str]
) -> tuple[int, dict[str, int], dict[str, int], list[str]]:
    """(stored, lost by view, doubled by view, problems) for the scenario's keys."""
    lost: collections.Counter[str] = collections.Counter()
    doubled: collections.Counter[str] = collections.Counter()
    problems: list[str] = []
    stored = 0
    for key, case_id in acked.items():
        found = observation.stored.get(key, [])
        if not found:
            lost["intake"] += 1
            problems.append(f"acked {key} ({case_id}) is not stored")
            continue
        stored += 1
        if case_id not in found:
            doubled["intake"] += 1
            problems.append(f"acked {key} as {case_id} but stored as {', '.join(found)}")
    for key in keys:
        extra = len(observation.stored.get(key, [])) - 1
        if extra > 0:
            doubled["intake"] += extra
            problems.append(f"{key} stored {extra + 1} times")
    # Every stored case of the scenario, acked or not: downstream must hold it exactly once.
    cases = {case_id for ids in observation.stored.values() for case_id in ids}
    for view, counts in observation.downstream.items():
        missing = [c for c in cases if counts[c] == 0]
        extra = sum(counts[c] - 1 for c in cases if counts[c] > 1)
        if missing:
            lost[view] += len(missing)
            problems.append(f"{view}: {len(missing)} cases missing, e.g. {sorted(missing)[:3]}")
        if extra:
            doubled[view] += extra
            problems.append(f"{view}: {extra} extra copies")
    for kind, text in observation.problems:
        (lost if kind == "lost" else doubled)["global"] += 1
        problems.append(text)
    return stored, dict(lost), dict(doubled), problems


def _sleep_until(moment: float) -> None:
    time.sleep(max(0.0, moment - time.monotonic()))  # the scenario's timeline, not ordering


def run_scenario(stack: Stack, scenario: str, settings: Settings, *, run_id: str) -> ScenarioResult:
    prefix = f"f{run_id}-{scenario}"
    inject, clear = stack.fault(scenario, settings)
    crashes_before = len(stack.crashes())
    wall_start = time.time()
    load = LoadGenerator(stack.intake_address, stack.node, prefix, settings.rate).start()
    start = time.monotonic()
    converged_at: list[float] = []
    stop_poll = threading.Event()
    try:
        _sleep_until(start + 0.3 * settings.duration_s)
        fault_at = time.monotonic()
        inject()
        _sleep_until(time.monotonic() + settings.outage_s)
        clear()
        cleared_at = time.monotonic()

        before_clear = {s.case_id for s in load.submissions if s.case_id and (s.acked_at or 0) <= cleared_at}

        def poll() -> None:
            while not stop_poll.is_set():
                if stack.holds_downstream(before_clear):
                    converged_at.append(time.monotonic())
                    return
                stop_poll.wait(0.5)

        poller = threading.Thread(target=poll, name="converge-poll", daemon=True)
        poller.start()
        _sleep_until(max(start + settings.duration_s, cleared_at + 1.0))
    finally:
        load.stop(drain_timeout_s=settings.converge_timeout_s)
    acked = load.acked
    stopped_at = time.monotonic()
    deadline = stopped_at + settings.converge_timeout_s
    everything = set(acked.values())
    while time.monotonic() < deadline and not stack.holds_downstream(everything):
        time.sleep(0.25)  # waiting until quiescent, with a deadline
    quiescent_s = time.monotonic() - stopped_at
    poller.join(timeout=max(0.0, deadline - time.monotonic()))
    stop_poll.set()
    stack.settle()
    window = (wall_start - 120.0, time.time() + 120.0)
    stored, lost, doubled, problems = check(stack.observe(prefix, window), acked, [s.key for s in load.submissions])
    failures = load.failures()
    problems += [f"{s.key}: {s.failure}" for s in failures[:5]]
    crashed = stack.crashes()[crashes_before:]
    problems += [f"exited on its own and was restarted: {name}" for name in crashed]
    ack_times = load.ack_times()
    first = load.first_ack_after(cleared_at)
    gaps = [b - a for a, b in zip([start, *ack_times], ack_times, strict=False)]
    return ScenarioResult(
        scenario=scenario,
        acked=len(acked),
        stored=stored,
        lost=sum(lost.values()),
        doubled=sum(doubled.values()),
        failed=len(failures),
        retries=sum(s.attempts - 1 for s in load.submissions),
        ack_recovery_s=None if first is None else round(max(0.0, first - cleared_at), 3),
        converged_s=round(converged_at[0] - cleared_at, 3) if converged_at else None,
        max_ack_gap_s=round(max(gaps, default=0.0), 3),
        fault_s=round(cleared_at - fault_at, 3),
        quiescent_s=round(quiescent_s, 3),
        elapsed_s=round(time.monotonic() - start, 1),
        crashed=crashed,
        codes=dict(load.codes),
        lost_by_view=lost,
        doubled_by_view=doubled,
        problems=problems[:20],
    )


# --------------------------------------------------------------------------- a whole run


def stack_for(scenario: str) -> str:
    return "production" if scenario in PRODUCTION_SCENARIOS else "federation"


@contextlib.contextmanager
def started(kind: str, workdir: Path, ready_timeout_s: float = 120.0) -> Iterator[Stack]:
    stack: ProductionStack | FederationStack = (
        ProductionStack(workdir, ready_timeout_s) if kind == "production" else FederationStack(workdir, ready_timeout_s)
    )
    try:
        stack.start()  # a failing start still ends in close(): nothing it started outlives the run
        yield stack
    finally:
        stack.close()


def run(
    scenarios: list[str],
    settings: Settings,
    *,
    workdir: Path | None = None,
    on_result: Callable[[ScenarioResult], None] | None = None,
) -> list[ScenarioResult]:
    """Run ``scenarios`` in order, each stack started once; returns one result per scenario."""
    unknown = [s for s in scenarios if s not in SCENARIOS]
    if unknown:
        raise KeyError(f"unknown scenarios: {', '.join(unknown)} (known: {', '.join(SCENARIOS)})")
    own_dir = workdir is None
    root = Path(tempfile.mkdtemp(prefix="lianxin-faults-")) if workdir is None else workdir
    run_id = uuid.uuid4().hex[:6]
    results: list[ScenarioResult] = []
    try:
        for kind in ("production", "federation"):
            chosen = [s for s in scenarios if stack_for(s) == kind]
            if not chosen:
                continue
            with started(kind, root, settings.ready_timeout_s) as stack:
                for scenario in chosen:
                    result = run_scenario(stack, scenario, settings, run_id=run_id)
                    if not result.ok:
                        result.problems += [f"{name}.log: {tail[-500:]}" for name, tail in stack.diagnostics().items()]
                    results.append(result)
                    if on_result is not None:
                        on_result(result)
    finally:
        if own_dir:
            shutil.rmtree(root, ignore_errors=True)
    return results


def table(results: list[ScenarioResult]) -> str:
    def seconds(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    header = (
        f"{'scenario':<22} {'acked':>6} {'stored':>6} {'lost':>5} {'doubled':>7} {'failed':>6} "
        f"{'retries':>7} {'ack s':>6} {'converged s':>11} {'max gap s':>9} {'fault s':>7} {'crashed':>7}  verdict"
    )
    lines = [header, "-" * len(header)]
    for r in results:
        lines.append(
            f"{r.scenario:<22} {r.acked:>6} {r.stored:>6} {r.lost:>5} {r.doubled:>7} {r.failed:>6} "
            f"{r.retries:>7} {seconds(r.ack_recovery_s):>6} {seconds(r.converged_s):>11} "
            f"{r.max_ack_gap_s:>9.2f} {r.fault_s:>7.2f} {len(r.crashed):>7}  {'ok' if r.ok else 'FAIL'}"
        )
    return "\n".join(lines)
