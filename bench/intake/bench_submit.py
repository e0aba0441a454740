"""Intake benchmark: SubmitCase throughput and p50/p99 latency over real gRPC, on SQLite and on
PostgreSQL, each beside two baselines measured in the same run:

* a bare grpcio echo server (same thread pool, same clients): the ceiling of the transport;
* a raw single-row INSERT + COMMIT loop on the same database (one loop per client thread, and
  one lone loop), run from this process: the ceiling of the storage.

By default the intake api runs as production runs it, ``lianxin serve --service intake`` in its own
process (and the echo server in its own), once with one api process and once with two on the same
database (deploy/k8s runs two replicas of every api), the clients' calls spread round robin. The
client threads then never share an interpreter lock with the server they measure. ``--server
thread`` puts node and clients in this one process instead (the earlier form of this benchmark).

The CPU columns say where the CPU went, per call: this process (the clients; in thread mode the
server too), the api processes, and the local PostgreSQL's processes. A Python process runs on one
core at a time (the interpreter lock), so 1000 / (api CPU ms) bounds one api process's rate.

    .venv/bin/python -m bench.intake.bench_submit                  # ~2 minutes
    .venv/bin/python -m bench.intake.bench_submit --backends postgres --replicas 1,2,3
    .venv/bin/python -m bench.intake.bench_submit --server thread  # clients and node in one process
    .venv/bin/python -m bench.intake.bench_submit --quick          # tiny sizes (the smoke test)
    .venv/bin/python -m bench.intake.bench_submit --stored 1000000 # per-request p50 at 0 and at 1M stored cases

``--stored N`` measures something else: SubmitCase, TrackCase, GetCase and a unit's inbox, one call
at a time, on a node with an empty database and on one preloaded with N cases of skewed history
(``bench.harness.stored``, the same as ``lianxin bench --only stored --stored N``), side by side.
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
from bench.cpu import postgres_cpu_seconds, process_cpu_seconds
from bench.harness.procs import Backend, EchoProcess, NodeProcess, stop_all
from bench.harness.progress import Progress
from bench.harness.scenarios import INTAKE_SERVICE, client_target
from bench.harness.stored import side_by_side, stored_scenario
from services.common.db import make_engine
from services.common.settings import Settings
from services.node import Node

PG_ADMIN = os.environ.get("LIANXIN_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
NODE = "511102"
# Categories are given, and the per-submitter limit would stop a benchmark on purpose: the thread
# mode's node gets these settings (unless the environment names them); the api processes get them
# from the harness's node settings.
BENCH_ENV = {"LIANXIN_INTAKE_CLASSIFIER": "off", "LIANXIN_INTAKE_RATE_LIMIT": "0"}


def bench_overrides() -> dict[str, object]:
    """``BENCH_ENV`` as settings overrides, leaving out what the environment sets itself."""
    return {name.removeprefix("LIANXIN_").lower(): value for name, value in BENCH_ENV.items() if name not in os.environ}


@dataclass
class Result:
    name: str
    count: int
    seconds: float
    latencies: list[float]
    cpu_seconds: float = 0.0  # this process's CPU (clients and driver; in thread mode the server too)
    api_cpu_seconds: float | None = None  # the api processes' CPU (process mode)
    pg_cpu_seconds: float | None = None  # the local PostgreSQL's processes' CPU

    def per_call_ms(self, seconds: float | None) -> str:
        return "" if seconds is None or not self.count else f"{seconds / self.count * 1000:.2f}"

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


def measured(
    threads: int,
    seconds: float,
    call: Callable[[int, int], None],
    name: str,
    *,
    api_pids: tuple[int, ...] = (),
    postgres: bool = False,
) -> Result:
    """``run_threads`` with the CPU the api processes and PostgreSQL spent meanwhile."""
    api_before = process_cpu_seconds(api_pids) if api_pids else None
    pg_before = postgres_cpu_seconds() if postgres else None
    result = run_threads(threads, seconds, call, name)
    if api_before is not None:
        api_after = process_cpu_seconds(api_pids)
        result.api_cpu_seconds = None if api_after is None else api_after - api_before
    if pg_before is not None:
        pg_after = postgres_cpu_seconds()
        result.pg_cpu_seconds = None if pg_after is None else pg_after - pg_before
    return result


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


def echo_at(address: str, threads: int, seconds: float, *, api_pids: tuple[int, ...] = ()) -> Result:
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary("/bench.Echo/Echo")
        payload = b"x" * 400  # about the size of a SubmitCaseRequest
        return measured(threads, seconds, lambda w, n: call(payload, timeout=10), "grpcio echo", api_pids=api_pids)


def bench_echo(threads: int, seconds: float, workers: int) -> Result:
    server, address = echo_server(workers)
    try:
        return echo_at(address, threads, seconds)
    finally:
        server.stop(0)


def bench_raw_insert(url: str, threads: int, seconds: float, name: str) -> Result:
    """Single-row INSERT + COMMIT through SQLAlchemy, the service's own engine settings."""
    engine = make_engine(url, service="bench", pool_size=max(5, threads))
    insert, drop = raw_insert_loop(engine)
    try:
        return measured(threads, seconds, insert, name, postgres=engine.dialect.name == "postgresql")
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
    ).with_overrides(**bench_overrides())
    node = Node(settings, services=("intake",)).start()
    try:
        with grpc.insecure_channel(node.address) as channel:
            stub = intake_grpc.IntakeServiceStub(channel)
            stub.SubmitCase(submit_request(99, 0), timeout=10)  # warm up (locator, first connection)
            return measured(
                threads,
                seconds,
                lambda w, n: stub.SubmitCase(submit_request(w, n), timeout=30),
                "SubmitCase",
                postgres=database_url is not None,
            )
    finally:
        node.stop(grace=1.0)


