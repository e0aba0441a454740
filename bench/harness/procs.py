"""What the scenarios run against: databases of a backend, node processes, the echo server process.

Nodes run as their own processes (``lianxin node``, as ``lianxin up`` starts them, or ``lianxin serve``),
so the load generator never shares an interpreter lock with the server it measures.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from bench.harness.defaults import BACKENDS, DEFAULT_PG_ADMIN
from services.common.crypto import keys_configured, new_data_key
from services.federation import BUSINESS_SERVICES, wait_serving

REPO = Path(__file__).resolve().parents[2]

# Every node the harness starts: categories and regions come with each request, the per-submitter
# limit would stop a load test on purpose, and the nodes' logs would drown the progress bar.
NODE_ENV = {
    "LIANXIN_INTAKE_CLASSIFIER": "off",
    "LIANXIN_INTAKE_RATE_LIMIT": "0",
    "LIANXIN_LOG_LEVEL": "WARNING",
}


STOP_GRACE_S = 3.0


# The operator's own node settings: a node the harness starts must not inherit them.
OPERATOR_SETTINGS = ("LIANXIN_PARENT", "LIANXIN_NATIONAL", "LIANXIN_DATABASE_URL", "LIANXIN_AMQP_URI")


# Production processes refuse to start without data keys: one keyring for every node of this run.
_RUN_DATA_KEYS = f"bench:{new_data_key()}"


def harness_environ() -> dict[str, str]:
    """This process's environment without the operator's node settings, for the processes the harness starts."""
    env = {key: value for key, value in os.environ.items() if key not in OPERATOR_SETTINGS}
    if not keys_configured(env):
        env["LIANXIN_DATA_KEYS"] = _RUN_DATA_KEYS
    return env


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass
class Backend:
    """The databases of one run: SQLite files under ``workdir`` or fresh PostgreSQL databases.

    Each group of nodes (``solo``, ``chain``, ``stats``) gets its own databases, one per node on
    PostgreSQL (named ``<prefix>_<group>_<node>``, every service in its own schema); all of them are
    dropped by ``close``.
    """

    kind: str
    workdir: Path
    admin_url: str = DEFAULT_PG_ADMIN
    prefix: str = field(default_factory=lambda: f"lianxin_bench_{uuid.uuid4().hex[:8]}")
    created: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.kind not in BACKENDS:
            raise ValueError(f"unknown backend {self.kind!r}")
        self.workdir.mkdir(parents=True, exist_ok=True)

    @property
    def label(self) -> str:
        return "SQLite" if self.kind == "sqlite" else "PostgreSQL"

    def data_dir(self, group: str) -> Path:
        path = self.workdir / group
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _admin(self) -> sa.Engine:
        return sa.create_engine(self.admin_url, isolation_level="AUTOCOMMIT")

    def check(self) -> str:
        """The server's version; raises when PostgreSQL does not answer (SQLite: the library's)."""
        if self.kind == "sqlite":
            import sqlite3

            return f"SQLite {sqlite3.sqlite_version}"
        admin = self._admin()
        try:
            with admin.connect() as conn:
                return str(conn.execute(sa.text("show server_version")).scalar_one())
        finally:
            admin.dispose()

    def database_template(self, group: str) -> str | None:
        """``LIANXIN_DATABASE_URL`` for the nodes of ``group`` (None: SQLite files in the data dir)."""
        if self.kind == "sqlite":
            return None
        return self.admin_url.rsplit("/", 1)[0] + f"/{self.prefix}_{group}_{{node}}"

    def prepare(self, group: str, node: str) -> None:
        """Create the node's database (PostgreSQL); SQLite files appear on first use."""
        if self.kind == "sqlite":
            return
        name = f"{self.prefix}_{group}_{node}"
        if name in self.created:
            return
        admin = self._admin()
        try:
            with admin.connect() as conn:
                conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        finally:
            admin.dispose()
        self.created.append(name)

    def service_url(self, group: str, node: str, service: str) -> str:
        """The concrete URL of one service's database of one node (what the node itself opens)."""
        template = self.database_template(group)
        if template is None:
            directory = self.data_dir(group) / node
            directory.mkdir(parents=True, exist_ok=True)
            return f"sqlite:///{directory / f'{service}.db'}"
        return template.format(node=node, service=service)

    def close(self) -> None:
        if not self.created:
            return
        admin = self._admin()
        try:
            with admin.connect() as conn:
                for name in self.created:
                    conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        finally:
            admin.dispose()
        self.created.clear()


