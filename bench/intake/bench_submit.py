"""Intake benchmark: SubmitCase throughput and p50/p99 latency over real gRPC, on SQLite and on
PostgreSQL, each beside two baselines measured in the same run:

* a bare grpcio echo server (same thread pool, same clients): the ceiling of the transport;
* a raw single-row INSERT + COMMIT loop on the same database (one loop per client thread, and
  one lone loop): the ceiling of the storage.

"CPU ms" is this Python process's CPU per operation (clients included). One process runs on one
core at a time (the GIL), so 1000 / CPU ms bounds the rate whatever the database does.

    .venv/bin/python -m bench.intake.bench_submit                 # ~1 minute
    .venv/bin/python -m bench.intake.bench_submit --quick         # tiny sizes (the smoke test)
    .venv/bin/python -m bench.intake.bench_submit --backends sqlite
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
import sqlalchemy as sa
from lianxin.common.v1 import common_pb2
from lianxin.intake.v1 import intake_service_pb2 as pb
from lianxin.intake.v1 import intake_service_pb2_grpc as intake_grpc

from bench.baselines import raw_insert_loop
from services.common.db import make_engine
from services.common.settings import Settings
from services.node import Node

PG_ADMIN = os.environ.get("LIANXIN_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
NODE = "511102"


@dataclass
class Result:
    name: str
    count: int
    seconds: float
    latencies: list[float]
    cpu_seconds: float = 0.0  # this process's CPU (server, clients and driver alike) over the run

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def run_threads(threads: int, seconds: float, call: Callable[[int, int], None], name: str) -> Result:
    """``threads`` workers call ``call(worker, n)`` back to back for ``seconds``; latency per call."""
    stop = time.perf_counter() + seconds
    latencies: list[list[float]] = [[] for _ in range(threads)]
    barrier = threading.Barrier(threads + 1)

    def work(worker: int) -> None:
        barrier.wait()
        n = 0
        mine = latencies[worker]
        while time.perf_counter() < stop:
            started = time.perf_counter()
            call(worker, n)
            mine.append(time.perf_counter() - started)
            n += 1

    pool = [threading.Thread(target=work, args=(w,)) for w in range(threads)]
    for thread in pool:
        thread.start()
    barrier.wait()
    began = time.perf_counter()
    cpu_began = time.process_time()
    for thread in pool:
        thread.join()
    elapsed = time.perf_counter() - began
    flat = [x for part in latencies for x in part]
    return Result(name, len(flat), elapsed, flat, time.process_time() - cpu_began)


# -- baselines ---------------------------------------------------------------------------------


def _echo(request: bytes, context: grpc.ServicerContext) -> bytes:
    return request


def echo_server(workers: int) -> tuple[grpc.Server, str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers))
    handler = grpc.method_handlers_generic_handler("bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(_echo)})
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, f"127.0.0.1:{port}"


def bench_echo(threads: int, seconds: float, workers: int) -> Result:
    server, address = echo_server(workers)
    try:
        with grpc.insecure_channel(address) as channel:
            call = channel.unary_unary("/bench.Echo/Echo")
            payload = b"x" * 400  # about the size of a SubmitCaseRequest
            return run_threads(threads, seconds, lambda w, n: call(payload, timeout=10), "grpcio echo")
    finally:
        server.stop(0)


def bench_raw_insert(url: str, threads: int, seconds: float, name: str) -> Result:
    """Single-row INSERT + COMMIT through SQLAlchemy, the service's own engine settings."""
    engine = make_engine(url, service="bench")
    insert, drop = raw_insert_loop(engine)
    try:
        return run_threads(threads, seconds, insert, name)
    finally:
        drop()
        engine.dispose()


# -- the service -------------------------------------------------------------------------------


def submit_request(worker: int, n: int) -> pb.SubmitCaseRequest:
    tag = f"{worker}-{n}-{uuid.uuid4().hex[:6]}"
    return pb.SubmitCaseRequest(
        channel=common_pb2.CHANNEL_APP,
        channel_ref=f"bench-{tag}",
        title=f"路灯不亮 {tag}",
        body=f"乐山市市中区嘉州大道路段路灯长期不亮，夜间出行不安全，请尽快维修。编号 {tag}。",
        category="城乡建设",
        region_code=NODE,
        complainant=common_pb2.Person(name="张三", phone=f"139{worker:02d}{n % 1_000_000:06d}"),
    )


