"""Where a console page's CPU goes: the node and the gateway in this one process, one client, sampled.

The node (bench/web/bench_pages.py's county 511102, on the preload kept in ``--workdir``) and its
gateway (uvicorn in a thread) run here; one client asks a page ``--requests`` times in a row, so at
any moment one thread runs the page's Python. The process's CPU time over the requests gives the
CPU per page (node + gateway + client), and py-spy (``pip install py-spy`` into the venv; it
samples only busy threads) says which functions it was spent in.

    .venv/bin/python -m bench.web.bench_pages --stored 100000 --workdir /work/benchdata/web100k --only static
    .venv/bin/python -m bench.web.profile_pages --workdir /work/benchdata/web100k --page inbox --requests 300
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

NODE = "511102"


def _client_cookie(gateway: object) -> str:
    """A clerk's signed session cookie, minted as the sign-in form would (no scrypt in the profile)."""
    from services.common.security import issue_token, verify_token
    from services.web.app import Gateway
    from services.web.session import Operator

    assert isinstance(gateway, Gateway)
    key = gateway.token_key or gateway.signer.key
    token = issue_token(key, subject=f"clerk-{NODE}", node=NODE, unit="", roles=["clerk", "handler"], ttl_s=3600)
    operator = Operator(token=token, principal=verify_token(key, token))
    value = gateway.signer.dumps("session", operator.to_cookie(), ttl_s=3600)
    return f"{gateway.cookie('session')}={value}"


_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^:()]*)(?::\d+)?\)$")


def _where(frame: str) -> str:
    found = _FRAME.match(frame)
    if found is None:
        return frame
    file = found["file"].rsplit("site-packages/", 1)[-1].rsplit("/webspeed/", 1)[-1].rsplit("/python3.11/", 1)[-1]
    return f"{found['function']} ({file})"


def _report(raw: str, *, limit: int) -> str:
    """Self and inclusive shares of py-spy's collapsed stacks (``a;b;c count`` lines, busy threads only)."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_where(f) for f in stack.split(";")]
        own[frames[-1]] += n
        for where in set(frames):
            inclusive[where] += n
    lines = [f"{total} samples of busy threads"]
    for title, counter in (("self", own), ("inclusive", inclusive)):
        lines.append(f"-- {title}")
        lines += [f"{n / max(total, 1) * 100:6.1f}%  {where}" for where, n in counter.most_common(limit)]
    return "\n".join(lines)


def _threads_cpu() -> dict[str, float]:
    """CPU seconds of this process's live Python threads, by name with numbers folded (the gateway's
    event loop "uvicorn", its page threads, the node's gRPC pool and polling threads...)."""
    out: dict[str, float] = {}
    for thread in threading.enumerate():
        try:
            name = re.sub(r"\d+", "N", thread.name)
            out[name] = out.get(name, 0.0) + time.clock_gettime(time.pthread_getcpuclockid(thread.ident or 0))
        except (OSError, TypeError):
            continue  # ended meanwhile
    return out


def _by_thread(before: dict[str, float], after: dict[str, float], cpu: float, n: int) -> str:
    """CPU per page by thread group; the rest: threads that ended meanwhile (gRPC's channel spin
    threads) and gRPC's own C threads."""
    rows = {name: after[name] - before.get(name, 0.0) for name in after}
    rows["(threads ended meanwhile, gRPC's C threads)"] = cpu - sum(rows.values())
    lines = ["-- CPU per page by thread"]
    lines += [f"{ms * 1000 / n:8.3f} ms  {name}" for name, ms in sorted(rows.items(), key=lambda r: -r[1]) if ms > 0]
    return "\n".join(lines)


_CLIENT = """
import http.client, sys, threading
port, path, cookie, n, clients = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
def ask(count):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    for _ in range(count):
        conn.request("GET", path, headers={"Cookie": cookie})
        reply = conn.getresponse()
        reply.read()
        assert reply.status == 200, f"{path} answered {reply.status}"
threads = [threading.Thread(target=ask, args=(n // clients + (i < n % clients),)) for i in range(clients)]
for t in threads: t.start()
for t in threads: t.join()
"""


