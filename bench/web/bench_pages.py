"""Web gateway pages under concurrent clients: server time p50/p99 beside a static page of the same server.

One county node (511102) with ``--stored`` preloaded cases (bench/preload.py) and its web gateway,
each its own process on loopback. 50 clients (threads with keep-alive connections) ask each page in
turn: the same-run baseline ``/bench/static`` goes through the same request wrapper (cookies, CSRF,
headers, metrics, worker thread) with no gRPC call and no template. Server time is the gateway's
own ``Server-Timing`` header: from the request's first bytes read by the gateway (its event loop's
queue included) to the answer handed to uvicorn; the client's time adds the HTTP round trip.

Two modes, each with its own static baseline: a closed loop (each client asks again as soon as it is
answered: what the gateway and node can serve) and clients with a think time (an operator reading a
page 1–3 s before the next click).

    .venv/bin/python -m bench.web.bench_pages --stored 100000 --workdir /work/benchdata/web100k --only inbox,case
    .venv/bin/python -m bench.web.bench_pages --stored 100000 --modes closed --clients 50 --requests 20
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import json
import os
import random
import re
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.cpu import context_switches, postgres_cpu_seconds, process_cpu_seconds, process_kernel_seconds
from services.common.settings import Settings
from services.federation import Federation

NODE = "511102"


@dataclass
class Sample:
    server_ms: list[float] = field(default_factory=list)
    client_ms: list[float] = field(default_factory=list)
    errors: int = 0


def _percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _sign_in(host: str, port: int, username: str, password: str) -> str:
    """The Cookie header of a signed-in clerk (GET the form for its CSRF cookie and token, then POST)."""
    conn = http.client.HTTPConnection(host, port, timeout=30)
    conn.request("GET", "/console/login")
    reply = conn.getresponse()
    body = reply.read().decode()
    cookies = {
        c.split("=", 1)[0]: c.split(";", 1)[0].split("=", 1)[1] for c in reply.headers.get_all("Set-Cookie") or []
    }
    token = re.search(r'name="csrf" value="([^"]+)"', body)
    assert token is not None, "no CSRF token on the sign-in form"
    form = urllib.parse.urlencode({"csrf": token.group(1), "username": username, "password": password})
    conn.request(
        "POST",
        "/console/login",
        body=form,
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "Cookie": "; ".join(f"{k}={v}" for k, v in cookies.items()),
        },
    )
    reply = conn.getresponse()
    reply.read()
    assert reply.status == 303, f"sign-in answered {reply.status}"
    for cookie in reply.headers.get_all("Set-Cookie") or []:
        name, value = cookie.split(";", 1)[0].split("=", 1)
        cookies[name] = value
    conn.close()
    return "; ".join(f"{k}={v}" for k, v in cookies.items())


class _KeptAlive:
    """A client's kept-alive HTTP/1.1 connection that asks one GET again and again, reading each answer
    by its Content-Length: the request's bytes built once, the head searched for two headers only.

    http.client parsed every header through the email package (~0.1 ms of the bench's CPU a page, on
    the cores the gateway and the node share); the exchange on the wire is the same: one request, the
    whole answer read before the next.
    """

    HEAD_END = b"\r\n\r\n"
    LENGTH = re.compile(rb"(?im)^content-length:[ \t]*([0-9]+)")
    TIMING = re.compile(rb"(?im)^server-timing:[ \t]*app;dur=([0-9.]+)")

    def __init__(self, host: str, port: int, path: str, cookie: str) -> None:
        self.address = (host, port)
        self.request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nCookie: {cookie}\r\n\r\n".encode("latin-1")
        self.sock: socket.socket | None = None
        self.pending = b""

    def ask(self) -> tuple[int, float | None]:
        """The answer's status and its Server-Timing in ms (None without one); OSError when the
        connection failed or the answer had no Content-Length (the caller counts an error)."""
        if self.sock is None:
            self.sock = socket.create_connection(self.address, timeout=60)
            self.pending = b""
        self.sock.sendall(self.request)
        data = self.pending
        while (end := data.find(self.HEAD_END)) < 0:
            data += self._recv()
        head, rest = data[:end], data[end + 4 :]
        length = self.LENGTH.search(head)
        if length is None:
            raise OSError("an answer without Content-Length")
        size = int(length.group(1))
        while len(rest) < size:
            rest += self._recv()
        self.pending = rest[size:]
        timing = self.TIMING.search(head)
        return int(head[9:12]), float(timing.group(1)) if timing else None

    def _recv(self) -> bytes:
        assert self.sock is not None
        chunk = self.sock.recv(262144)
        if not chunk:
            raise OSError("the gateway closed the connection")
        return chunk

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def _run_page(
    host: str, port: int, path: str, cookie: str, *, clients: int, requests: int, think_s: float = 0.0
) -> Sample:
    """``clients`` threads each asking ``path`` ``requests`` times: at once (a closed loop), or after
    a think time of ``think_s`` on average (0.5–1.5 ×, so the clients do not click in step)."""
    sample = Sample()
    lock = threading.Lock()
    start = threading.Barrier(clients)

    def client(seed: int) -> None:
        conn = _KeptAlive(host, port, path, cookie)
        server: list[float] = []
        seen: list[float] = []
        errors = 0
        pause = random.Random(seed)
        start.wait()
        if think_s:
            time.sleep(pause.uniform(0, think_s))  # the clerks start at different moments
        for _ in range(requests):
            if think_s:
                time.sleep(pause.uniform(0.5 * think_s, 1.5 * think_s))  # the operator reads the page
            began = time.perf_counter()
            try:
                status, timing = conn.ask()
            except OSError:
                errors += 1
                conn.close()  # the next request opens a new connection
                continue
            seen.append((time.perf_counter() - began) * 1000)
            if status != 200 or timing is None:
                errors += 1
                continue
            server.append(timing)
        conn.close()
        with lock:
            sample.server_ms.extend(server)
            sample.client_ms.extend(seen)
            sample.errors += errors

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sample


@dataclass(frozen=True)
class Mode:
    """How the clients ask: ``think_s`` 0 is a closed loop (each client asks again as soon as its page
    is answered: the gateway's capacity); otherwise each reads a page 0.5–1.5 × ``think_s`` first."""

    name: str
    requests: int
    think_s: float = 0.0

    def title(self, clients: int) -> str:
        if not self.think_s:
            return f"closed loop: {clients} clients, each asking again as soon as its page is answered (no think time)"
        low, high = 0.5 * self.think_s, 1.5 * self.think_s
        offered = clients / self.think_s
        return (
            f"think time: {clients} clients, each reading a page {low:g}–{high:g} s before the next click "
            f"(~{offered:.0f} pages/s offered)"
        )


@dataclass
class Processes:
    """The node's and the gateway's processes, for the CPU they spend on each page."""

    node: list[subprocess.Popen[bytes]] = field(default_factory=list)
    web: list[subprocess.Popen[bytes]] = field(default_factory=list)
    on_postgres: bool = False

    def counters(self) -> tuple[float, float, float, int, int, float]:
        """CPU of the node and the gateway, the node's kernel CPU, each one's context switches, and
        PostgreSQL's CPU (its server's processes on this machine; 0 on SQLite)."""
        node, web = _tree([p.pid for p in self.node]), _tree([p.pid for p in self.web])
        return (
            process_cpu_seconds(node) or 0.0,
            process_cpu_seconds(web) or 0.0,
            process_kernel_seconds(node) or 0.0,
            context_switches(node),
            context_switches(web),
            (postgres_cpu_seconds() or 0.0) if self.on_postgres else 0.0,
        )

    def stop(self) -> None:
        for process in [*self.web, *self.node]:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in [*self.web, *self.node]:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()


def _tree(pids: Sequence[int]) -> list[int]:
    """``pids`` and their descendants (a gateway's uvicorn workers)."""
    out: list[int] = []
    todo = list(pids)
    while todo:
        pid = todo.pop()
        out.append(pid)
        for task in Path(f"/proc/{pid}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                todo += [int(child) for child in task.read_text().split()]
    return out


def _spawn_api(env: dict[str, str], group: str, port: int) -> subprocess.Popen[bytes]:
    """One more api process on the node's databases (``lianxin serve``: servicers only) serving the
    services of ``group`` ("intake" or "intake+routing+video": one process, its reads asked together)."""
    from services.common.names import SERVICE_NAMES
    from services.federation import health_statuses

    services = group.split("+")
    process = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "serve", "--service", ",".join(services)],
        env={**env, "LIANXIN_GRPC_PORT": str(port), "LIANXIN_METRICS_PORT": "0"},
        stdout=subprocess.DEVNULL,
    )
    names = [SERVICE_NAMES[service] for service in services]
    deadline = time.monotonic() + 120
    while health_statuses(f"127.0.0.1:{port}", names) != dict.fromkeys(names, "SERVING"):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the {group} api process on port {port} did not start")
        time.sleep(0.2)  # polling a condition with a deadline
    return process


