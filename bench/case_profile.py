"""Where a case's CPU goes at a steady rate: a county → city → province chain in this process, cases
submitted at the county at ``--rate`` per second, the process's CPU per case above idle (client
included), and a sampling profile of the process's threads while the cases travel. ``--topology``:
every node of a YAML tree in one host in this process instead (as ``bench.scale`` hosts them), the
cases spread over its counties.

    .venv/bin/python -m bench.case_profile --cases 120 --rate 4
    .venv/bin/python -m bench.case_profile --cases 72 --rate 1.2 --topology bench/scale/leshan.yaml
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import tempfile
import time
from collections.abc import Callable

import grpc
from lianxin.exchange.v1 import exchange_service_pb2 as exchange_pb2
from lianxin.exchange.v1 import exchange_service_pb2_grpc as exchange_grpc
from lianxin.intake.v1 import intake_service_pb2_grpc as intake_grpc

from bench.catchup_profile import in_process_settings
from bench.harness.workload import Submissions
from bench.idle_profile import Counted, count_timers, start_topology, thread_cpu
from bench.sampler import Sampler
from services.common import bus
from services.common.regions import RegionTree, Tier
from services.common.service import BusEvent, Subscription
from services.common.settings import Settings
from services.node import Node

CHAIN = ("510000", "511100", "511102")  # province, city, county


def _up_lag(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        links = exchange_grpc.ExchangeServiceStub(channel).LinkStatus(exchange_pb2.LinkStatusRequest(), timeout=10)
    return sum(int(link.lag_events) for link in links.links if link.direction == exchange_pb2.LINK_DIRECTION_UP)


class DeliveryCpu:
    """Thread CPU of every handler delivery on the in-process buses, by consumer and event source."""

    def __init__(self) -> None:
        self.cpu: dict[str, float] = collections.defaultdict(float)
        self.count: collections.Counter[str] = collections.Counter()
        # The bus module's own name for it: what publish and publish_batch call.
        self._deliver: Callable[[Subscription, BusEvent], None] = vars(bus)["deliver"]

    def __enter__(self) -> DeliveryCpu:
        def counted(sub: Subscription, event: BusEvent) -> None:
            start = time.thread_time()
            try:
                self._deliver(sub, event)
            finally:
                key = f"{sub.consumer} <- {event.source}.{event.event_type}"
                self.cpu[key] += time.thread_time() - start
                self.count[key] += 1

        vars(bus)["deliver"] = counted
        return self

    def __exit__(self, *exc: object) -> None:
        vars(bus)["deliver"] = self._deliver


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=120)
    parser.add_argument("--rate", type=float, default=4.0, help="cases per second")
    parser.add_argument("--idle-s", type=float, default=5.0, help="seconds of idle CPU measured first")
    parser.add_argument("--database-url", default=None, help="a template with {node} and {service} (PostgreSQL)")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument(
        "--topology", help="a YAML tree hosted in this process (as one host of bench.scale) instead of the chain"
    )
    options = parser.parse_args()
    timers = Counted()
    count_timers(timers)
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as data, contextlib.ExitStack() as running:
        base = in_process_settings(data, options.database_url)
        nodes = start_topology(base, options.topology, running) if options.topology else _start_chain(base, running)
        _measure(options, nodes, timers)


def _measure(options: argparse.Namespace, nodes: list[Node], timers: Counted) -> None:
    """Idle first, then the cases at a steady rate spread over the counties until every up-log is
    drained: CPU per case above idle, by thread, by consumer delivery, and a sampling profile."""
    regions = RegionTree.load()
    counties = [n for n in nodes if regions.get(n.code).tier is Tier.COUNTY]
    links = [n for n in nodes if n.settings.parent]  # every node with a parent: its up-log must drain
    time.sleep(3.0)  # let start-up work settle before measuring idle
    cpu0, wall0 = time.process_time(), time.perf_counter()
    time.sleep(options.idle_s)
    idle = (time.process_time() - cpu0) / (time.perf_counter() - wall0)
    submissions = {n.code: Submissions(n.code) for n in counties}
    timers.cpu.clear()
    timers.runs.clear()
    threads_before = thread_cpu()
    with (
        contextlib.ExitStack() as channels,
        Sampler(interval_s=0.002) as sampler,
        DeliveryCpu() as deliveries,
    ):
        stubs = [
            (n.code, intake_grpc.IntakeServiceStub(channels.enter_context(grpc.insecure_channel(n.address))))
            for n in counties
        ]
        cpu0, wall0, kernel0 = time.process_time(), time.perf_counter(), os.times().system
        for n in range(options.cases):
            code, intake = stubs[n % len(stubs)]  # spread over the counties, as bench.scale does
            intake.SubmitCase(submissions[code].request(0, n), timeout=30)
            time.sleep(max(0.0, wall0 + (n + 1) / options.rate - time.perf_counter()))
        deadline = time.monotonic() + 120
        while any(_up_lag(n.address) for n in links):
            if time.monotonic() > deadline:
                raise TimeoutError("the tree did not catch up within 120 s")
            time.sleep(0.05)
        time.sleep(1.0)  # the province's consumers finish the last batch
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        kernel = os.times().system - kernel0
    # The sampler's own CPU (it walks every thread's stack every 2 ms: more with more nodes) is not the cases'.
    cpu -= sampler.cpu_s
    above = cpu - idle * wall
    print(
        f"{options.cases} cases at {options.rate:g}/s over {wall:.1f} s: process CPU {cpu:.2f} s"
        f" ({cpu / wall:.2f} cores) besides the sampler's {sampler.cpu_s:.2f} s, idle {idle * 1000:.1f} ms/s,"
        f" above idle {above * 1000 / options.cases:.1f} ms per case ({len(nodes)} nodes and the client)"
        f"; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    # In the kernel: system calls, and the threads' hand-offs of the GIL (futex waits and wake-ups).
    print(f"-- of the process's CPU under load, {kernel:.2f} s ({kernel / (cpu + sampler.cpu_s):.0%}) in the kernel")
    threads_after = thread_cpu()
    print(f"-- CPU per case by thread (ms, all {len(nodes)} nodes)")
    spent = {name: threads_after[name] - threads_before.get(name, 0.0) for name in threads_after}
    for name, seconds in sorted(spent.items(), key=lambda item: -item[1])[:15]:
        print(f"{seconds * 1000 / options.cases:8.2f}  {name}")
    print("-- CPU per case by consumer delivery (ms; deliveries per case)")
    for key, seconds in sorted(deliveries.cpu.items(), key=lambda item: -item[1])[:25]:
        print(f"{seconds * 1000 / options.cases:8.2f}  {deliveries.count[key] / options.cases:5.1f}  {key}")
    print("-- CPU per case by timer (ms; runs in all; the idle share of each is in it)")
    for name, seconds in sorted(timers.cpu.items(), key=lambda item: -item[1])[:10]:
        print(f"{seconds * 1000 / options.cases:8.2f}  {timers.runs[name]:5d}  {name}")
    print(sampler.report(options.top))


def _start_chain(base: Settings, running: contextlib.ExitStack) -> list[Node]:
    """County → city → province, each a node of its own in this process."""
    nodes: list[Node] = []
    parent = None
    for code in CHAIN:
        node = Node(base.with_overrides(node=code, parent=parent)).start()
        running.callback(node.stop, 1.0)
        nodes.append(node)
        parent = node.address
    return nodes


if __name__ == "__main__":
    main()
