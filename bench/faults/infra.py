"""Private PostgreSQL and RabbitMQ instances the harness owns, so it may stop and restart them.

The machine's shared PostgreSQL (:5432) and RabbitMQ (:5672) serve other people's tests and are
never touched. Each instance here lives in a temporary directory, listens on a free loopback port
and is bounded in time three ways: ``close()`` in the harness's ``finally``, an ``atexit`` hook,
and a watchdog process that tears it down when the harness process dies (even by ``kill -9``) or
when its lifetime runs out.

PostgreSQL refuses to run as root; when the harness runs as root, the cluster belongs to the
``postgres`` OS user and every command runs through ``runuser``. The RabbitMQ node likewise runs
as the ``rabbitmq`` user when there is one (its Erlang cookie then matches ``rabbitmqctl``'s).
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from bench.harness.procs import free_port

DEFAULT_LIFETIME_S = 3600.0


class CapabilityMissing(RuntimeError):
    """Something the harness needs is not on this machine (a binary, a user); ``what`` and ``why``."""

    def __init__(self, what: str, why: str) -> None:
        super().__init__(f"{what}: {why}")
        self.what = what
        self.why = why


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _as_user(user: str | None, argv: Sequence[str]) -> list[str]:
    if user is None:
        return list(argv)
    runuser = shutil.which("runuser")
    if runuser is None:
        raise CapabilityMissing("runuser", f"needed to run {argv[0]} as {user} (the harness runs as root)")
    return [runuser, "-u", user, "--", *argv]


def _chown_tree(path: Path, user: str | None) -> None:
    if user is None:
        return
    entry = pwd.getpwnam(user)
    for root, dirs, files in os.walk(path):
        for name in [root, *(os.path.join(root, d) for d in dirs), *(os.path.join(root, f) for f in files)]:
            os.chown(name, entry.pw_uid, entry.pw_gid)


def _wait(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} not ready within {timeout_s:g} s")
        time.sleep(0.1)  # polling a condition with a deadline


class _Watchdog:
    """A shell process that runs ``teardown`` when the harness process dies or the lifetime ends."""

    def __init__(self, teardown: str, lifetime_s: float) -> None:
        script = (
            "owner=$1; end=$(( $(date +%s) + $2 )); "
            'while kill -0 "$owner" 2>/dev/null && [ "$(date +%s)" -lt "$end" ]; do sleep 1; done; '
            f"{teardown}"
        )
        # Its own session: a Ctrl-C or a killpg aimed at the harness must not take the watchdog too.
        self.process = subprocess.Popen(
            ["sh", "-c", script, "watchdog", str(os.getpid()), str(int(lifetime_s))],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def cancel(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)


class PrivatePostgres:
    """A throw-away PostgreSQL cluster (initdb + pg_ctl) on a free loopback port, fsync on."""

    def __init__(self, *, root: Path | None = None, lifetime_s: float = DEFAULT_LIFETIME_S) -> None:
        self.bindir = self._find_bindir()
        self.user = "postgres" if os.geteuid() == 0 else None
        if self.user is not None and not _user_exists(self.user):
            raise CapabilityMissing("PostgreSQL", "running as root needs the 'postgres' OS user to own the cluster")
        self.root = Path(tempfile.mkdtemp(prefix="lianxin-faults-pg-", dir=root))
        self.data = self.root / "data"
        self.port = free_port()
        self.lifetime_s = lifetime_s
        self._watchdog: _Watchdog | None = None
        self._closed = False

    @staticmethod
    def _find_bindir() -> Path:
        candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name or 0))
        for directory in reversed(candidates):
            if (Path(directory) / "initdb").exists() and (Path(directory) / "pg_ctl").exists():
                return Path(directory)
        initdb = shutil.which("initdb")
        if initdb and shutil.which("pg_ctl"):
            return Path(initdb).parent
        raise CapabilityMissing("PostgreSQL server binaries", "no initdb/pg_ctl in /usr/lib/postgresql/*/bin or PATH")

    def _run(self, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            _as_user(self.user, [str(self.bindir / argv[0]), *argv[1:]]),
            check=True,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.root,  # runuser keeps the cwd; /root is not readable by postgres
        )

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> PrivatePostgres:
        """initdb (first time) and start; returns once the server accepts connections."""
        if not self.data.exists():
            _chown_tree(self.root, self.user)
            # --no-sync only skips flushing initdb's own files; the server runs with fsync on.
            self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync")
            atexit.register(self.close)
            teardown = " ".join(
                shlex.quote(a) for a in _as_user(self.user, [str(self.bindir / "pg_ctl"), "-D", str(self.data)])
            )
            self._watchdog = _Watchdog(
                f"{teardown} -m immediate -w stop; rm -rf {shlex.quote(str(self.root))}", self.lifetime_s
            )
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} -c fsync=on -c max_connections=300"
            " -c shared_buffers=64MB"
        )
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"), "-o", options, "-w", "start")
        _wait(lambda: port_open(self.port), 30, "private PostgreSQL")
        return self

    def stop(self, mode: str = "immediate") -> None:
        """``immediate`` is a crash (recovery on start); ``fast`` a clean shutdown that cuts sessions."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def create_database(self, name: str) -> str:
        self._run("psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-c", f'CREATE DATABASE "{name}"')
        return self.url(name)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            if (self.data / "postmaster.pid").exists():
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop", timeout=30)
        if self._watchdog is not None:
            self._watchdog.cancel()
        shutil.rmtree(self.root, ignore_errors=True)


