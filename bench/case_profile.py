"""Where a case's CPU goes at a steady rate: a county → city → province chain in this process, cases
submitted at the county at ``--rate`` per second, the process's CPU per case above idle (client
included), and a sampling profile of the process's threads while the cases travel.

    .venv/bin/python -m bench.case_profile --cases 120 --rate 4
"""

from __future__ import annotations

import argparse
import collections
import tempfile
import time
from collections.abc import Callable

import grpc
from lianxin.exchange.v1 import exchange_service_pb2 as exchange_pb2
from lianxin.exchange.v1 import exchange_service_pb2_grpc as exchange_grpc
from lianxin.intake.v1 import intake_service_pb2_grpc as intake_grpc

from bench.catchup_profile import in_process_settings
from bench.harness.workload import Submissions
from bench.idle_profile import thread_cpu
from bench.sampler import Sampler
from services.common import bus
from services.common.service import BusEvent, Subscription
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
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as data:
        base = in_process_settings(data, options.database_url)
        nodes: list[Node] = []
        parent = None
        for code in CHAIN:
            node = Node(base.with_overrides(node=code, parent=parent)).start()
            nodes.append(node)
            parent = node.address
        county, city = nodes[2], nodes[1]
        try:
            time.sleep(3.0)  # let start-up work settle before measuring idle
            cpu0, wall0 = time.process_time(), time.perf_counter()
            time.sleep(options.idle_s)
            idle = (time.process_time() - cpu0) / (time.perf_counter() - wall0)
            submissions = Submissions(CHAIN[2])
            threads_before = thread_cpu()
            with (
                grpc.insecure_channel(county.address) as channel,
                Sampler(interval_s=0.002) as sampler,
                DeliveryCpu() as deliveries,
            ):
                intake = intake_grpc.IntakeServiceStub(channel)
                cpu0, wall0 = time.process_time(), time.perf_counter()
                for n in range(options.cases):
                    intake.SubmitCase(submissions.request(0, n), timeout=30)
                    time.sleep(max(0.0, wall0 + (n + 1) / options.rate - time.perf_counter()))
                deadline = time.monotonic() + 120
                while _up_lag(county.address) or _up_lag(city.address):
                    if time.monotonic() > deadline:
                        raise TimeoutError("the chain did not catch up within 120 s")
                    time.sleep(0.05)
                time.sleep(1.0)  # the province's consumers finish the last batch
                cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
            above = cpu - idle * wall
            print(
                f"{options.cases} cases at {options.rate:g}/s over {wall:.1f} s: process CPU {cpu:.2f} s"
                f" ({cpu / wall:.2f} cores), idle {idle * 1000:.1f} ms/s,"
                f" above idle {above * 1000 / options.cases:.1f} ms per case (3 nodes and the client)"
            )
            threads_after = thread_cpu()
            print("-- CPU per case by thread (ms, all three nodes)")
            spent = {name: threads_after[name] - threads_before.get(name, 0.0) for name in threads_after}
            for name, seconds in sorted(spent.items(), key=lambda item: -item[1])[:15]:
                print(f"{seconds * 1000 / options.cases:8.2f}  {name}")
            print("-- CPU per case by consumer delivery (ms; deliveries per case)")
            for key, seconds in sorted(deliveries.cpu.items(), key=lambda item: -item[1])[:25]:
                print(f"{seconds * 1000 / options.cases:8.2f}  {deliveries.count[key] / options.cases:5.1f}  {key}")
            print(sampler.report(options.top))
        finally:
            for node in reversed(nodes):
                node.stop(1.0)


if __name__ == "__main__":
    main()
