"""Where an idle node's CPU goes: two nodes (county → city) in this process, links up, nothing to do.

    .venv/bin/python -m bench.idle_profile --seconds 20
    .venv/bin/python -m bench.idle_profile --seconds 20 --topology bench/scale/leshan.yaml

Prints the process's CPU per second, each thread's share (from /proc/self/task, named by Python's
threads where they are Python's, by the kernel's name otherwise: gRPC's own threads) and the CPU of
each timer run and relay pass, per node. ``--topology``: every node of the YAML tree in one host
(services/host.py) in this process, the root linked to the national simulator (in this process too,
its threads counted), as one host of ``lianxin up --topology`` runs them.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc
from lianxin.intake.v1 import intake_service_pb2_grpc as intake_grpc

from bench.cpu import process_cpu_seconds
from bench.harness.workload import Submissions
from services.common import bus
from services.common.regions import RegionTree
from services.common.service import Timer
from services.common.settings import Settings
from services.common.waiting import LinkDriver
from services.exchange import national_sim
from services.host import Host, members_from_codes
from services.node import Node
from services.topology import load_topology

_TICKS = os.sysconf("SC_CLK_TCK")
T = TypeVar("T")


def thread_cpu() -> dict[str, float]:
    """CPU seconds of each thread of this process, by name (Python's where known, else the kernel's)."""
    python_names = {t.native_id: t.name for t in threading.enumerate()}
    out: dict[str, float] = collections.defaultdict(float)
    for task in Path("/proc/self/task").iterdir():
        try:
            stat = (task / "stat").read_text()
            comm = (task / "comm").read_text().strip()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        name = python_names.get(int(task.name), f"[{comm}]")
        # Threads of one kind share a name: pools and threading number theirs, keep the kind.
        out[re.sub(r"[-_]?[0-9]+", "", name)] += (int(fields[11]) + int(fields[12])) / _TICKS
    return dict(out)


class Counted:
    """Thread CPU and runs of each timer and relay pass, measured where they run."""

    def __init__(self) -> None:
        self.cpu: dict[str, float] = collections.defaultdict(float)
        self.runs: dict[str, int] = collections.defaultdict(int)
        self._lock = threading.Lock()

    def wrap(self, name: str, run: Callable[[], T]) -> Callable[[], T]:
        def counted() -> T:
            start = time.thread_time()
            try:
                return run()
            finally:
                with self._lock:
                    self.cpu[name] += time.thread_time() - start
                    self.runs[name] += 1

        return counted


def count_timers(counted: Counted) -> None:
    """Every timer of the nodes started after this, counted by name in ``counted``."""
    original_timer_loop = bus.TimerLoop.__init__

    def timer_loop_init(self: bus.TimerLoop, timers: list[Timer], **kw: Any) -> None:
        wrapped = [dataclasses.replace(t, run=counted.wrap(t.name, t.run)) for t in timers]
        original_timer_loop(self, wrapped, **kw)

    bus.TimerLoop.__init__ = timer_loop_init  # type: ignore[method-assign,assignment]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--settle", type=float, default=3.0)
    parser.add_argument("--topology", help="a YAML tree (or 'sichuan') hosted in this process instead of two nodes")
    options = parser.parse_args()
    counted = Counted()
    count_timers(counted)
    guarded = LinkDriver._guarded

    def link_work(work: Callable[[], None]) -> None:  # each step of the links, by the method it runs
        name = work.__qualname__.replace(".<locals>.<lambda>", "")
        counted.wrap(f"link {name}", lambda: guarded(work))()

    LinkDriver._guarded = staticmethod(link_work)  # type: ignore[method-assign,assignment]
    os.environ.setdefault("LIANXIN_INTAKE_CLASSIFIER", "off")
    with tempfile.TemporaryDirectory() as data, contextlib.ExitStack() as running:
        base = Settings(data_dir=Path(data), log_json=False, log_level="WARNING")
        nodes = start_topology(base, options.topology, running) if options.topology else _start_pair(base, running)
        for node in nodes:
            assert node.relay_loop is not None
            for relay in node.relay_loop._relays:
                relay.run_once = counted.wrap(f"relay {relay.service}", relay.run_once)  # type: ignore[method-assign]
        county = next(n for n in reversed(nodes) if n.regions.get(n.code).tier.value == "county")
        with grpc.insecure_channel(county.address) as channel:
            intake_grpc.IntakeServiceStub(channel).SubmitCase(Submissions(county.code).request(-1, 0), timeout=30)
        time.sleep(options.settle)  # the case's events travel; then nothing happens
        counted.cpu.clear()
        counted.runs.clear()
        before, threads_before = process_cpu_seconds([os.getpid()]) or 0.0, thread_cpu()
        time.sleep(options.seconds)  # the idle window measured
        after, threads_after = process_cpu_seconds([os.getpid()]) or 0.0, thread_cpu()
    s, n = options.seconds, len(nodes)
    total = (after - before) / s * 1000
    print(f"process: {total:.2f} ms/s for {n} nodes ({total / n:.2f} per node)")
    print("threads (ms/s per node):")
    deltas = {k: v - threads_before.get(k, 0.0) for k, v in threads_after.items()}
    for name, cpu in sorted(deltas.items(), key=lambda kv: -kv[1]):
        if cpu > 0:
            print(f"  {name:40s} {cpu / s * 1000 / n:7.3f}")
    print("timers, relay passes and link steps (ms/s per node, runs):")
    for name, cpu in sorted(counted.cpu.items(), key=lambda kv: -kv[1]):
        print(f"  {name:40s} {cpu / s * 1000 / n:7.3f}  {counted.runs[name]}")


def _start_pair(base: Settings, running: contextlib.ExitStack) -> list[Node]:
    """A city and one of its counties, each a node of its own in this process."""
    city = Node(base.with_overrides(node="511100")).start()
    running.callback(city.stop, 1.0)
    county = Node(base.with_overrides(node="511102", parent=city.address)).start()
    running.callback(county.stop, 1.0)
    return [city, county]


def start_topology(base: Settings, spec: str, running: contextlib.ExitStack) -> list[Node]:
    """Every node of the tree in one host, its root linked to the national simulator."""
    regions = RegionTree.load()
    topology = load_topology(spec, regions, hosts=1)
    server, _ = national_sim.serve()
    running.callback(server.stop, 1.0)
    members = members_from_codes([code for code, _ in topology.nodes], regions, parent=None, national=server.address)
    host = Host(base, members, regions=regions)
    running.callback(host.stop, 1.0)
    host.start()
    return list(host.nodes.values())


if __name__ == "__main__":
    main()