@dataclass
class NodeProcess:
    """One node (or one service's api process) as its own OS process on a free loopback port."""

    code: str
    backend: Backend
    group: str
    parent: str | None = None
    workers: int = 16
    command: Sequence[str] = ("node",)
    services: Sequence[str] = BUSINESS_SERVICES
    replica: int = 0  # the second and later api processes of one node (``lianxin bench --intake-replicas``)
    env: Mapping[str, str] = field(default_factory=dict)  # over NODE_ENV (``lianxin bench --stored``: rate limit on)
    port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None, f"node {self.code} not started"
        return self.process.pid

    @property
    def log_path(self) -> Path:
        suffix = f"-{self.replica}" if self.replica else ""
        return self.backend.workdir / "logs" / f"{self.group}-{self.code}{suffix}.log"

    def start(self) -> NodeProcess:
        self.backend.prepare(self.group, self.code)
        env = {
            **harness_environ(),
            **NODE_ENV,
            "LIANXIN_NODE": self.code,
            "LIANXIN_DATA_DIR": str(self.backend.data_dir(self.group)),
            "LIANXIN_GRPC_PORT": str(self.port),
            "LIANXIN_METRICS_PORT": str(self.metrics_port),
            "LIANXIN_GRPC_WORKERS": str(self.workers),
            **self.env,
        }
        if self.parent:
            env["LIANXIN_PARENT"] = self.parent
        template = self.backend.database_template(self.group)
        if template is not None:
            env["LIANXIN_DATABASE_URL"] = template
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "services.cli", *self.command],
                env=env,
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    def wait_ready(self, timeout: float = 120.0) -> None:
        try:
            wait_serving(self.address, timeout, self.process, services=self.services)
        except (RuntimeError, TimeoutError) as error:
            raise RuntimeError(f"node {self.code} ({self.group}) did not start: {error}\n{self.log_tail()}") from None

    def _metric_sum(self, name: str, keep: Callable[[dict[str, str]], bool] = lambda _labels: True) -> int:
        """The sum of the samples of metric family ``name`` on this process's /metrics whose labels ``keep``."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as response:
            families = text_string_to_metric_families(response.read().decode())
        return int(
            sum(
                sample.value
                for family in families
                if family.name == name
                for sample in family.samples
                if not sample.name.endswith("_created") and keep(sample.labels)
            )
        )

    def calls_handled(self, method: str) -> int:
        """How many ``method`` calls (``Service/Method``) this process answered, from its /metrics."""
        service, name = method.rsplit("/", 1)
        return self._metric_sum(
            "lianxin_grpc_server_handled",
            lambda labels: labels.get("service") == service and labels.get("method") == name,
        )

    def outbox_backlog(self) -> int:
        """Outbox rows of all the node's services not yet handed to their consumers (/metrics reads them)."""
        return self._metric_sum("lianxin_outbox_backlog")

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, grace: float = STOP_GRACE_S) -> None:
        stop_all([self], grace)


def stop_all(nodes: Sequence[NodeProcess], grace: float = STOP_GRACE_S) -> None:
    """SIGTERM to every node at once, then SIGKILL to those still running after ``grace`` seconds.

    The data is thrown away after a run, so a node still working off its event backlog need not finish.
    """
    processes = []
    for node in nodes:
        process, node.process = node.process, None
        if process is not None:
            processes.append(process)
    terminate(processes, grace)


def terminate(processes: Sequence[subprocess.Popen[bytes]], grace_s: float) -> None:
    """SIGTERM to every process still running, then SIGKILL to those left after ``grace_s`` seconds."""
    running = [process for process in processes if process.poll() is None]
    for process in running:
        process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for process in running:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class EchoProcess:
    """The bare grpcio echo server (``bench.harness.echo``) in its own process."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.process: subprocess.Popen[str] | None = None
        self.address = ""

    def start(self, timeout: float = 60.0) -> EchoProcess:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.harness.echo", "--workers", str(self.workers)],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        line = self.process.stdout.readline().strip()  # the server prints its address when it serves
        if not line or time.monotonic() > deadline:
            self.stop()
            raise RuntimeError("the echo server did not start")
        self.address = line
        return self

    @property
    def pids(self) -> tuple[int, ...]:
        return () if self.process is None else (self.process.pid,)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        with contextlib.suppress(OSError):
            if process.stdin is not None:
                process.stdin.close()
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