def _measure(
    procs: Processes, host: str, port: int, path: str, cookie: str, *, clients: int, mode: Mode
) -> dict[str, object]:
    """One page under ``clients`` clients: server and client time, pages/s, and the CPU each page cost."""
    _run_page(host, port, path, cookie, clients=clients, requests=2)  # warm up
    before, client_cpu = procs.counters(), time.process_time()
    began = time.perf_counter()
    sample = _run_page(host, port, path, cookie, clients=clients, requests=mode.requests, think_s=mode.think_s)
    elapsed = time.perf_counter() - began
    served = max(1, len(sample.server_ms))
    client_cpu = time.process_time() - client_cpu
    node, web, node_kernel, node_switches, web_switches, database = (
        b - a for a, b in zip(before, procs.counters(), strict=True)
    )
    return {
        "requests": len(sample.client_ms),
        "errors": sample.errors,
        "per_s": round(len(sample.client_ms) / elapsed, 1),
        "server_p50_ms": round(statistics.median(sample.server_ms), 2) if sample.server_ms else float("nan"),
        "server_p99_ms": round(_percentile(sample.server_ms, 0.99), 2),
        "client_p50_ms": round(statistics.median(sample.client_ms), 1) if sample.client_ms else None,
        "client_p99_ms": round(_percentile(sample.client_ms, 0.99), 1),
        "node_cpu_ms": round(node * 1000 / served, 2),
        "web_cpu_ms": round(web * 1000 / served, 2),
        "db_cpu_ms": round(database * 1000 / served, 2) if procs.on_postgres else None,
        # Where a page's CPU grows under concurrency: the kernel's share (futex hand-offs between the
        # node's threads), the threads' switches per page, and the bench's own clients on the same cores.
        "node_kernel_ms": round(node_kernel * 1000 / served, 2),
        "node_switches": round(node_switches / served, 1),
        "web_switches": round(web_switches / served, 1),
        "client_cpu_ms": round(client_cpu * 1000 / served, 2),
        "load_1min": round(os.getloadavg()[0], 1),
    }


