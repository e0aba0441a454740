"""Start a topology (default: all 205 Sichuan nodes) in host mode under the national simulator and print:
time until every node is SERVING, memory (RSS, PSS), threads, idle CPU of the whole tree, then the
fate of cases submitted at a steady rate spread over every county: how many reached the province,
county → province propagation p50/p99, and whether the province holds exactly what the counties hold.

    python -m bench.scale                         # Sichuan, 5 minutes at 20 cases/s
    python -m bench.scale --minutes 0.5 --idle-window 10
    python -m bench.scale --topology tests/fixtures/topology_small.yaml --minutes 0.2 --rate 2
    python -m bench.scale --topology bench/scale/leshan.yaml --hosts 1 --minutes 1 --rate 1.2   # one host

The machine's load average is printed beside the figures: a shared machine inflates them.
"""

from __future__ import annotations

import argparse
import itertools
import os
import socket
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from lianxin.exchange.v1 import exchange_service_pb2 as exchange_pb2
from lianxin.exchange.v1 import exchange_service_pb2_grpc as exchange_grpc
from lianxin.intake.v1 import intake_service_pb2_grpc as intake_grpc

from bench.harness.measure import percentile
from bench.harness.workload import Submissions
from services.common.regions import RegionTree
from services.federation import Federation
from services.topology import load_topology

POLL_S = 0.05  # how often pending cases are looked for at the province: bounds the figure's resolution
WATCH_BATCH = 40  # pending cases looked for per pass
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Memory:
    rss_bytes: int = 0
    pss_bytes: int | None = 0
    threads: int = 0


def _proc_memory(pid: int) -> Memory:
    """RSS and thread count from /proc/PID/status; PSS from smaps_rollup when the kernel has it."""
    memory = Memory()
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                memory.rss_bytes = int(line.split()[1]) * 1024
            elif line.startswith("Threads:"):
                memory.threads = int(line.split()[1])
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as rollup:
            memory.pss_bytes = next(int(line.split()[1]) * 1024 for line in rollup if line.startswith("Pss:"))
    except (OSError, StopIteration):
        memory.pss_bytes = None
    return memory


def tree_memory(pids: Sequence[int]) -> Memory:
    total = Memory()
    for pid in pids:
        one = _proc_memory(pid)
        total.rss_bytes += one.rss_bytes
        total.threads += one.threads
        total.pss_bytes = None if total.pss_bytes is None or one.pss_bytes is None else total.pss_bytes + one.pss_bytes
    return total


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU seconds used so far by the processes (their threads included)."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of proc(5))
    return total / CLOCK_TICKS


def cpu_by_process(pids: Sequence[int]) -> list[float]:
    return [cpu_seconds([pid]) for pid in pids]


