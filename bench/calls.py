"""The gRPC framework's cost per call: a real api process against a bare grpcio echo, in one run.

``python -m bench.calls [--calls 3000] [--clients 1,8] [--server-tree DIR] [--framework-calls 20000]``

Starts a bare echo server (``bench.harness.echo``) and ``lianxin serve --service intake`` (SQLite,
operator tokens on, as deployed) as processes of their own, then makes the same number of calls of
each kind, one client and then several at once, and reads each server's CPU from /proc before and
after: CPU per call, and its ratio to the echo's. The kinds:

* ``echo``: the transport alone (grpcio, no interceptor, no protobuf);
* ``health``: grpc.health.v1 Check through the node's whole interceptor chain;
* ``missing``: GetCase of a case that does not exist (token checked, request rules, NOT_FOUND mapped);
* ``getcase``: GetCase of a stored case (a real read: the query pool, two SELECTs, masking).

Then the framework alone, in a process of its own: the server's interceptor pipeline and the wrapped
behaviour of each kind of call around a stub servicer (no network, no database), in one thread; µs of
CPU per call beyond the stub's own. That is what the interceptors cost, apart from the transport.

``--server-tree`` runs the api process and the framework's process from another checkout (``git
archive main | tar -x -C DIR``), so that main and a branch are measured by the same client, alternately.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from lianxin.common.v1 import common_pb2
from lianxin.intake.v1 import intake_service_pb2 as pb
from lianxin.intake.v1 import intake_service_pb2_grpc as intake_grpc

from bench.cpu import process_cpu_seconds
from bench.harness.echo import METHOD as ECHO_METHOD
from bench.harness.procs import NODE_ENV, REPO, EchoProcess, free_port, harness_environ
from bench.harness.scenarios import INTAKE_SERVICE
from bench.harness.workload import Submissions
from services.common.security import bearer_metadata, issue_token
from services.federation import wait_serving

NODE = "511102"
KINDS = ("echo", "health", "missing", "getcase")
MISSING_CASE = "C-511102-00000000-0000"


@dataclass(frozen=True)
class Figure:
    kind: str
    clients: int
    calls: int
    cpu_s: float
    wall_s: float

    @property
    def cpu_ms(self) -> float:
        return 1000 * self.cpu_s / self.calls


# --------------------------------------------------------------------------- the processes


class ApiProcess:
    """``lianxin serve --service intake`` on SQLite in ``workdir``, run from ``tree`` (a checkout)."""

    def __init__(self, tree: Path, workdir: Path, token_key: str) -> None:
        self.port = free_port()
        env = {
            **harness_environ(),
            **NODE_ENV,
            "LIANXIN_NODE": NODE,
            "LIANXIN_DATA_DIR": str(workdir),
            "LIANXIN_GRPC_PORT": str(self.port),
            "LIANXIN_METRICS_PORT": str(free_port()),
            "LIANXIN_AUTH": "1",
            "LIANXIN_TOKEN_KEY": token_key,
        }
        # ``-m`` puts the working directory first on sys.path: the services of ``tree`` are the ones run.
        with open(workdir / "api.log", "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "services.cli", "serve", "--service", "intake"],
                env=env,
                cwd=tree,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        self.address = f"127.0.0.1:{self.port}"

    def wait_ready(self) -> None:
        wait_serving(self.address, 120.0, self.process, services=(INTAKE_SERVICE,))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@contextlib.contextmanager
def servers(tree: Path, workdir: Path, token_key: str) -> Iterator[tuple[EchoProcess, ApiProcess]]:
    echo = EchoProcess(workers=16).start()
    api = ApiProcess(tree, workdir, token_key)
    try:
        api.wait_ready()
        yield echo, api
    finally:
        api.stop()
        echo.stop()


def _callers(
    echo: grpc.Channel, api: grpc.Channel, metadata: tuple[tuple[str, str], ...], case_id: str
) -> dict[str, Callable[[], object]]:
    echo_call = echo.unary_unary(ECHO_METHOD)
    health = health_pb2_grpc.HealthStub(api)
    intake = intake_grpc.IntakeServiceStub(api)
    check = health_pb2.HealthCheckRequest(service=INTAKE_SERVICE)
    missing = pb.GetCaseRequest(case_id=MISSING_CASE)
    stored = pb.GetCaseRequest(case_id=case_id)

    def get_missing() -> object:
        try:
            return intake.GetCase(missing, metadata=metadata, timeout=10)
        except grpc.RpcError as error:
            if error.code() is not grpc.StatusCode.NOT_FOUND:  # type: ignore[attr-defined]
                raise
            return error

    return {
        "echo": lambda: echo_call(b"ping", timeout=10),
        "health": lambda: health.Check(check, timeout=10),
        "missing": get_missing,
        "getcase": lambda: intake.GetCase(stored, metadata=metadata, timeout=10),
    }


def _run(call: Callable[[], object], clients: int, calls: int) -> float:
    """Make ``calls`` calls from ``clients`` threads at once; the wall time."""
    share = [calls // clients + (1 if i < calls % clients else 0) for i in range(clients)]
    failures: list[BaseException] = []

    def client(n: int) -> None:
        try:
            for _ in range(n):
                call()
        except BaseException as error:  # reported after the run, not lost in a thread
            failures.append(error)

    threads = [threading.Thread(target=client, args=(n,)) for n in share]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]
    return time.perf_counter() - started


def measure(kind: str, call: Callable[[], object], pid: int, clients: int, calls: int) -> Figure:
    _run(call, clients, max(50, calls // 10))  # warm: connections, caches, the query pool's threads
    before = process_cpu_seconds([pid])
    wall = _run(call, clients, calls)
    after = process_cpu_seconds([pid])
    if before is None or after is None:
        raise RuntimeError("/proc does not tell this process's CPU")
    return Figure(kind, clients, calls, after - before, wall)


def run(tree: Path, calls: int, clients: list[int], kinds: list[str]) -> list[Figure]:
    token_key = secrets.token_hex(32)
    token = issue_token(token_key.encode(), subject="bench-clerk", node=NODE, roles=["clerk"])
    metadata = bearer_metadata(token)
    figures: list[Figure] = []
    with (
        tempfile.TemporaryDirectory(prefix="lianxin-calls-") as tmp,
        servers(tree, Path(tmp), token_key) as (echo, api),
        grpc.insecure_channel(echo.address) as echo_channel,
        grpc.insecure_channel(api.address) as api_channel,
    ):
        submitted = intake_grpc.IntakeServiceStub(api_channel).SubmitCase(
            Submissions(NODE, seed=1).request(0, 0), metadata=metadata, timeout=30
        )
        callers = _callers(echo_channel, api_channel, metadata, submitted.case.case_id)
        for n in clients:
            for kind in kinds:
                pid = echo.pids[0] if kind == "echo" else api.process.pid
                figures.append(measure(kind, callers[kind], pid, n, calls))
    return figures


# --------------------------------------------------------------------------- the framework alone


class _Context:
    """What a handler and the interceptors use of grpcio's ServicerContext, without a call under it."""

    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self._metadata = metadata
        self._code: grpc.StatusCode | None = None
        self._details: str | None = None

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def peer(self) -> str:
        return "ipv4:127.0.0.1:40000"

    def auth_context(self) -> dict[str, list[bytes]]:
        return {}

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def details(self) -> str | None:
        return self._details

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    def set_details(self, details: str) -> None:
        self._details = details

    def set_trailing_metadata(self, metadata: object) -> None:
        pass

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        # grpcio records the status and raises a bare Exception (the interceptors rely on that).
        self._code, self._details = code, details
        raise Exception()


