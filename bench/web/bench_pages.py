"""Web gateway pages under concurrent clients: server time p50/p99 beside a static page of the same server.

One county node (511102) with ``--stored`` preloaded cases (bench/preload.py) and its web gateway,
each its own process on loopback. 50 clients (threads with keep-alive connections) ask each page in
turn: the same-run baseline ``/bench/static`` goes through the same request wrapper (cookies, CSRF,
headers, metrics, worker thread) with no gRPC call and no template. Server time is the gateway's
own ``Server-Timing`` header; the client's time adds the HTTP round trip and queueing.

    .venv/bin/python -m bench.web.bench_pages --stored 100000 --clients 50 --requests 20
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import re
import secrets
import statistics
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from services.common.settings import Settings
from services.federation import Federation

NODE = "511102"
SERVER_TIMING = re.compile(r"app;dur=([0-9.]+)")


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


def _run_page(host: str, port: int, path: str, cookie: str, *, clients: int, requests: int) -> Sample:
    sample = Sample()
    lock = threading.Lock()
    start = threading.Barrier(clients)

    def client() -> None:
        conn = http.client.HTTPConnection(host, port, timeout=60)
        server: list[float] = []
        seen: list[float] = []
        errors = 0
        start.wait()
        for _ in range(requests):
            began = time.perf_counter()
            try:
                conn.request("GET", path, headers={"Cookie": cookie})
                reply = conn.getresponse()
                reply.read()
            except (OSError, http.client.HTTPException):
                errors += 1
                conn.close()
                conn = http.client.HTTPConnection(host, port, timeout=60)
                continue
            seen.append((time.perf_counter() - began) * 1000)
            timing = SERVER_TIMING.search(reply.headers.get("Server-Timing", ""))
            if reply.status != 200 or timing is None:
                errors += 1
                continue
            server.append(float(timing.group(1)))
        conn.close()
        with lock:
            sample.server_ms.extend(server)
            sample.client_ms.extend(seen)
            sample.errors += errors

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sample


def run(
    *, stored: int, clients: int, requests: int, workdir: Path, only: Sequence[str] = ()
) -> list[dict[str, object]]:
    from bench.harness.procs import free_port
    from bench.preload import preload
    from services.federation import demo_sign_in

    # One keyring for the preload (this process) and the node, so the node opens the sealed personal data.
    # A kept work directory (--workdir) holds its preload and keyring: a rerun measures the same data.
    kept = workdir / "bench-web-preload.json"
    earlier = json.loads(kept.read_text("utf-8")) if kept.exists() else {}
    if earlier.get("stored") != stored:
        earlier = {"keys": f"k1:{base64.b64encode(secrets.token_bytes(16)).decode()}"}
    keys = {"LIANXIN_DATA_KEYS": earlier["keys"]}
    os.environ.update(keys)
    settings = Settings(node=NODE, data_dir=workdir)
    case_id = earlier.get("case_id", "")
    if stored and "stored" not in earlier:
        loaded = preload(settings, stored)
        case_id = loaded.sample[0][0] if loaded.sample else ""
        kept.write_text(json.dumps({"stored": stored, "keys": earlier["keys"], "case_id": case_id}), "utf-8")
    grpc_port, metrics_port, web_port = free_port(), free_port(), free_port()
    federation = Federation(
        data_dir=workdir,
        base_port=grpc_port,
        metrics_base_port=metrics_port,
        web_base_port=web_port,
        topology=((NODE, None),),
        with_national=False,
        extra_env={"LIANXIN_LOG_LEVEL": "WARNING", "LIANXIN_INTAKE_CLASSIFIER": "off", **keys},
    )
    demo_sign_in(federation)
    passwords = json.loads((workdir / "web-demo-passwords.json").read_text("utf-8"))
    federation.start(ready_timeout_s=300)
    try:
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
        baseline = 0.0
        for name, path in pages:
            _run_page(host, web_port, path, cookie, clients=clients, requests=2)  # warm up
            began = time.perf_counter()
            sample = _run_page(host, web_port, path, cookie, clients=clients, requests=requests)
            elapsed = time.perf_counter() - began
            p50 = statistics.median(sample.server_ms) if sample.server_ms else float("nan")
            if not baseline:
                baseline = p50
            rows.append(
                {
                    "page": name,
                    "requests": len(sample.client_ms),
                    "errors": sample.errors,
                    "per_s": round(len(sample.client_ms) / elapsed, 1),
                    "server_p50_ms": round(p50, 2),
                    "server_p99_ms": round(_percentile(sample.server_ms, 0.99), 2),
                    "client_p50_ms": round(statistics.median(sample.client_ms), 1) if sample.client_ms else None,
                    "client_p99_ms": round(_percentile(sample.client_ms, 0.99), 1),
                    "server_p50_vs_static": round(p50 / baseline, 1) if baseline else None,
                }
            )
        return rows
    finally:
        federation.stop()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stored", type=int, default=100_000, help="cases preloaded into the node (default 100000)")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--requests", type=int, default=20, help="requests per client per page")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--only", default="", help="comma-separated words of page names, e.g. inbox,case")
    parser.add_argument(
        "--workdir", default="", help="keep the node's data here; a rerun with the same --stored reuses the preload"
    )
    args = parser.parse_args(argv)
    only = [w for w in args.only.split(",") if w]
    if args.workdir:
        Path(args.workdir).mkdir(parents=True, exist_ok=True)
        rows = run(
            stored=args.stored, clients=args.clients, requests=args.requests, workdir=Path(args.workdir), only=only
        )
    else:
        with tempfile.TemporaryDirectory(prefix="bench-web-") as tmp:
            rows = run(stored=args.stored, clients=args.clients, requests=args.requests, workdir=Path(tmp), only=only)
    load = os.getloadavg()
    if args.json:
        print(json.dumps(rows, ensure_ascii=False, indent=1))
        return
    print(f"web gateway, node {NODE}, {args.stored} stored cases, {args.clients} clients x {args.requests} requests")
    print(f"load average at the end: {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1 / 5 / 15 min)")
    header = (
        f"{'page':<24} {'req':>5} {'err':>4} {'req/s':>7} {'srv p50':>8} {'srv p99':>8} "
        f"{'cli p50':>8} {'cli p99':>8} {'x static':>8}"
    )
    print(header)
    for r in rows:
        print(
            f"{r['page']:<24} {r['requests']:>5} {r['errors']:>4} {r['per_s']:>7} {r['server_p50_ms']:>8} "
            f"{r['server_p99_ms']:>8} {r['client_p50_ms']:>8} {r['client_p99_ms']:>8} {r['server_p50_vs_static']:>8}"
        )


if __name__ == "__main__":
    main()