def by_minute(timeline: Sequence[tuple[float, float]]) -> str:
    """p50/p99 per minute of the load: a backlog that grows shows as a rising p50, jitter as a p99 alone."""
    minutes: dict[int, list[float]] = {}
    for offset, latency in timeline:
        minutes.setdefault(int(offset // 60), []).append(latency)
    return ", ".join(
        f"min {m + 1}: {percentile(v, 0.5) * 1000:.0f}/{percentile(v, 0.99) * 1000:.0f} ms"
        for m, v in sorted(minutes.items())
    )


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def _free_block(size: int, start: int = 30000) -> int:
    """A base port with ``size`` consecutive free ports."""
    base = start
    while base < 60000:
        for offset in range(size):
            with socket.socket() as probe:
                try:
                    probe.bind(("127.0.0.1", base + offset))
                except OSError:
                    base += offset + 1
                    break
        else:
            return base
    raise RuntimeError(f"no {size} consecutive free ports")


@dataclass
class LoadResult:
    submitted: int = 0
    submit_errors: int = 0
    reached: int = 0
    latencies: list[float] = field(default_factory=list)
    # (seconds from the load's start to the scheduled send, latency): whether a backlog grows over the run
    timeline: list[tuple[float, float]] = field(default_factory=list)
    per_county: dict[str, int] = field(default_factory=dict)


def _seen(stub: exchange_grpc.ExchangeServiceStub, case_id: str) -> bool:
    reply = stub.ListReplicas(exchange_pb2.ListReplicasRequest(case_id=case_id, max_items=0), timeout=10)
    return int(reply.count) > 0


def arrivals(address: str, counties: Sequence[str]) -> dict[str, float]:
    """Each county case's first arrival at the province (epoch seconds): the earliest ``appended_at``
    of its events on the province's up-log, read once after the load instead of polled during it."""
    first: dict[str, float] = {}
    with grpc.insecure_channel(address) as channel:
        stub = exchange_grpc.ExchangeServiceStub(channel)
        for code in counties:
            request = exchange_pb2.ListReplicasRequest(subtree_node=code, max_items=2**31 - 1)
            for entry in stub.ListReplicas(request, timeout=60).entries:
                at = entry.appended_at.seconds + entry.appended_at.nanos / 1e9
                if entry.case_id not in first or at < first[entry.case_id]:
                    first[entry.case_id] = at
    return first


def submit_load(
    federation: Federation,
    counties: Sequence[str],
    province: str,
    *,
    rate: float,
    seconds: float,
    wait_s: float,
    poll: bool = False,
) -> LoadResult:
    """``rate`` cases/s for ``seconds``, round robin over ``counties``, each timed from its scheduled
    send until the province holds it.

    By default the province is not asked anything during the load: once it holds every case, each
    case's arrival is read from its up-log (``appended_at``, the province's clock, the same machine's
    as the bench's). With ``poll`` the province is asked for the oldest pending cases every POLL_S
    during the load, as before: those calls land on the province's host while it is busiest, and
    the further behind it is the more it is asked."""
    result = LoadResult()
    channels = {code: grpc.insecure_channel(federation.node(code).address) for code in counties}
    stubs = {code: intake_grpc.IntakeServiceStub(channel) for code, channel in channels.items()}
    submissions = {code: Submissions(code) for code in counties}
    pending: dict[str, float] = {}
    sent_at: dict[str, float] = {}  # case id → scheduled send, epoch seconds
    began = time.perf_counter()
    lock = threading.Lock()
    sent_all = threading.Event()
    give_up = threading.Event()
    province_address = federation.node(province).address
    with grpc.insecure_channel(province_address) as province_channel:
        at_province = exchange_grpc.ExchangeServiceStub(province_channel)

        def watch() -> None:
            while not give_up.is_set() and not (sent_all.is_set() and not pending):
                with lock:
                    # The oldest first and at most WATCH_BATCH per pass: asking for every pending case
                    # each pass would load the province more the further behind it is.
                    waiting = sorted(pending.items(), key=lambda item: item[1])[:WATCH_BATCH]
                for case_id, scheduled in waiting:
                    try:
                        if _seen(at_province, case_id):
                            with lock:
                                pending.pop(case_id, None)
                                result.latencies.append(time.perf_counter() - scheduled)
                                result.timeline.append((scheduled - began, result.latencies[-1]))
                    except grpc.RpcError:
                        continue
                time.sleep(POLL_S)  # polling the province with a deadline, not ordering

        def submit(i: int, code: str, scheduled: float, scheduled_wall: float) -> None:
            try:
                reply = stubs[code].SubmitCase(submissions[code].request(0, i), timeout=30)
            except grpc.RpcError:
                with lock:
                    result.submit_errors += 1
                return
            with lock:
                pending[reply.case.case_id] = scheduled
                sent_at[reply.case.case_id] = scheduled_wall
                result.per_county[code] = result.per_county.get(code, 0) + 1

        watcher = threading.Thread(target=watch, name="scale-watch", daemon=True)
        if poll:
            watcher.start()
        total = int(rate * seconds)
        with ThreadPoolExecutor(max_workers=16, thread_name_prefix="scale-submit") as pool:
            start, start_wall = time.perf_counter(), time.time()
            for i, code in zip(range(total), itertools.cycle(counties), strict=False):
                scheduled = start + i / rate
                pause = scheduled - time.perf_counter()
                if pause > 0:
                    time.sleep(pause)  # pacing the offered load
                pool.submit(submit, i, code, scheduled, start_wall + i / rate)
        result.submitted = total
        sent_all.set()
        if poll:
            watcher.join(timeout=wait_s)
            give_up.set()
        else:
            deadline = time.monotonic() + wait_s
            _await_province(at_province, len(sent_at), wait_s)
            first = arrivals(province_address, counties)
            # A province stalled for a few seconds looks settled: look again while cases are missing.
            while len(first) < len(sent_at) and time.monotonic() < deadline:
                time.sleep(2.0)  # events still travelling; polled with a deadline
                first = arrivals(province_address, counties)
            for case_id, scheduled_wall in sent_at.items():
                if case_id in first:
                    latency = max(0.0, first[case_id] - scheduled_wall)
                    result.latencies.append(latency)
                    result.timeline.append((scheduled_wall - start_wall, latency))
    for channel in channels.values():
        channel.close()
    result.reached = len(result.latencies)
    return result


def _await_province(stub: exchange_grpc.ExchangeServiceStub, cases: int, wait_s: float) -> None:
    """Until the province's up-log holds at least one event per case and has stopped growing for
    three seconds (one count a second), or ``wait_s``: then every case has arrived."""
    deadline = time.monotonic() + wait_s
    last, steady = -1, 0
    while time.monotonic() < deadline:
        count = int(stub.ListReplicas(exchange_pb2.ListReplicasRequest(max_items=0), timeout=60).count)
        steady = steady + 1 if count == last else 0
        if count >= cases and steady >= 3:
            return
        last = count
        time.sleep(1.0)  # events still travelling; polled with a deadline


def held_counts(federation: Federation, counties: Sequence[str], province: str, wait_s: float) -> tuple[int, int]:
    """(events the counties hold of their own, events of the counties the province holds), once equal
    or after ``wait_s`` seconds: the province received exactly what the counties sent when they match."""

    def count(address: str, subtree: str) -> int:
        with grpc.insecure_channel(address) as channel:
            stub = exchange_grpc.ExchangeServiceStub(channel)
            request = exchange_pb2.ListReplicasRequest(subtree_node=subtree, max_items=0)
            return int(stub.ListReplicas(request, timeout=30).count)

    deadline = time.monotonic() + wait_s
    while True:
        own = sum(count(federation.node(code).address, code) for code in counties)
        province_address = federation.node(province).address
        received = sum(count(province_address, code) for code in counties)
        if own == received or time.monotonic() > deadline:
            return own, received
        time.sleep(1.0)  # events still travelling; polled with a deadline


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n\n")[0])
    parser.add_argument("--topology", default="sichuan", help="'sichuan' (205 nodes) or a YAML tree")
    parser.add_argument("--hosts", type=int, help="host processes (default: the topology's)")
    parser.add_argument("--minutes", type=float, default=5.0, help="minutes of load (default 5)")
    parser.add_argument("--rate", type=float, default=20.0, help="cases per second over all counties (default 20)")
    parser.add_argument("--idle-window", type=float, default=30.0, help="seconds idle CPU is measured over")
    parser.add_argument("--settle", type=float, default=15.0, help="seconds after SERVING before measuring idle")
    parser.add_argument("--ready-timeout", type=float, default=600.0)
    parser.add_argument("--data-dir", help="where the nodes' databases go (default: a temporary folder)")
    parser.add_argument(
        "--poll",
        action="store_true",
        help="ask the province for pending cases every 50 ms during the load (as before) instead of reading "
        "each case's arrival from its up-log afterwards",
    )
    args = parser.parse_args(argv)

    regions = RegionTree.load()
    placement = load_topology(args.topology, regions, hosts=args.hosts)
    province = placement.nodes[0][0]
    counties = [code for code, _ in placement.nodes if regions.get(code).tier.value == "county"]
    with tempfile.TemporaryDirectory(prefix="lianxin-scale-") as scratch:
        data_dir = Path(args.data_dir or scratch)
        base = _free_block(len(placement.nodes) + placement.hosts + 2)
        federation = Federation(
            placement=placement,
            data_dir=data_dir,
            base_port=base,
            metrics_base_port=base + len(placement.nodes) + 1,
            extra_env={"LIANXIN_LOG_LEVEL": "WARNING"},
        )
        print(
            f"{len(placement.nodes)} nodes ({len(counties)} counties) in {placement.hosts} host processes "
            f"+ the national simulator; load average {load_average()}",
            flush=True,
        )
        began = time.monotonic()
        try:
            federation.start(ready_timeout_s=args.ready_timeout)
            serving_s = time.monotonic() - began
            pids = [h.process.pid for h in federation.hosts if h.process is not None]
            national = [federation.national.pid] if federation.national is not None else []
            print(f"every node SERVING after {serving_s:.1f} s (goal 120 s); load average {load_average()}", flush=True)
            time.sleep(args.settle)  # links connect and first passes finish before idle is measured
            memory = tree_memory(pids + national)
            pss = f"{memory.pss_bytes / 2**30:.2f} GiB" if memory.pss_bytes is not None else "n/a"
            print(
                f"memory: RSS {memory.rss_bytes / 2**30:.2f} GiB (goal 6 GB), PSS {pss}, "
                f"{memory.threads} threads in {len(pids + national)} processes",
                flush=True,
            )
            before = cpu_seconds(pids + national)
            time.sleep(args.idle_window)  # the idle window itself
            idle = (cpu_seconds(pids + national) - before) / args.idle_window
            print(
                f"idle CPU of the tree: {idle:.3f} cores over {args.idle_window:g} s "
                f"({idle / len(placement.nodes) * 1000:.2f} ms/s per node; goal 0.3 core); "
                f"load average {load_average()}",
                flush=True,
            )
            seconds = args.minutes * 60
            print(f"load: {args.rate:g} cases/s over {len(counties)} counties for {seconds:g} s ...", flush=True)
            before, loaded = cpu_seconds(pids + national), time.monotonic()
            per_process_before = cpu_by_process(pids + national)
            load = submit_load(
                federation, counties, province, rate=args.rate, seconds=seconds, wait_s=120, poll=args.poll
            )
            took = max(time.monotonic() - loaded, 1e-9)
            per_process = [
                (after - first) / took
                for after, first in zip(cpu_by_process(pids + national), per_process_before, strict=True)
            ]
            names = [f"host {i + 1}" for i in range(len(pids))] + ["national"] * len(national)
            print(
                "cores per process under load: "
                + ", ".join(f"{n} {c:.2f}" for n, c in zip(names, per_process, strict=True)),
                flush=True,
            )
            print(f"county → province p50/p99 by minute of sending: {by_minute(load.timeline)}", flush=True)
            busy = (cpu_seconds(pids + national) - before) / took
            accepted = load.submitted - load.submit_errors
            # The CPU the cases cost beyond the tree's idle cost, per accepted case (the watcher's
            # ListReplicas at the province included: it is part of what the tree served).
            per_case_ms = (busy - idle) * took / max(accepted, 1) * 1000
            how = (
                f"province polled every {POLL_S * 1000:.0f} ms"
                if args.poll
                else "arrival read from the province's up-log after the load"
            )
            p50 = percentile(load.latencies, 0.50) * 1000 if load.latencies else float("nan")
            p99 = percentile(load.latencies, 0.99) * 1000 if load.latencies else float("nan")
            print(
                f"reached the province: {load.reached} of {load.submitted - load.submit_errors} accepted cases "
                f"({load.submit_errors} submissions refused); county → province p50 {p50:.0f} ms, "
                f"p99 {p99:.0f} ms (goal 1 s; {how})",
                flush=True,
            )
            own, received = held_counts(federation, counties, province, wait_s=120)
            verdict = "equal" if own == received else "NOT equal"
            print(
                f"events: the counties hold {own} of their own, the province holds {received} of theirs: {verdict}; "
                f"tree CPU under load {busy:.2f} cores, {per_case_ms:.0f} ms per case above idle; "
                f"load average {load_average()}",
                flush=True,
            )
            return 0 if load.reached == load.submitted - load.submit_errors and own == received else 1
        finally:
            federation.stop()


if __name__ == "__main__":
    raise SystemExit(main())