class _Details(grpc.HandlerCallDetails):  # type: ignore[misc]
    def __init__(self, method: str, metadata: tuple[tuple[str, str], ...]) -> None:
        self.method = method
        self.invocation_metadata = metadata


def _stub_intake() -> Any:
    from services.common.db import read_only
    from services.common.errors import NotFound

    class StubIntake(intake_grpc.IntakeServiceServicer):  # type: ignore[misc]
        """GetCase without a database: NOT_FOUND for the missing id, else a case with a complainant."""

        @read_only
        def GetCase(self, request: pb.GetCaseRequest, context: Any) -> pb.GetCaseResponse:
            if request.case_id == MISSING_CASE:
                raise NotFound("case", request.case_id)
            return pb.GetCaseResponse(
                case=common_pb2.Case(
                    case_id=request.case_id,
                    title="路灯长期不亮",
                    region_code=NODE,
                    complainant=common_pb2.Person(name="测试", phone="13900001234"),
                )
            )

    return StubIntake()  # type: ignore[abstract]  # the generated stubs call every method abstract; one is served


def framework(calls: int) -> dict[str, float]:
    """µs of CPU per call the server's interceptors add around a stub servicer, by kind (this process)."""
    from services.common.grpcserver import GrpcServer
    from services.common.regions import RegionTree
    from services.common.security import server_security
    from services.common.service import ServicerBinding
    from services.common.settings import Settings

    key = secrets.token_hex(32)
    bearer = bearer_metadata(issue_token(key.encode(), subject="c", node=NODE, roles=["clerk"]))
    metadata: tuple[tuple[str, str], ...] = (*bearer, ("user-agent", "grpc-python/bench"))
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="lianxin-calls-") as tmp:
        settings = Settings(node=NODE, data_dir=Path(tmp), metrics_port=None, auth=True, token_key=key)
        servicer = _stub_intake()
        binding = ServicerBinding(intake_grpc.add_IntakeServiceServicer_to_server, servicer, INTAKE_SERVICE)
        security = server_security(settings, RegionTree.load(), [INTAKE_SERVICE])
        server = GrpcServer([binding], settings, interceptors=security.interceptors)
        state = server.grpc_server._state  # type: ignore[attr-defined]  # grpcio's own pipeline and handlers

        def lookup(method: str) -> Any:
            for generic in state.generic_handlers:
                handler = generic.service(_Details(method, ()))
                if handler is not None:
                    return handler
            return None

        # grpcio finds a registered method's handler by its name before the interceptors run.
        table = {method: lookup(method) for method in ("/grpc.health.v1.Health/Check", f"/{INTAKE_SERVICE}/GetCase")}

        def registered(details: grpc.HandlerCallDetails) -> Any:
            return table.get(details.method)

        health_servicer = server._health  # the servicer the server registered
        cases = {
            "health": ("/grpc.health.v1.Health/Check", health_pb2.HealthCheckRequest(service=INTAKE_SERVICE)),
            "missing": (f"/{INTAKE_SERVICE}/GetCase", pb.GetCaseRequest(case_id=MISSING_CASE)),
            "getcase": (f"/{INTAKE_SERVICE}/GetCase", pb.GetCaseRequest(case_id=f"{NODE}-20261206-000001")),
        }
        bare_of = {"health": health_servicer.Check, "missing": servicer.GetCase, "getcase": servicer.GetCase}
        for kind, (method, request) in cases.items():
            details = _Details(method, metadata)

            def framed(method_details: grpc.HandlerCallDetails = details, request: Any = request) -> None:
                handler = state.interceptor_pipeline.execute(registered, method_details)
                with contextlib.suppress(Exception):
                    handler.unary_unary(request, _Context(metadata))

            def bare(request: Any = request, behavior: Any = bare_of[kind]) -> None:
                with contextlib.suppress(Exception):
                    behavior(request, _Context(metadata))

            out[kind] = 1e6 * (_cpu_per_call(framed, calls) - _cpu_per_call(bare, calls))
        security.close()
    return out