def bench_submit_processes(backend: Backend, replicas: int, threads: int, seconds: float, workers: int) -> Result:
    """SubmitCase against ``replicas`` ``lianxin serve --service intake`` processes on one fresh database."""
    nodes = [
        NodeProcess(
            NODE,
            backend,
            f"submit{replicas}",  # a database of its own: every measurement starts from an empty table
            workers=workers,
            command=("serve", "--service", "intake"),
            services=(INTAKE_SERVICE,),
            replica=replica,
        )
        for replica in range(replicas)
    ]
    try:
        for node in nodes:  # one at a time: the first migrates the database
            node.start()
            node.wait_ready()
        target, options = client_target(nodes)
        with grpc.insecure_channel(target, options=options) as channel:
            stub = intake_grpc.IntakeServiceStub(channel)
            for i in range(5 * replicas):  # first connections, lazily built caches of every replica
                stub.SubmitCase(submit_request(98, i), timeout=30)
            pids = tuple(node.process.pid for node in nodes if node.process is not None)
            processes = "1 api process" if replicas == 1 else f"{replicas} api processes"
            return measured(
                threads,
                seconds,
                lambda w, n: stub.SubmitCase(submit_request(w, n), timeout=30),
                f"SubmitCase, {processes}",
                api_pids=pids,
                postgres=backend.kind == "postgres",
            )
    finally:
        stop_all(nodes)


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
        f"{result.name:<30} {result.rate:>9,.0f} {result.pct(0.5):>8.2f} {result.pct(0.99):>8.2f}"
        f" {result.per_call_ms(result.cpu_seconds):>7} {result.per_call_ms(result.api_cpu_seconds):>7}"
        f" {result.per_call_ms(result.pg_cpu_seconds):>7}"
        f" {result.rate / echo.rate:>8.3f} {result.rate / raw_n.rate:>9.3f} {result.rate / raw_1.rate:>9.3f}"
    )


def print_table(backend: str, submits: list[Result], echo: Result, raw_n: Result, raw_1: Result) -> None:
    print(f"\n== {backend} ==  (CPU ms per call: 'this' = this process, the clients; 'api' = the server processes)")
    print(
        f"{'measurement':<30} {'per s':>9} {'p50 ms':>8} {'p99 ms':>8} {'this':>7}"
        f" {'api':>7} {'PG':>7} {'÷ echo':>8} {'÷ raw ×N':>9} {'÷ raw ×1':>9}"
    )
    for result in (*submits, echo, raw_n, raw_1):
        print(line(result, echo, raw_n, raw_1))
    for submit in submits:
        print(
            f"{submit.name} on {backend}: {submit.rate / raw_n.rate:.0%} of the raw insert rate "
            f"with the same concurrency, {submit.rate / raw_1.rate:.0%} of a lone insert loop"
        )