def bench_submit(database_url: str | None, data_dir: Path, threads: int, seconds: float, workers: int) -> Result:
    settings = Settings(
        node=NODE, data_dir=data_dir, database_url=database_url, grpc_workers=workers, metrics_port=None
    )
    node = Node(settings, services=("intake",)).start()
    try:
        with grpc.insecure_channel(node.address) as channel:
            stub = intake_grpc.IntakeServiceStub(channel)
            stub.SubmitCase(submit_request(99, 0), timeout=10)  # warm up (locator, first connection)
            return run_threads(
                threads, seconds, lambda w, n: stub.SubmitCase(submit_request(w, n), timeout=30), "SubmitCase"
            )
    finally:
        node.stop(grace=1.0)


def fresh_pg_database() -> tuple[str, Callable[[], None]] | None:
    try:
        admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
        name = f"lianxin_bench_{uuid.uuid4().hex[:10]}"
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        print(f"PostgreSQL not available ({exc.__class__.__name__}); skipping it")
        return None

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return PG_ADMIN.rsplit("/", 1)[0] + f"/{name}", drop


def line(result: Result, echo: Result, raw_n: Result, raw_1: Result) -> str:
    return (
        f"{result.name:<26} {result.rate:>9,.0f} {result.pct(0.5):>8.2f} {result.pct(0.99):>8.2f}"
        f" {result.cpu_seconds / max(result.count, 1) * 1000:>8.2f}"
        f" {result.rate / echo.rate:>9.3f} {result.rate / raw_n.rate:>10.3f} {result.rate / raw_1.rate:>10.3f}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=8.0, help="duration of each measurement")
    parser.add_argument("--threads", type=int, default=8, help="concurrent client threads")
    parser.add_argument("--workers", type=int, default=16, help="server thread pool")
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--quick", action="store_true", help="tiny run (smoke test)")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.threads = 0.3, 2
    # Categories are given, and the per-submitter limit would stop a benchmark on purpose.
    os.environ.setdefault("LIANXIN_INTAKE_CLASSIFIER", "off")
    os.environ.setdefault("LIANXIN_INTAKE_RATE_LIMIT", "0")

    print(f"clients {args.threads} threads, server pool {args.workers}, {args.seconds:g} s per measurement")
    header = (
        f"{'measurement':<26} {'per s':>9} {'p50 ms':>8} {'p99 ms':>8} {'CPU ms':>8}"
        f" {'÷ echo':>9} {'÷ raw ×N':>10} {'÷ raw ×1':>10}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for backend in args.backends.split(","):
            if backend == "sqlite":
                url_for_node: str | None = None
                raw_url = f"sqlite:///{Path(tmp) / 'raw.db'}"
                cleanup: Callable[[], None] = lambda: None  # noqa: E731
            else:
                made = fresh_pg_database()
                if made is None:
                    continue
                url_for_node, cleanup = made
                raw_url = url_for_node
            try:
                echo = bench_echo(args.threads, args.seconds, args.workers)
                raw_n = bench_raw_insert(raw_url, args.threads, args.seconds, f"raw INSERT+COMMIT ×{args.threads}")
                raw_1 = bench_raw_insert(raw_url, 1, args.seconds, "raw INSERT+COMMIT ×1")
                submit = bench_submit(url_for_node, Path(tmp) / backend, args.threads, args.seconds, args.workers)
            finally:
                cleanup()
            submit.name = f"SubmitCase ({backend})"
            print(f"\n== {backend} ==")
            print(header)
            for result in (submit, echo, raw_n, raw_1):
                print(line(result, echo, raw_n, raw_1))
            print(
                f"SubmitCase on {backend}: {submit.rate / raw_n.rate:.0%} of the raw insert rate "
                f"with the same concurrency, {submit.rate / raw_1.rate:.0%} of a lone insert loop"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