def _cpu_per_call(call: Callable[[], None], calls: int) -> float:
    for _ in range(min(calls, 500)):  # warm: first lookups, metric series, verified tokens
        call()
    started = time.process_time()
    for _ in range(calls):
        call()
    return (time.process_time() - started) / calls


def framework_in(tree: Path, calls: int) -> dict[str, float]:
    """``framework`` in a process of its own whose services come from ``tree``."""
    env = {**harness_environ(), "PYTHONPATH": str(tree), "LIANXIN_LOG_LEVEL": "CRITICAL"}
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--framework-child", str(calls)],
        env=env,
        cwd=tree,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the framework measurement failed:\n{done.stderr[-3000:]}")
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# --------------------------------------------------------------------------- the report


def report(figures: list[Figure], overhead: dict[str, float], label: str) -> None:
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"\n== {label} (load average {load}) ==")
    print(f"{'call':<10} {'clients':>7} {'calls':>7} {'CPU ms/call':>12} {'÷ echo':>8} {'calls/s':>9}")
    echo = {f.clients: f for f in figures if f.kind == "echo"}  # always measured: the ratios' baseline
    for figure in figures:
        ratio = figure.cpu_ms / echo[figure.clients].cpu_ms if echo[figure.clients].cpu_ms else float("nan")
        print(
            f"{figure.kind:<10} {figure.clients:>7} {figure.calls:>7} {figure.cpu_ms:>12.3f}"
            f" {ratio:>8.2f} {figure.calls / figure.wall_s:>9.0f}"
        )
    if overhead:
        print(
            "framework alone, in-process (µs of CPU per call beyond the stub servicer's): "
            + ", ".join(f"{kind} {value:.1f}" for kind, value in overhead.items())
        )


def main(argv: list[str] | None = None) -> int:
    args_in = sys.argv[1:] if argv is None else argv
    if args_in[:1] == ["--framework-child"]:
        print(json.dumps(framework(int(args_in[1]))))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=3000, help="calls per kind and client count (0: none)")
    parser.add_argument("--clients", default="1,8", help="client counts, comma separated")
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"calls to measure, of {', '.join(KINDS)}")
    parser.add_argument("--framework-calls", type=int, default=20000, help="in-process calls per kind (0: skip)")
    parser.add_argument("--server-tree", type=Path, default=REPO, help="checkout the servers run from")
    parser.add_argument("--label", default=None, help="the table's title (default: the server tree)")
    args = parser.parse_args(args_in)
    kinds = [kind.strip() for kind in args.kinds.split(",") if kind.strip()]
    unknown = set(kinds) - set(KINDS)
    if unknown:
        parser.error(f"unknown kinds {sorted(unknown)}; known: {', '.join(KINDS)}")
    clients = [int(n) for n in args.clients.split(",") if n.strip()]
    tree = args.server_tree.resolve()
    figures = run(tree, args.calls, clients, ["echo", *(k for k in kinds if k != "echo")]) if args.calls else []
    overhead = framework_in(tree, args.framework_calls) if args.framework_calls else {}
    report(figures, overhead, args.label or str(tree))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