def run(
    *,
    stored: int,
    clients: int,
    workdir: Path,
    only: Sequence[str] = (),
    modes: Sequence[Mode] = (),
    gateways: int = 1,
    api_processes: Sequence[str] = (),
    database_url: str | None = None,
) -> list[dict[str, object]]:
    from bench.harness.procs import free_port
    from bench.preload import preload
    from services.federation import demo_sign_in, wait_http

    # One keyring for the preload (this process) and the node, so the node opens the sealed personal data.
    # A kept work directory (--workdir) holds its preload and keyring: a rerun measures the same data.
    kept = workdir / "bench-web-preload.json"
    earlier = json.loads(kept.read_text("utf-8")) if kept.exists() else {}
    if earlier.get("stored") != stored or earlier.get("database_url") != database_url:
        earlier = {"keys": f"k1:{base64.b64encode(secrets.token_bytes(16)).decode()}"}
    keys = {"LIANXIN_DATA_KEYS": earlier["keys"]}
    os.environ.update(keys)
    settings = Settings(node=NODE, data_dir=workdir, database_url=database_url)
    case_id = earlier.get("case_id", "")
    if stored and "stored" not in earlier:
        loaded = preload(settings, stored)
        case_id = loaded.sample[0][0] if loaded.sample else ""
        kept.write_text(
            json.dumps({"stored": stored, "keys": earlier["keys"], "case_id": case_id, "database_url": database_url}),
            "utf-8",
        )
    grpc_port, metrics_port, web_port = free_port(), free_port(), free_port()
    extra_env = {"LIANXIN_LOG_LEVEL": "WARNING", "LIANXIN_INTAKE_CLASSIFIER": "off", **keys}
    if database_url:
        extra_env["LIANXIN_DATABASE_URL"] = database_url
    federation = Federation(
        data_dir=workdir,
        base_port=grpc_port,
        metrics_base_port=metrics_port,
        web_base_port=None,  # the gateway(s) are started here, as the options ask
        topology=((NODE, None),),
        with_national=False,
        extra_env=extra_env,
    )
    demo_sign_in(federation)
    passwords = json.loads((workdir / "web-demo-passwords.json").read_text("utf-8"))
    federation.start(ready_timeout_s=300)
    node_env = {**os.environ, **extra_env, "LIANXIN_NODE": NODE, "LIANXIN_DATA_DIR": str(workdir)}
    procs = Processes(node=[p for p in [federation.nodes[0].process] if p is not None], on_postgres=bool(database_url))
    try:
        # More api processes of a service on the node's databases: the gateway spreads its calls
        # to that service round robin over the node's port and theirs.
        targets: dict[str, list[str]] = {}
        for group in api_processes:
            port = free_port()
            procs.node.append(_spawn_api(node_env, group, port))
            for service in group.split("+"):
                targets.setdefault(service, [federation.nodes[0].address]).append(f"127.0.0.1:{port}")
        web_env = {
            **node_env,
            "LIANXIN_WEB_PORT": str(web_port),
            "LIANXIN_WEB_GRPC": federation.nodes[0].address,
            "LIANXIN_WEB_WORKERS": str(gateways),
            **{f"LIANXIN_WEB_{s.upper()}": "ipv4:" + ",".join(a) for s, a in targets.items()},
        }
        procs.web.append(
            subprocess.Popen([sys.executable, "-m", "services.cli", "web"], env=web_env, stdout=subprocess.DEVNULL)
        )
        wait_http(f"http://127.0.0.1:{web_port}/healthz", 120, procs.web[0])
        host = "127.0.0.1"
        cookie = _sign_in(host, web_port, f"clerk-{NODE}", passwords[f"clerk-{NODE}"])
        pages = [
            ("static page (baseline)", "/bench/static"),
            ("portal home", "/"),
            ("submit form", "/submit"),
            ("public reply board", "/board"),
            ("console inbox", "/console"),
            ("console inbox, overdue", "/console?overdue=1"),
            *([("case page", f"/console/case/{case_id}")] if case_id else []),
            ("supervisor dashboard", "/console/dashboard"),
        ]
        if only:  # the baseline always runs first, then the pages asked for
            pages = [pages[0], *(p for p in pages[1:] if any(word in p[0] for word in only))]
        rows: list[dict[str, object]] = []
        for mode in modes:
            baseline = 0.0
            for name, path in pages:
                row = _measure(procs, host, web_port, path, cookie, clients=clients, mode=mode)
                baseline = baseline or float(row["server_p50_ms"])  # type: ignore[arg-type]
                p50 = float(row["server_p50_ms"])  # type: ignore[arg-type]
                rows.append({"mode": mode.name, "page": name, **row, "server_p50_vs_static": round(p50 / baseline, 1)})
        return rows
    finally:
        procs.stop()
        federation.stop()