def _ask(port: int, path: str, cookie: str, requests: int, clients: int = 1) -> None:
    """``requests`` pages from a client process (its HTTP parsing is not the page's CPU), one after
    another, or ``clients`` threads each asking again as soon as answered (bench_pages' closed loop)."""
    subprocess.run([sys.executable, "-c", _CLIENT, str(port), path, cookie, str(requests), str(clients)], check=True)


def profile(
    *, workdir: Path, path: str, requests: int, rate: int, limit: int, gil: bool = True, clients: int = 1
) -> str:
    import uvicorn
    from sqlalchemy import event
    from sqlalchemy.pool import Pool

    from services.common.settings import Settings
    from services.node import Node
    from services.web.app import build_app, build_gateway
    from services.web.config import WebSettings
    from services.web.timing import TimedHttpToolsProtocol

    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    kept = json.loads((workdir / "bench-web-preload.json").read_text("utf-8"))
    os.environ.update({"LIANXIN_DATA_KEYS": kept["keys"], "LIANXIN_INTAKE_CLASSIFIER": "off"})
    path = path.replace("{case_id}", kept.get("case_id", ""))
    node = Node(Settings(node=NODE, data_dir=workdir, grpc_port=0, metrics_port=None)).start()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    gateway = build_gateway(node.settings, WebSettings(grpc=node.address, port=port))
    config = uvicorn.Config(build_app(gateway), log_level="warning", access_log=False, http=TimedHttpToolsProtocol)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="uvicorn", daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.01)
        cookie = _client_cookie(gateway)
        _ask(port, path, cookie, 20)  # warm: connections, statement caches, the units' and calendar's caches
        raw = workdir / "profile.raw"
        raw.write_text("", "utf-8")
        # --gil: only the thread holding the GIL (what the page waits on); without: every busy thread.
        record = [
            "record",
            *(["--gil"] if gil else []),
            "--pid",
            str(os.getpid()),
            "--rate",
            str(rate),
            "--format",
            "raw",
        ]
        # --rate 0: no profiler (it stops the process for every sample, which costs CPU of its own).
        spy = subprocess.Popen([py_spy, *record, "--output", str(raw)], stderr=subprocess.DEVNULL) if rate else None
        time.sleep(1.0 if spy else 0.0)  # py-spy attaches
        # Database connections opened during the run: a pool smaller than the calls served at once
        # opens (and closes) one per call beyond it, each with a cold page cache.
        opened = [0]
        event.listen(Pool, "connect", lambda *_: opened.__setitem__(0, opened[0] + 1))
        threads, cpu, wall = _threads_cpu(), time.process_time(), time.perf_counter()
        _ask(port, path, cookie, requests, clients)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        by_thread = _by_thread(threads, _threads_cpu(), cpu, requests)
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(60)
        head = (
            f"{path}: {requests} requests, {cpu / requests * 1000:.2f} ms CPU and {wall / requests * 1000:.2f} ms "
            f"wall per page (node + gateway; the client is another process, {clients} at once), "
            f"load {os.getloadavg()[0]:.1f}; {opened[0]} database connections opened"
        )
        return head + "\n" + by_thread + "\n" + _report(raw.read_text("utf-8"), limit=limit)
    finally:
        server.should_exit = True
        thread.join(10)
        node.stop(1.0)


PAGES = {
    "static": "/bench/static",
    "inbox": "/console",
    "overdue": "/console?overdue=1",
    "case": "/console/case/{case_id}",
    "board": "/board",
    "dashboard": "/console/dashboard",
}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True, help="a --workdir that bench_pages preloaded")
    parser.add_argument("--page", default="inbox", help=f"one of {', '.join(PAGES)} or a path")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--rate", type=int, default=400, help="py-spy samples per second")
    parser.add_argument("--limit", type=int, default=45, help="functions listed per table")
    parser.add_argument("--clients", type=int, default=1, help="client threads asking at once (closed loop)")
    parser.add_argument("--all-threads", action="store_true", help="sample every busy thread, not only the GIL's")
    args = parser.parse_args(argv)
    path = PAGES.get(args.page, args.page)
    options = dict(
        requests=args.requests, rate=args.rate, limit=args.limit, gil=not args.all_threads, clients=args.clients
    )
    print(profile(workdir=Path(args.workdir), path=path, **options))


if __name__ == "__main__":
    main()
