"""Node processes the harness starts, kills (-9) and restarts: production (api + worker) and embedded.

``ProductionNode`` is one node as ten processes, as in production (docs/operations.md): for each
service ``lianxin serve --service X`` (the api, plain grpcio) and ``lianxin worker --service X``
(nameko over RabbitMQ), on PostgreSQL. ``EmbeddedNode`` is ``lianxin node``: the five services in
one process on SQLite with the in-process bus, with ``LIANXIN_PARENT`` pointing at its parent
(or at a proxy in front of it).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bench.harness.procs import free_port, harness_environ, terminate
from services.common.settings import SERVICES
from services.federation import health_statuses, wait_serving

SERVICE_NAMES = {
    "intake": "lianxin.intake.v1.IntakeService",
    "routing": "lianxin.routing.v1.RoutingService",
    "exchange": "lianxin.exchange.v1.ExchangeService",
    "video": "lianxin.video.v1.VideoService",
    "stats": "lianxin.stats.v1.StatsService",
}

# setpriv (util-linux) sets the parent-death signal and then execs the command. Not a preexec_fn: with
# one, Python forks (instead of vfork), which runs grpc's fork handlers in the child; they restart grpc's
# event engine there (the harness's own load and health checks use grpc), and the child's close_fds
# then closes the new epoll fd under it before exec: "epoll_wait error: Bad file descriptor", SIGABRT,
# exit -6, logged in the spawned worker's log as if the worker had aborted (docs/faults.md).
_SETPRIV = shutil.which("setpriv")

COMMON_ENV = {
    "LIANXIN_METRICS_PORT": "0",
    "LIANXIN_LOG_LEVEL": "WARNING",
    "LIANXIN_RELAY_INTERVAL_S": "0.1",
    # The category model is not what is under test; cases carry their category.
    "LIANXIN_INTAKE_CLASSIFIER": "off",
}


def die_with_parent(argv: list[str]) -> list[str]:
    """``argv`` run so that it gets SIGKILL when the harness thread that starts it goes away.

    The harness may itself be killed -9 (a CI timeout); its node processes must not outlive it.
    Without setpriv (not Linux) the command runs as it is and simply does not get the signal.
    """
    return [_SETPRIV, "--pdeathsig", "KILL", "--", *argv] if _SETPRIV else list(argv)


def spawn_logged(argv: list[str], env: Mapping[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """Start a node process with stdout and stderr appended to ``log_path``, dying with the harness."""
    with open(log_path, "ab") as log:  # the child keeps its own copy of the fd
        return subprocess.Popen(die_with_parent(argv), env=env, stdout=log, stderr=subprocess.STDOUT)


def _lianxin(*args: str) -> list[str]:
    return [sys.executable, "-m", "services.cli", *args]


@dataclass
class ProductionNode:
    """One node's five services as api and worker processes (ten in all) on PostgreSQL and RabbitMQ."""

    node: str
    database_url: str
    amqp_uri: str
    logs: Path
    extra_env: Mapping[str, str] = field(default_factory=dict)
    api_ports: dict[str, int] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    # Processes that exited on their own (not killed by the harness): (monotonic time, name, exit code).
    crashes: list[tuple[float, str, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.RLock()
        self._down: set[str] = set()  # killed on purpose, not to be restarted by the supervisor
        self._stopping = threading.Event()
        self._supervisor: threading.Thread | None = None

    @property
    def env(self) -> dict[str, str]:
        return {
            **harness_environ(),
            **COMMON_ENV,
            "LIANXIN_NODE": self.node,
            "LIANXIN_DATABASE_URL": self.database_url,
            "LIANXIN_AMQP_URI": self.amqp_uri,
            "LIANXIN_DATA_DIR": str(self.logs / "data"),
            **self.extra_env,
        }

    def migrate(self) -> None:
        # Migrations are their own step in production (a Kubernetes Job).
        subprocess.run(_lianxin("migrate"), env=self.env, check=True, timeout=180, capture_output=True)

    def start(self, ready_timeout_s: float = 120.0) -> ProductionNode:
        self.logs.mkdir(parents=True, exist_ok=True)
        self.migrate()
        try:
            # Consumers' queues must exist before anything is published: workers first.
            for service in SERVICES:
                self.spawn(f"{service}-worker")
            for service in SERVICES:
                self.wait_ready(f"{service}-worker", ready_timeout_s)
            for service in SERVICES:
                self.spawn(f"{service}-api")
            for service in SERVICES:
                self.wait_ready(f"{service}-api", ready_timeout_s)
        except BaseException:
            self.stop()
            raise
        self._supervisor = threading.Thread(target=self._supervise, name="supervisor", daemon=True)
        self._supervisor.start()
        return self

    def _supervise(self) -> None:
        """Restart a process that exited on its own, as Kubernetes does (restartPolicy: Always), and note it."""
        while not self._stopping.wait(0.5):  # supervision poll
            with self._lock:
                for name, process in list(self.processes.items()):
                    if name not in self._down and process.poll() is not None and not self._stopping.is_set():
                        self.crashes.append((time.monotonic(), name, int(process.returncode)))
                        self.spawn(name)

    def spawn(self, name: str) -> None:
        """Start ``<service>-api`` or ``<service>-worker`` (again, after a kill)."""
        service, _, kind = name.partition("-")
        env = self.env
        if kind == "worker":
            env["LIANXIN_LOG_LEVEL"] = "INFO"  # its "worker started" line is how wait_ready sees it consuming
        if kind == "api":
            env["LIANXIN_GRPC_PORT"] = str(self.api_ports.setdefault(service, free_port()))  # the same port again
        with self._lock:
            argv = _lianxin("serve" if kind == "api" else "worker", "--service", service)
            self.processes[name] = spawn_logged(argv, env, self.logs / f"{name}.log")
            self._down.discard(name)

    def kill9(self, name: str) -> None:
        """SIGKILL; the process stays down until ``spawn(name)``."""
        with self._lock:
            self._down.add(name)
            process = self.processes[name]
            process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)

    def alive(self, name: str) -> bool:
        return self.processes[name].poll() is None

    def serving(self, service: str) -> bool:
        full = SERVICE_NAMES[service]
        return health_statuses(self.address(service), [full], timeout=1.0)[full] == "SERVING"

    def wait_ready(self, name: str, timeout_s: float = 60.0) -> None:
        """An api is ready when its health says SERVING; a worker once it logged "worker started".

        A worker logs that after its consumers declared their queues: an event published before
        then would find no queue and be dropped by RabbitMQ (services/common/nameko_worker.py).
        """
        service, _, kind = name.partition("-")
        deadline = time.monotonic() + timeout_s
        log = self.logs / f"{name}.log"
        while True:
            if not self.alive(name):
                raise RuntimeError(f"{name} exited with {self.processes[name].returncode}; see {log}")
            if self.serving(service) if kind == "api" else "worker started" in log.read_text(errors="replace"):
                return
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{name} not ready within {timeout_s:g} s; see {log}")
            time.sleep(0.1)  # polling a condition with a deadline

    def address(self, service: str) -> str:
        return f"127.0.0.1:{self.api_ports[service]}"

    def tracebacks(self) -> dict[str, str]:
        """The tail of every log that shows a traceback (for the report when something went wrong)."""
        out: dict[str, str] = {}
        for log in sorted(self.logs.glob("*.log")):
            text = log.read_text(errors="replace")
            if "Traceback" in text:
                out[log.stem] = text[-3000:]
        return out

    def stop(self, grace_s: float = 15.0) -> None:
        self._stopping.set()
        if self._supervisor is not None:
            self._supervisor.join(timeout=5)
        with self._lock:
            terminate(list(self.processes.values()), grace_s)


@dataclass
class EmbeddedNode:
    """``lianxin node``: one process, five services, SQLite, in-process bus; optionally a parent."""

    node: str
    data_dir: Path
    parent: str | None = None
    extra_env: Mapping[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, ready_timeout_s: float = 120.0) -> EmbeddedNode:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = {
            **harness_environ(),
            **COMMON_ENV,
            "LIANXIN_NODE": self.node,
            "LIANXIN_DATA_DIR": str(self.data_dir),
            "LIANXIN_GRPC_PORT": str(self.port),
            **self.extra_env,
        }
        if self.parent:
            env["LIANXIN_PARENT"] = self.parent
        self.process = spawn_logged(_lianxin("node"), env, self.data_dir / f"node-{self.node}.log")
        try:
            wait_serving(self.address, ready_timeout_s, self.process)
        except BaseException:
            self.stop()
            raise
        return self

    def kill9(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self, grace_s: float = 15.0) -> None:
        if self.process is not None:
            terminate([self.process], grace_s)