def _print_tables(rows: Sequence[dict[str, object]], modes: Sequence[Mode], clients: int) -> None:
    header = (
        f"{'page':<24} {'req':>5} {'err':>4} {'req/s':>7} {'srv p50':>8} {'srv p99':>8} "
        f"{'cli p50':>8} {'cli p99':>8} {'x static':>8} {'node ms':>8} {'web ms':>7} {'load':>5} "
        f"{'node sys':>8} {'node sw':>7} {'web sw':>6} {'client':>6}"
    )
    on_postgres = any(r.get("db_cpu_ms") is not None for r in rows)
    if on_postgres:
        header += f" {'db ms':>6}"
    for mode in modes:
        print()
        print(mode.title(clients) + f", {mode.requests} pages per client per page")
        print(header)
        for r in (r for r in rows if r["mode"] == mode.name):
            print(
                f"{r['page']:<24} {r['requests']:>5} {r['errors']:>4} {r['per_s']:>7} {r['server_p50_ms']:>8} "
                f"{r['server_p99_ms']:>8} {r['client_p50_ms']:>8} {r['client_p99_ms']:>8} "
                f"{r['server_p50_vs_static']:>8} {r['node_cpu_ms']:>8} {r['web_cpu_ms']:>7} {r['load_1min']:>5} "
                f"{r['node_kernel_ms']:>8} {r['node_switches']:>7} {r['web_switches']:>6} {r['client_cpu_ms']:>6}"
                + (f" {r['db_cpu_ms']:>6}" if on_postgres else "")
            )
    print()
    print("srv: the gateway's Server-Timing, from the request's first bytes read by the gateway to its answer")
    print("     handed to uvicorn; cli: the client's round trip on its kept-alive connection; ms, p50 / p99")
    print("node ms, web ms: CPU per page of the node's processes and the gateway's (/proc over the run)")
    print("load: the machine's 1-minute load average when the page's run ended (2 cores shared)")
    print("node sys: the node's kernel CPU per page (of node ms); node sw, web sw: context switches per page")
    print("     of the node's and the gateway's threads; client: the bench's own CPU per page (same cores)")
    if on_postgres:
        print("db ms: CPU per page of the PostgreSQL server's processes on this machine (same cores)")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stored", type=int, default=100_000, help="cases preloaded into the node (default 100000)")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--requests", type=int, default=20, help="closed loop: requests per client per page")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--only", default="", help="comma-separated words of page names, e.g. inbox,case")
    parser.add_argument(
        "--workdir", default="", help="keep the node's data here; a rerun with the same --stored reuses the preload"
    )
    parser.add_argument(
        "--modes", default="closed,think", help="closed (no think time), think (--think), or both (default)"
    )
    parser.add_argument("--think", type=float, default=2.0, help="think mode: mean seconds an operator reads a page")
    parser.add_argument("--think-requests", type=int, default=10, help="think mode: requests per client per page")
    parser.add_argument("--gateways", type=int, default=1, help="gateway worker processes (LIANXIN_WEB_WORKERS)")
    parser.add_argument(
        "--api-processes",
        default="",
        help="one more api process (lianxin serve) per comma-separated item, each a service or services joined "
        "by + (one process: its reads asked together), e.g. routing,intake,video or intake+routing+video",
    )
    parser.add_argument(
        "--database-url",
        default="",
        help="the node's databases on PostgreSQL, e.g. postgresql+psycopg://postgres@127.0.0.1:5432/lianxin_web100k "
        "(the database must exist; {service} optional: each service keeps its own schema); default SQLite in --workdir",
    )
    args = parser.parse_args(argv)
    known = {"closed": Mode("closed", args.requests), "think": Mode("think", args.think_requests, args.think)}
    modes = [known[m] for m in args.modes.split(",") if m]
    options: dict[str, Any] = dict(
        stored=args.stored,
        clients=args.clients,
        only=[w for w in args.only.split(",") if w],
        modes=modes,
        gateways=args.gateways,
        api_processes=[s for s in args.api_processes.split(",") if s],
        database_url=args.database_url or None,
    )
    if args.workdir:
        Path(args.workdir).mkdir(parents=True, exist_ok=True)
        rows = run(workdir=Path(args.workdir), **options)
    else:
        with tempfile.TemporaryDirectory(prefix="bench-web-") as tmp:
            rows = run(workdir=Path(tmp), **options)
    if args.json:
        print(json.dumps(rows, ensure_ascii=False, indent=1))
        return
    extra = f", 1 + {args.api_processes} api processes" if args.api_processes else ""
    print(f"web gateway, node {NODE}, {args.stored} stored cases, {args.gateways} gateway process(es){extra}")
    _print_tables(rows, modes, args.clients)


if __name__ == "__main__":
    main()
