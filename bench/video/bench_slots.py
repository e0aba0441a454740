"""Video benchmark: earliest common slot for 6 participants over 90 days, and booking throughput
under contention on a real gRPC server (SQLite), with a bare grpcio call rate as the baseline.

    .venv/bin/python -m bench.video.bench_slots            # full run (~30 s)
    .venv/bin/python -m bench.video.bench_slots --quick    # tiny sizes (used by the smoke test)
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from datetime import time as dtime
from pathlib import Path

import grpc
from lianxin.video.v1 import video_service_pb2 as pb
from lianxin.video.v1 import video_service_pb2_grpc as video_grpc

from services.common.calendar import ChineseWorkingCalendar
from services.common.settings import Settings
from services.common.timeutil import CHINA
from services.node import Node
from services.video import slots
from services.video.domain import Schedule, WeeklyPattern

START = date(2026, 7, 1)  # a window inside the published calendar (Mid-Autumn/National Day inside)
HORIZON_DAYS = 90


@dataclass
class Row:
    name: str
    value: str
    note: str = ""


def _busy_calendar(rng: random.Random, days: int, density: float) -> list[slots.Interval]:
    """Meetings of 30-120 minutes in working hours on ``density`` of the half-hours, like a real diary."""
    out: list[slots.Interval] = []
    for d in range(days):
        day = START + timedelta(days=d)
        t = datetime(day.year, day.month, day.day, 8, 30, tzinfo=CHINA)
        end = t.replace(hour=18)
        while t < end:
            length = timedelta(minutes=rng.choice((30, 60, 90, 120)))
            if rng.random() < density:
                out.append((t, t + length))
            t += length
    return out


def bench_slot_search(runs: int) -> tuple[list[float], datetime | None]:
    rng = random.Random(7)
    calendar = ChineseWorkingCalendar()
    schedule = Schedule(
        "s",
        "L",
        "511102",
        (
            WeeklyPattern(1, dtime(9), dtime(12)),
            WeeklyPattern(3, dtime(9), dtime(12)),
            WeeklyPattern(5, dtime(14), dtime(17)),
        ),
        (),
        30,
        10,
        6,
        (),
    )
    # Leader + 5 others (leader's room, citizen's county terminal, 3 joint-reception units), each
    # busy about 60 % of working hours: the common slot is weeks away, so the sweep does real work.
    diaries = [_busy_calendar(rng, HORIZON_DAYS, 0.6) for _ in range(6)]
    timings: list[float] = []
    found: datetime | None = None
    not_before = datetime(START.year, START.month, START.day, tzinfo=CHINA)
    for _ in range(runs):
        t0 = time.perf_counter()
        sess = slots.sessions(schedule, START, START + timedelta(days=HORIZON_DAYS), calendar)
        busy = slots.merge(iv for diary in diaries for iv in diary)
        hit = slots.free_slots(
            slots.candidates(schedule, sess),
            busy,
            buffer=timedelta(minutes=10),
            session_counts={},
            not_before=not_before,
            not_after=not_before + timedelta(days=HORIZON_DAYS),
            limit=1,
        )
        timings.append((time.perf_counter() - t0) * 1000)
        found = hit[0][0].starts_at if hit else None
    return timings, found


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _hammer(threads: int, total: int, call: Callable[[int], bool]) -> tuple[int, int, float]:
    counter = iter(range(total))
    lock = threading.Lock()
    ok = failed = 0

    def worker() -> None:
        nonlocal ok, failed
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            result = call(i)
            with lock:
                if result:
                    ok += 1
                else:
                    failed += 1

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    t0 = time.perf_counter()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return ok, failed, time.perf_counter() - t0


def bench_booking(threads: int, total: int) -> tuple[int, int, float]:
    data = Path(tempfile.mkdtemp(prefix="video-bench-"))
    clock_now = datetime(START.year, START.month, START.day, tzinfo=CHINA)
    node = Node(Settings(node="511102", data_dir=data, metrics_port=None), services=["video"], clock=lambda: clock_now)
    node.start()
    try:
        with grpc.insecure_channel(node.address) as ch:
            stub = video_grpc.VideoServiceStub(ch)
            stub.RegisterRoom(pb.RegisterRoomRequest(room=pb.Room(room_id="511102-R1", node="511102")))
            stub.PublishSchedule(
                pb.PublishScheduleRequest(
                    schedule=pb.Schedule(
                        leader_id="L",
                        node="511102",
                        weekly_patterns=[
                            pb.WeeklyPattern(weekday=w, start_time="08:00", end_time="18:00") for w in range(1, 6)
                        ],
                        slot_minutes=10,
                        buffer_minutes=0,
                        max_per_session=60,
                        room_ids=["511102-R1"],
                    )
                )
            )

            def book(i: int) -> bool:
                # Every clerk asks for the earliest slot at once: they all race for the same one.
                try:
                    stub.BookVisit(
                        pb.BookVisitRequest(case_id=f"511102-20260701-{i:06d}", actor="clerk", leader_id="L"),
                        timeout=30,
                    )
                    return True
                except grpc.RpcError as error:
                    if error.code() != grpc.StatusCode.ABORTED:
                        raise
                    return False

            return _hammer(threads, total, book)
    finally:
        node.stop(grace=1.0)


def bench_baseline(threads: int, total: int) -> float:
    """A bare grpcio server (16 workers) answering an echo: the ceiling for any unary RPC here."""

    def echo(request: bytes, context: object) -> bytes:
        return request

    handler = grpc.method_handlers_generic_handler("bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)})
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            call = ch.unary_unary("/bench.Echo/Echo")
            ok, _, elapsed = _hammer(threads, total, lambda i: bool(call(b"x", timeout=10) == b"x"))
            return ok / elapsed
    finally:
        server.stop(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for the smoke test")
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args(argv)
    runs, total = (5, 24) if args.quick else (300, 1200)

    timings, found = bench_slot_search(runs)
    ok, conflicts, elapsed = bench_booking(args.threads, total)
    base = bench_baseline(args.threads, total * 2)
    rate = ok / elapsed
    rows = [
        Row("slot search: 6 participants, 90 days, median", f"{statistics.median(timings):.2f} ms", "goal < 10 ms"),
        Row(
            "slot search: p99",
            f"{_pct(timings, 0.99):.2f} ms",
            f"{runs} runs; earliest = {found:%Y-%m-%d %H:%M}" if found else "none",
        ),
        Row(
            f"booking, {args.threads} threads racing for the earliest slot",
            f"{rate:,.0f} bookings/s",
            f"{ok} booked, {conflicts} ABORTED",
        ),
        Row("baseline: bare grpcio echo, same threads", f"{base:,.0f} calls/s", ""),
        Row("ratio booking / baseline", f"{rate / base:.3f}", "each booking = 1 RPC + 1 SQLite write transaction"),
    ]
    width = max(len(r.name) for r in rows)
    print(f"{'figure':<{width}}  {'value':>18}  note")
    print("-" * (width + 40))
    for r in rows:
        print(f"{r.name:<{width}}  {r.value:>18}  {r.note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
