"""Where a catch-up's time goes: county → city in this process, the link cut while the county fills
its up-log, then restored; the time from link back until the city has everything, and a sampling
profile of the process's threads over that window.

    .venv/bin/python -m bench.catchup_profile --cases 750
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import grpc
from lianxin.exchange.v1 import exchange_service_pb2 as exchange_pb2
from lianxin.exchange.v1 import exchange_service_pb2_grpc as exchange_grpc
from lianxin.intake.v1 import intake_service_pb2_grpc as intake_grpc

from bench.faults.proxy import TcpProxy
from bench.harness.workload import Submissions
from bench.sampler import Sampler
from services.common.settings import Settings
from services.node import Node


def _lag(stub: exchange_grpc.ExchangeServiceStub) -> int:
    for link in stub.LinkStatus(exchange_pb2.LinkStatusRequest(), timeout=10).links:
        if link.direction == exchange_pb2.LINK_DIRECTION_UP:
            return int(link.lag_events)
    raise RuntimeError("no up link")


def in_process_settings(data_dir: str, database_url: str | None) -> Settings:
    """Nodes of a profile in this process: quiet logs, no metrics port, no classifier or rate limit."""
    os.environ.setdefault("LIANXIN_INTAKE_CLASSIFIER", "off")
    os.environ.setdefault("LIANXIN_INTAKE_RATE_LIMIT", "0")
    return Settings(
        data_dir=Path(data_dir), log_json=False, log_level="WARNING", metrics_port=None, database_url=database_url
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=750)
    parser.add_argument("--city-services", default="intake,routing,exchange,video,stats")
    parser.add_argument("--database-url", default=None, help="a template with {node} and {service} (PostgreSQL)")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as data:
        base = in_process_settings(data, options.database_url)
        city = Node(base.with_overrides(node="511100"), services=tuple(options.city_services.split(","))).start()
        proxy = TcpProxy(city.address).start()
        county = Node(base.with_overrides(node="511102", parent=proxy.address)).start()
        try:
            with grpc.insecure_channel(county.address) as channel:
                intake = intake_grpc.IntakeServiceStub(channel)
                link = exchange_grpc.ExchangeServiceStub(channel)
                proxy.cut()
                submissions = Submissions("511102")
                for n in range(options.cases):
                    intake.SubmitCase(submissions.request(0, n), timeout=30)
                county.drain()  # the county's consumers turn every case into its up-log events
                last, since = -1, time.monotonic()
                while time.monotonic() - since < 2.0:  # the county's consumers finish appending
                    time.sleep(0.1)
                    lag = _lag(link)
                    if lag != last:
                        last, since = lag, time.monotonic()
                events = last
                print(f"backlog: {events} events")
                with Sampler(interval_s=0.002) as sampler:
                    restored = time.perf_counter()
                    proxy.restore()
                    first = None
                    while (lag := _lag(link)) > 0:
                        if first is None and lag < events:
                            first = time.perf_counter() - restored
                        time.sleep(0.01)
                    done = time.perf_counter() - restored
            print(f"first batch acked {first or done:.3f} s, all {done:.3f} s: {events / done:,.0f} ev/s")
            print(sampler.report(30))
        finally:
            county.stop(1.0)
            proxy.close()
            city.stop(1.0)


if __name__ == "__main__":
    main()
