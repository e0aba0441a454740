"""The node's share of a console page, in two parts: its handlers' own work, and gRPC's per call.

``bodies`` starts the bench's node (county 511102 on a ``bench_pages`` preload) in this process and
calls the case page's three read handlers (intake.GetCase, routing.ListWorkOrders with the case's
supervisions, video.GetCaseVideo) or the inbox's ListInbox directly, without gRPC, then the same
requests through a sync gRPC channel to the node's server: CPU per call, best of three rounds.

``echo`` measures grpcio's own cost per unary call with nothing of Lianxin in it: a server process
(grpcio's sync server with a pool of four, or grpc.aio with the handler on its event loop) answers
a 300-byte echo to a grpc.aio client process; the server's CPU and context switches per call from
/proc. Whether an asyncio server would cut the node's cost per call is answered here first.

    .venv/bin/python -m bench.web.node_calls bodies --workdir /tmp/web100k --page case
    .venv/bin/python -m bench.web.node_calls echo --server sync --clients 50
    .venv/bin/python -m bench.web.node_calls echo --server aio --clients 50
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent import futures
from pathlib import Path
from typing import Any

NODE = "511102"
ECHO = "/bench.Echo/Call"


def _same(payload: bytes) -> bytes:
    return payload


def _best_ms(call: Callable[[], object], count: int) -> float:
    best = float("inf")
    for _ in range(3):
        began = time.process_time()
        for _ in range(count):
            call()
        best = min(best, (time.process_time() - began) / count * 1000)
    return best


def _page_requests(page: str, case_id: str, servicers: dict[str, Any]) -> list[tuple[str, Callable[..., Any], Any]]:
    from lianxin.common.v1 import common_pb2
    from lianxin.intake.v1 import intake_service_pb2 as intake_pb2
    from lianxin.routing.v1 import routing_service_pb2 as routing_pb2
    from lianxin.video.v1 import video_service_pb2 as video_pb2

    from services.web.console.common import PAGE_SIZE
    from services.web.console.inbox import OPEN_STATES

    routing = servicers["routing"]
    if page == "inbox":
        inbox = routing_pb2.ListInboxRequest(page=common_pb2.PageRequest(page_size=PAGE_SIZE))
        inbox.states.extend(common_pb2.CaseState.Value(f"CASE_STATE_{s}") for s in OPEN_STATES)
        return [("/lianxin.routing.v1.RoutingService/ListInbox", routing.ListInbox, inbox)]
    orders = routing_pb2.ListWorkOrdersRequest(
        case_id=case_id, page=common_pb2.PageRequest(page_size=50), with_supervisions=True
    )
    return [
        (
            "/lianxin.intake.v1.IntakeService/GetCase",
            servicers["intake"].GetCase,
            intake_pb2.GetCaseRequest(case_id=case_id),
        ),
        ("/lianxin.routing.v1.RoutingService/ListWorkOrders", routing.ListWorkOrders, orders),
        (
            "/lianxin.video.v1.VideoService/GetCaseVideo",
            servicers["video"].GetCaseVideo,
            video_pb2.GetCaseVideoRequest(case_id=case_id),
        ),
    ]


def bodies(workdir: Path, page: str, count: int) -> str:
    import grpc

    from services.common.settings import Settings
    from services.node import Node

    kept = json.loads((workdir / "bench-web-preload.json").read_text("utf-8"))
    os.environ.update({"LIANXIN_DATA_KEYS": kept["keys"], "LIANXIN_INTAKE_CLASSIFIER": "off"})
    node = Node(Settings(node=NODE, data_dir=workdir, grpc_port=0, metrics_port=None)).start()
    try:
        servicers = {b.full_name.split(".")[1]: b.servicer for p in node.parts.values() for b in p.servicers}
        calls = _page_requests(page, kept["case_id"], servicers)
        channel = grpc.insecure_channel(node.address)
        lines: list[str] = []
        direct = through = 0.0
        for method, handler, request in calls:
            stub = channel.unary_unary(
                method, request_serializer=lambda m: m.SerializeToString(), response_deserializer=_same
            )
            for _ in range(20):  # warm: statement caches, connections, the channel
                handler(request, None)
                stub(request)
            alone = _best_ms(functools.partial(handler, request, None), count)
            called = _best_ms(functools.partial(stub, request), count)
            direct, through = direct + alone, through + called
            lines.append(f"{method.rsplit('/', 1)[1]:16s} handler {alone:.3f} ms, through gRPC {called:.3f} ms")
        lines.append(f"{page}: handlers {direct:.3f} ms, through gRPC (client + server) {through:.3f} ms")
        if len(calls) > 1:
            from lianxin.common.v1 import reads_pb2, reads_pb2_grpc

            parts = [reads_pb2.ReadPart(method=m, request=r.SerializeToString()) for m, _, r in calls]
            read = functools.partial(
                reads_pb2_grpc.ReadsServiceStub(channel).ReadTogether, reads_pb2.ReadTogetherRequest(parts=parts)
            )
            together = _best_ms(read, count)
            lines.append(f"{page}: the same in one ReadTogether call (client + server) {together:.3f} ms")
        channel.close()
        lines.append(f"load {os.getloadavg()[0]:.1f}")
        return "\n".join(lines)
    finally:
        node.stop(1.0)


def _serve_echo(port: int, kind: str) -> None:
    import grpc

    if kind == "sync":
        queries = futures.ThreadPoolExecutor(max_workers=4)

        def behaviour(request: bytes, _context: object) -> bytes:
            return request

        behaviour.experimental_thread_pool = queries  # type: ignore[attr-defined]  # as QueryThreadsInterceptor
        handler = grpc.method_handlers_generic_handler(
            "bench.Echo", {"Call": grpc.unary_unary_rpc_method_handler(behaviour, _same, _same)}
        )
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), handlers=[handler])
        server.add_insecure_port(f"127.0.0.1:{port}")
        server.start()
        server.wait_for_termination()
        return

    async def serve() -> None:
        async def on_loop(request: bytes, _context: object) -> bytes:
            return request

        handler = grpc.method_handlers_generic_handler(
            "bench.Echo", {"Call": grpc.unary_unary_rpc_method_handler(on_loop, _same, _same)}
        )
        server = grpc.aio.server()
        server.add_generic_rpc_handlers([handler])
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    asyncio.run(serve())


def _ask_echo(port: int, clients: int, calls: int) -> None:
    import grpc

    async def ask() -> None:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        call = channel.unary_unary(ECHO, request_serializer=_same, response_deserializer=_same)
        await call(b"x", wait_for_ready=True)  # the server may still be starting

        async def one() -> None:
            for _ in range(calls // clients):
                await call(b"x" * 300)

        await asyncio.gather(*(one() for _ in range(clients)))

    asyncio.run(ask())


def _cpu_and_switches(pid: int) -> tuple[float, int]:
    tick = os.sysconf("SC_CLK_TCK")
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    switches = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            switches += sum(
                int(line.split()[1]) for line in (task / "status").read_text().splitlines() if "ctxt_switches" in line
            )
    return (int(fields[11]) + int(fields[12])) / tick, switches


def echo(kind: str, clients: int, calls: int) -> str:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    me = [sys.executable, "-m", "bench.web.node_calls"]
    server = subprocess.Popen([*me, "_serve", "--port", str(port), "--server", kind])
    try:
        subprocess.run([*me, "_ask", "--port", str(port), "--clients", "1", "--calls", "20"], check=True)  # up, warm
        cpu, switches = _cpu_and_switches(server.pid)
        began = time.perf_counter()
        subprocess.run([*me, "_ask", "--port", str(port), "--clients", str(clients), "--calls", str(calls)], check=True)
        wall = time.perf_counter() - began
        cpu_after, switches_after = _cpu_and_switches(server.pid)
    finally:
        server.kill()
        server.wait()
    return (
        f"{kind} server, {clients} clients: {(cpu_after - cpu) / calls * 1000:.3f} ms CPU and "
        f"{(switches_after - switches) / calls:.1f} switches per call, {calls / wall:.0f} calls/s, "
        f"load {os.getloadavg()[0]:.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=["bodies", "echo", "_serve", "_ask"])
    parser.add_argument("--workdir", help="bodies: a --workdir that bench_pages preloaded (a copy: the node writes)")
    parser.add_argument("--page", default="case", choices=["case", "inbox"])
    parser.add_argument("--count", type=int, default=400, help="bodies: calls per round")
    parser.add_argument("--server", default="sync", choices=["sync", "aio"])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--calls", type=int, default=8000)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    if args.what == "bodies":
        print(bodies(Path(args.workdir), args.page, args.count))
    elif args.what == "echo":
        print(echo(args.server, args.clients, args.calls))
    elif args.what == "_serve":
        _serve_echo(args.port, args.server)
    else:
        _ask_echo(args.port, args.clients, args.calls)


if __name__ == "__main__":
    main()