class PrivateRabbitMQ:
    """A second RabbitMQ node (own name, ports, Mnesia and logs; no plugins) on loopback."""

    def __init__(self, *, root: Path | None = None, lifetime_s: float = DEFAULT_LIFETIME_S) -> None:
        self.server, self.ctl = self._find_binaries()
        self.user = "rabbitmq" if os.geteuid() == 0 and _user_exists("rabbitmq") else None
        self.root = Path(tempfile.mkdtemp(prefix="lianxin-faults-rabbit-", dir=root))
        self.port = free_port()
        self.dist_port = free_port()
        self.nodename = f"lianxin-faults-{os.getpid()}-{self.port}@localhost"
        self.lifetime_s = lifetime_s
        self._watchdog: _Watchdog | None = None
        self._closed = False
        self._prepared = False

    @staticmethod
    def _find_binaries() -> tuple[str, str]:
        # Debian's /usr/sbin wrappers re-run the scripts through `su`; the scripts themselves keep our env.
        direct = Path("/usr/lib/rabbitmq/bin")
        if (direct / "rabbitmq-server").exists() and (direct / "rabbitmqctl").exists():
            return str(direct / "rabbitmq-server"), str(direct / "rabbitmqctl")
        server, ctl = shutil.which("rabbitmq-server"), shutil.which("rabbitmqctl")
        if server is None or ctl is None:
            raise CapabilityMissing("RabbitMQ server", "no rabbitmq-server/rabbitmqctl binaries")
        return server, ctl

    @property
    def amqp_uri(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"

    @property
    def pid_file(self) -> Path:
        return self.root / "rabbit.pid"

    def _env(self) -> dict[str, str]:
        return {
            **os.environ,
            "RABBITMQ_NODENAME": self.nodename,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.root / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.root / "log"),
            "RABBITMQ_PID_FILE": str(self.pid_file),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.root / "enabled_plugins"),
            # Our own config file: the machine's may pin the listener to :5672.
            "RABBITMQ_CONFIG_FILE": str(self.root / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.root / "advanced.config"),
        }

    def ctl_run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            _as_user(self.user, [self.ctl, "-n", self.nodename, *args]),
            env=self._env(),
            check=True,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.root,
        )

    def _prepare(self) -> None:
        (self.root / "enabled_plugins").write_text("[].\n")  # no management plugin: a small, quick node
        (self.root / "rabbitmq.conf").write_text(
            f"listeners.tcp.local = 127.0.0.1:{self.port}\nlog.console = false\ndisk_free_limit.absolute = 50MB\n"
        )
        (self.root / "advanced.config").write_text("[].\n")
        _chown_tree(self.root, self.user)
        atexit.register(self.close)
        # Only if the pid still is our node's VM (a stale pid file may name somebody else's process).
        kill = (
            f"pid=$(cat {shlex.quote(str(self.pid_file))} 2>/dev/null) && "
            f'grep -qa {shlex.quote(self.nodename)} "/proc/$pid/environ" && kill -9 "$pid"'
        )
        self._watchdog = _Watchdog(f"{kill}; rm -rf {shlex.quote(str(self.root))}", self.lifetime_s)
        self._prepared = True

    def start(self, timeout_s: float = 90) -> PrivateRabbitMQ:
        """Start the node (detached) and return once it accepts AMQP connections."""
        if not self._prepared:
            self._prepare()
        subprocess.run(
            _as_user(self.user, [self.server, "-detached"]),
            env=self._env(),
            check=True,
            capture_output=True,
            timeout=60,
            cwd=self.root,
        )
        deadline = time.monotonic() + timeout_s
        # -detached returns at once; the node registers with epmd a moment later, then boots.
        _wait(lambda: port_open(self.port), timeout_s, f"RabbitMQ node {self.nodename}")
        remaining = max(5, int(deadline - time.monotonic()))
        self.ctl_run("await_startup", "--timeout", str(remaining), timeout=remaining + 15)
        return self

    def stop(self) -> None:
        """A full, clean broker shutdown (the node process exits); ``start()`` brings it back."""
        self.ctl_run("shutdown", timeout=120)

    def kill(self) -> None:
        """The broker dies without warning (SIGKILL of the Erlang VM)."""
        pid = self._vm_pid()
        if pid is not None:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
            _wait(lambda: not Path(f"/proc/{pid}").exists() or not port_open(self.port), 30, "RabbitMQ node gone")

    def _vm_pid(self) -> int | None:
        """The Erlang VM's pid, if the pid file names a live process that is this node."""
        try:
            pid = int(self.pid_file.read_text().strip())
            environ = Path(f"/proc/{pid}/environ").read_bytes()  # the node name is passed in the env
        except (OSError, ValueError):
            return None
        return pid if self.nodename.encode() in environ else None

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._prepared:
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                if port_open(self.port):
                    self.ctl_run("shutdown", timeout=60)
            self.kill()
        if self._watchdog is not None:
            self._watchdog.cancel()
        shutil.rmtree(self.root, ignore_errors=True)