def run_processes(kind: str, workdir: Path, args: argparse.Namespace) -> None:
    backend = Backend(kind, workdir / kind, admin_url=PG_ADMIN)
    try:
        backend.check()
    except Exception as exc:
        print(f"PostgreSQL not available ({exc.__class__.__name__}); skipping it")
        return
    echo_process = EchoProcess(args.workers).start()
    try:
        backend.prepare("raw", NODE)
        raw_url = backend.service_url("raw", NODE, "bench")
        echo = echo_at(echo_process.address, args.threads, args.seconds, api_pids=echo_process.pids)
        echo.name = "grpcio echo (own process)"
        raw_n = bench_raw_insert(raw_url, args.threads, args.seconds, f"raw INSERT+COMMIT ×{args.threads}")
        raw_1 = bench_raw_insert(raw_url, 1, args.seconds, "raw INSERT+COMMIT ×1")
        submits = [
            bench_submit_processes(backend, replicas, args.threads, args.seconds, args.workers)
            for replicas in args.replicas
        ]
    finally:
        echo_process.stop()
        backend.close()
    print_table(kind, submits, echo, raw_n, raw_1)


def run_in_process(kind: str, workdir: Path, args: argparse.Namespace) -> None:
    if kind == "sqlite":
        url_for_node: str | None = None
        raw_url = f"sqlite:///{workdir / 'raw.db'}"
        cleanup: Callable[[], None] = lambda: None  # noqa: E731
    else:
        made = fresh_pg_database()
        if made is None:
            return
        url_for_node, cleanup = made
        raw_url = url_for_node
    try:
        echo = bench_echo(args.threads, args.seconds, args.workers)
        raw_n = bench_raw_insert(raw_url, args.threads, args.seconds, f"raw INSERT+COMMIT ×{args.threads}")
        raw_1 = bench_raw_insert(raw_url, 1, args.seconds, "raw INSERT+COMMIT ×1")
        submit = bench_submit(url_for_node, workdir / kind, args.threads, args.seconds, args.workers)
    finally:
        cleanup()
    submit.name = "SubmitCase, node in this process"
    print_table(kind, [submit], echo, raw_n, raw_1)


def run_stored(args: argparse.Namespace) -> int:
    for kind in args.backends.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            backend = Backend(kind, Path(tmp) / kind, admin_url=PG_ADMIN)
            try:
                backend.check()
            except Exception as exc:
                print(f"PostgreSQL not available ({exc.__class__.__name__}); skipping it")
                continue
            try:
                result = stored_scenario(
                    backend, stored=args.stored, calls=args.stored_calls, workers=args.workers, progress=Progress()
                )
            finally:
                backend.close()
        print(f"\n== {backend.label}: {args.stored:,} stored cases (preload {result.details['preload_s']} s) ==")
        print(side_by_side(result))
        for note in result.notes:
            print(f"note: {note}")
    return 0


def replica_counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected whole numbers separated by commas, got {text!r}") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"every count must be at least 1, got {text!r}")
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=8.0, help="duration of each measurement")
    parser.add_argument("--threads", type=int, default=8, help="concurrent client threads")
    parser.add_argument("--workers", type=int, default=16, help="server thread pool")
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument(
        "--server",
        choices=("process", "thread"),
        default="process",
        help="process: lianxin serve --service intake in its own process(es); thread: a node in this process",
    )
    parser.add_argument(
        "--replicas", type=replica_counts, default=[1, 2], help="process mode: api process counts to measure (1,2)"
    )
    parser.add_argument("--quick", action="store_true", help="tiny run (smoke test)")
    parser.add_argument(
        "--stored", type=int, default=0, help="preload N cases: per-request p50 at 0 and at N side by side"
    )
    parser.add_argument("--stored-calls", type=int, default=200, help="with --stored: calls per RPC and size")
    args = parser.parse_args(argv)
    if args.stored > 0:
        return run_stored(args)
    if args.quick:
        args.seconds, args.threads = min(args.seconds, 0.3), 2
    return _run(args)


def _run(args: argparse.Namespace) -> int:
    print(
        f"clients {args.threads} threads, server pool {args.workers}, {args.seconds:g} s per measurement,"
        f" server {'in its own process' if args.server == 'process' else 'in this process'}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.backends.split(","):
            if args.server == "process":
                run_processes(kind, Path(tmp), args)
            else:
                run_in_process(kind, Path(tmp), args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
