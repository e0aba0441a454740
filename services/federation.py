"""The embedded federation of DESIGN §9: one OS process per node on loopback, supervised together."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.cli import EXIT_UNAVAILABLE
from services.common.crypto import node_secret
from services.common.names import SERVICE_NAMES
from services.common.regions import DEFAULT_TOPOLOGY as DEFAULT_TOPOLOGY  # re-exported: `lianxin up` callers
from services.common.regions import RegionTree
from services.common.security import issue_token, load_token_key
from services.common.tls import NATIONAL_CODE, client_credentials, write_dev_pki
from services.topology import Topology, dump_topology

TOKEN_KEY_FILE = "token-key"

BUSINESS_SERVICES = tuple(SERVICE_NAMES.values())


@dataclass
class HostProcess:
    """One ``lianxin host`` process of a federation in host mode, serving its share of the topology."""

    index: int
    metrics_port: int
    process: subprocess.Popen[bytes] | None = None


@dataclass
class NodeProcess:
    code: str
    parent: str | None
    grpc_port: int
    metrics_port: int
    process: subprocess.Popen[bytes] | None = None
    web_port: int | None = None
    web: subprocess.Popen[bytes] | None = None
    host: int | None = None  # the host process serving this node (host mode), None: a process of its own

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def web_url(self) -> str | None:
        return f"http://127.0.0.1:{self.web_port}/" if self.web_port else None


def health_statuses(
    address: str,
    services: Sequence[str],
    timeout: float = 2.0,
    *,
    credentials: grpc.ChannelCredentials | None = None,
) -> dict[str, str]:
    """The standard grpc.health.v1 answer for each service name ("UNREACHABLE" if the call fails).

    ``credentials``: a node serving mutual TLS is asked over TLS with a client certificate.
    """
    out: dict[str, str] = {}
    channel = grpc.insecure_channel(address) if credentials is None else grpc.secure_channel(address, credentials)
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for name in services:
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=timeout)
                out[name] = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            except grpc.RpcError:
                out[name] = "UNREACHABLE"
    return out


NATIONAL_SERVICES = ("lianxin.national.v1.NationalService",)


class PortsInUse(ConnectionError):
    """A port the federation needs is taken by another process."""


def restart_delay(restarts: int, *, first_s: float = 1.0, cap_s: float = 60.0) -> float:
    """The wait before the ``restarts``-th restart in a row: 1, 2, 4, ... seconds, at most ``cap_s``."""
    return float(min(cap_s, first_s * 2 ** max(0, restarts - 1)))


def wait_serving(
    address: str,
    deadline_s: float,
    process: subprocess.Popen[bytes] | None = None,
    *,
    services: Sequence[str] = BUSINESS_SERVICES,
    credentials: grpc.ChannelCredentials | None = None,
) -> None:
    deadline = time.monotonic() + deadline_s
    last: dict[str, str] = {}
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process at {address} exited with {process.returncode}")
        last = health_statuses(address, services, timeout=1.0, credentials=credentials)
        if all(status == "SERVING" for status in last.values()):
            return
        time.sleep(0.2)  # polling a condition with a deadline, not ordering
    raise TimeoutError(f"{address} not SERVING within {deadline_s}s: {last}")


def wait_http(url: str, deadline_s: float, process: subprocess.Popen[bytes] | None = None) -> None:
    """Wait until ``url`` answers 200 (a web gateway's /healthz)."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process for {url} exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1.0) as reply:
                if reply.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)  # polling a condition with a deadline, not ordering
    raise TimeoutError(f"{url} not answering within {deadline_s}s")


class Federation:
    """Starts the nodes parents-first, waits until each serves, stops them children-first."""

    def __init__(
        self,
        *,
        data_dir: Path,
        base_port: int = 7400,
        metrics_base_port: int = 9400,
        topology: Sequence[tuple[str, str | None]] = DEFAULT_TOPOLOGY,
        extra_env: dict[str, str] | None = None,
        with_national: bool = True,
        web_base_port: int | None = None,
        secure: bool = False,
        placement: Topology | None = None,
    ) -> None:
        self.data_dir = data_dir
        # Host mode (services/host.py): the placement's hosts each serve many nodes in one process.
        self.placement = placement
        if placement is not None:
            topology = placement.nodes
        # Secure: a CA and node certificates in data_dir/pki, mutual TLS on every link and client
        # (the national simulator's too, with its own certificate), operator tokens on, a token key
        # and data keys per node; each web gateway calls its node with the node's certificate and
        # signs its operators' tokens with the node's key.
        self.secure = secure
        self.extra_env = extra_env or {}
        self.base_port = base_port
        self.nodes = [
            NodeProcess(code, parent, base_port + i, metrics_base_port + i) for i, (code, parent) in enumerate(topology)
        ]
        self.hosts: list[HostProcess] = []
        if placement is not None:
            # One /metrics port per host process (its registry is the process's), none per node.
            self.hosts = [HostProcess(i, metrics_base_port + i) for i in range(placement.hosts)]
            for node in self.nodes:
                node.host = placement.host_of[node.code]
        # One web gateway per node (services/web), numbered from web_base_port; None starts none.
        if web_base_port is not None:
            for i, node in enumerate(self.nodes):
                node.web_port = web_base_port + i
        # The national system simulator sits above the province, on the port after the nodes'.
        self.national_port: int | None = base_port + len(self.nodes) if with_national else None
        self.national: subprocess.Popen[bytes] | None = None

    def node(self, code: str) -> NodeProcess:
        return next(n for n in self.nodes if n.code == code)

    @property
    def national_address(self) -> str | None:
        return f"127.0.0.1:{self.national_port}" if self.national_port else None

    def ports(self) -> list[tuple[int, str]]:
        """Every port the federation will listen on, with what it is for."""
        ports = [(n.grpc_port, f"node {n.code} gRPC") for n in self.nodes]
        if self.hosts:
            ports += [(h.metrics_port, f"host {h.index} metrics") for h in self.hosts]
        else:
            ports += [(n.metrics_port, f"node {n.code} metrics") for n in self.nodes]
        ports += [(n.web_port, f"node {n.code} web gateway") for n in self.nodes if n.web_port is not None]
        if self.national_port:
            ports.append((self.national_port, "national simulator"))
        return ports

    def check_ports_free(self) -> None:
        """Refuse to start over another listener: health checks would be answered by it, not by us."""
        taken = []
        for port, what in self.ports():
            with socket.socket() as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    probe.bind(("127.0.0.1", port))
                except OSError:
                    taken.append(f"{port} ({what})")
        if taken:
            raise PortsInUse(
                f"port {', '.join(taken)} already in use (another federation?); choose --base-port/--metrics-port"
            )

    @property
    def pki_dir(self) -> Path:
        return self.data_dir / "pki"

    def token_key_file(self, code: str) -> Path:
        return self.data_dir / code / TOKEN_KEY_FILE

    def credentials_for(self, code: str) -> grpc.ChannelCredentials | None:
        """Client credentials presenting ``code``'s certificate (None when not secure)."""
        return client_credentials(self.pki_dir, code) if self.secure else None

    def admin_tokens(self, ttl_s: int = 8 * 3600) -> dict[str, str]:
        """An admin token per node, signed with that node's own token key (secure only)."""
        return {
            n.code: issue_token(
                load_token_key(str(self.token_key_file(n.code))),
                subject="admin",
                node=n.code,
                roles=["admin"],
                ttl_s=ttl_s,
            )
            for n in self.nodes
        }

    def operator_channel(self, address: str) -> grpc.Channel:
        """A channel to a member of the federation as its operator would open it (``lianxin demo``).

        Secure: mutual TLS with that node's certificate and its admin token on every call (the
        national simulator: its own certificate, no token); otherwise plaintext."""
        if not self.secure:
            return grpc.insecure_channel(address)
        code = next((n.code for n in self.nodes if n.address == address), NATIONAL_CODE)
        credentials = client_credentials(self.pki_dir, code)
        assert credentials is not None
        if code != NATIONAL_CODE:
            token = self.admin_tokens()[code]
            credentials = grpc.composite_channel_credentials(credentials, grpc.access_token_call_credentials(token))
        return grpc.secure_channel(address, credentials)

    def _secure_env(self, code: str, *, codes: Sequence[str] = ()) -> dict[str, str]:
        """``codes``: the nodes of a host, each with its own key file ({node} in LIANXIN_TOKEN_KEY)."""
        if not self.secure:
            return {}
        for each in codes or (code,):
            node_secret(self.data_dir / each, TOKEN_KEY_FILE)  # the node's own token key, made once
        return {
            "LIANXIN_TLS_DIR": str(self.pki_dir),
            "LIANXIN_REQUIRE_MTLS": "1",
            "LIANXIN_AUTH": "1",
            "LIANXIN_TOKEN_KEY": str(self.token_key_file(code)),
        }

    def start(self, *, ready_timeout_s: float = 120.0, progress: Callable[[str], None] | None = None) -> None:
        """Start the simulator and the nodes parents first; ``progress`` hears of each one serving."""
        say = progress or (lambda _line: None)
        self.check_ports_free()
        if self.secure:
            # The CA is kept, node certificates (and the national simulator's) renewed.
            write_dev_pki(self.pki_dir, [n.code for n in self.nodes] + ([NATIONAL_CODE] if self.national_port else []))
        started = time.monotonic()
        if self.national_port:
            self.national = self._spawn_national()
            wait_serving(
                self.national_address or "",
                ready_timeout_s,
                self.national,
                services=NATIONAL_SERVICES,
                credentials=self.credentials_for(NATIONAL_CODE),
            )
            say(f"  national simulator SERVING on {self.national_address} ({time.monotonic() - started:.1f} s)")
        if self.hosts:
            self._start_hosts(ready_timeout_s, say, started)
            self._start_web(ready_timeout_s)
            return
        # Parents first, tier by tier: a child's link then finds its parent up from the start.
        for wave in self._waves():
            for node in wave:
                node.process = self._spawn(node)
            for node in wave:
                self._wait_node(node, time.monotonic() + ready_timeout_s, say)
                say(f"  {node.code} SERVING on {node.address} ({time.monotonic() - started:.1f} s)")
        self._start_web(ready_timeout_s)

    def _wait_node(self, node: NodeProcess, deadline: float, say: Callable[[str], None]) -> None:
        """Wait for ``node`` to serve; a node whose database was out of reach at its start is started again.

        A PostgreSQL shared with other work can have every connection slot taken for a moment: the
        node then exits with 4 (unavailable) before serving, as it should, and a later try finds a slot.
        """
        restarts = 0
        while True:
            try:
                wait_serving(
                    node.address,
                    max(1.0, deadline - time.monotonic()),
                    node.process,
                    credentials=self.credentials_for(node.code),
                )
                return
            except RuntimeError:
                if node.process is None or node.process.returncode != EXIT_UNAVAILABLE:
                    raise
                restarts += 1
                delay = restart_delay(restarts, cap_s=10.0)
                if time.monotonic() + delay >= deadline:
                    raise
                say(f"  {node.code} found its database unavailable; starting it again in {delay:.0f} s")
                time.sleep(delay)  # backoff before a restart, not ordering
                node.process = self._spawn(node)

    @property
    def topology_file(self) -> Path:
        return self.data_dir / "topology.yaml"

    def _start_hosts(self, ready_timeout_s: float, say: Callable[[str], None], started: float) -> None:
        """The root's host first, then every other host at once; each node is waited for by its port."""
        assert self.placement is not None
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.topology_file.write_text(dump_topology(self.placement), encoding="utf-8")
        for wave in (self.hosts[:1], self.hosts[1:]):
            for host in wave:
                host.process = self._spawn_host(host)
            for host in wave:
                for node in (n for n in self.nodes if n.host == host.index):
                    remaining = ready_timeout_s - (time.monotonic() - started)
                    wait_serving(node.address, remaining, host.process, credentials=self.credentials_for(node.code))
                    elapsed = time.monotonic() - started
                    say(f"  {node.code} SERVING on {node.address} (host {host.index}, {elapsed:.1f} s)")

    def _spawn_host(self, host: HostProcess) -> subprocess.Popen[bytes]:
        codes = [n.code for n in self.nodes if n.host == host.index]
        env = {
            **os.environ,
            **self.extra_env,
            "LIANXIN_DATA_DIR": str(self.data_dir),
            "LIANXIN_VIDEO_PEERS": ",".join(f"{n.code}={n.address}" for n in self.nodes),
            **self._secure_env(codes[0], codes=codes),
        }
        if self.secure:
            env["LIANXIN_TOKEN_KEY"] = str(self.data_dir / "{node}" / TOKEN_KEY_FILE)
        command = [sys.executable, "-m", "services.cli", "host", "--topology", str(self.topology_file)]
        command += ["--host-index", str(host.index), "--base-port", str(self.base_port)]
        command += ["--metrics-port", str(host.metrics_port)]
        if self.national_address:
            command += ["--national", self.national_address]
        return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)

    def _start_web(self, ready_timeout_s: float) -> None:
        for node in self.nodes:
            if node.web_port is not None:
                node.web = self._spawn_web(node)
        for node in self.nodes:
            if node.web is not None and node.web_url is not None:
                wait_http(f"{node.web_url}healthz", ready_timeout_s, node.web)

    def _spawn_national(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "services.cli", "national-sim", "--port", str(self.national_port)]
            + (["--tls-dir", str(self.pki_dir)] if self.secure else []),
            env={**os.environ, **self.extra_env},
            stdout=subprocess.DEVNULL,
        )

    def _spawn(self, node: NodeProcess) -> subprocess.Popen[bytes]:
        by_code = {n.code: n for n in self.nodes}
        env = {
            **os.environ,
            **self.extra_env,
            "LIANXIN_NODE": node.code,
            "LIANXIN_DATA_DIR": str(self.data_dir),
            "LIANXIN_GRPC_PORT": str(node.grpc_port),
            "LIANXIN_METRICS_PORT": str(node.metrics_port),
            # Every node knows every other node's endpoint for joint video receptions (cross-node holds).
            "LIANXIN_VIDEO_PEERS": ",".join(f"{n.code}={n.address}" for n in self.nodes),
            **self._secure_env(node.code),
        }
        if node.parent:
            env["LIANXIN_PARENT"] = by_code[node.parent].address
        elif self.national_address:
            env["LIANXIN_NATIONAL"] = self.national_address
        return subprocess.Popen([sys.executable, "-m", "services.cli", "node"], env=env)

    def _spawn_web(self, node: NodeProcess) -> subprocess.Popen[bytes]:
        env = {
            **os.environ,
            **self.extra_env,
            "LIANXIN_NODE": node.code,
            "LIANXIN_DATA_DIR": str(self.data_dir),
            "LIANXIN_WEB_PORT": str(node.web_port),
            "LIANXIN_WEB_GRPC": node.address,
            **self._secure_env(node.code),
        }
        return subprocess.Popen([sys.executable, "-m", "services.cli", "web"], env=env, stdout=subprocess.DEVNULL)

    def _waves(self) -> list[list[NodeProcess]]:
        depth: dict[str, int] = {}
        for node in self.nodes:  # the topology lists parents before children
            depth[node.code] = depth[node.parent] + 1 if node.parent else 0
        return [[n for n in self.nodes if depth[n.code] == d] for d in sorted(set(depth.values()))]

    def describe(self, regions: RegionTree) -> str:
        web = any(n.web_url for n in self.nodes)
        lines = [
            f"{'node':<8} {'region':<16} {'tier':<9} {'grpc':<17} {'metrics':<31} "
            + (f"{'web':<24} " if web else "")
            + "parent"
        ]
        for node in self.nodes:
            region = regions.get(node.code)
            # A hosted node's figures are on its host's /metrics (one per process).
            metrics = node.metrics_port if node.host is None else self.hosts[node.host].metrics_port
            lines.append(
                f"{node.code:<8} {regions.display_name(node.code):<16} {region.tier.value:<9} "
                f"{node.address:<17} {f'http://127.0.0.1:{metrics}/metrics':<31} "
                + (f"{node.web_url or '-':<24} " if web else "")
                + f"{node.parent or ('national' if self.national_address else '-')}"
            )
        if self.national_address:
            lines.append(
                f"{'national':<8} {'国家信访信息系统 (simulator)':<16} {'national':<9} {self.national_address}"
            )
        return "\n".join(lines)

    def wait(self) -> int:
        """Block until a node or the simulator dies (returns its exit code) or we are interrupted."""
        while True:
            for process in self._processes():
                if process is not None and process.poll() is not None:
                    return process.returncode or 1
            time.sleep(0.5)  # supervision poll

    def _processes(self) -> list[subprocess.Popen[bytes] | None]:
        return (
            [n.process for n in self.nodes]
            + [h.process for h in self.hosts]
            + [n.web for n in self.nodes]
            + [self.national]
        )

    def supervise(self, report: Callable[[str], None], stop: threading.Event) -> None:
        """Keep every process running until ``stop``: one that dies (a node, its web gateway, the
        simulator) is started again after a backoff (1 s, doubling to 60 s; back to 1 s once it has
        run a minute), and each event is reported."""
        members: list[tuple[NodeProcess | HostProcess | None, str]] = [(host, "host") for host in self.hosts]
        members += [(node, "node") for node in self.nodes if node.host is None]
        members += [(node, "web gateway") for node in self.nodes if node.web_port is not None]
        if self.national_port:
            members.append((None, "national simulator"))
        restarts: dict[str, int] = {}
        due: dict[str, float] = {}
        began: dict[str, float] = {}
        while not stop.wait(0.5):  # supervision poll
            now = time.monotonic()
            for node, kind in members:
                name = f"{kind} {node.index if isinstance(node, HostProcess) else node.code}" if node else kind
                if name in due:
                    if now >= due[name]:
                        del due[name]
                        self._respawn(node, kind)
                        began[name] = now
                        report(f"{name} restarted (restart {restarts[name]})")
                    continue
                process = self._process_of(node, kind)
                if process is None or process.poll() is None:
                    if now - began.setdefault(name, now) > 60:
                        restarts[name] = 0
                    continue
                restarts[name] = restarts.get(name, 0) + 1
                delay = restart_delay(restarts[name])
                due[name] = now + delay
                report(f"{name} exited with {process.returncode}; restarting in {delay:.0f} s")

    def _process_of(self, node: NodeProcess | HostProcess | None, kind: str) -> subprocess.Popen[bytes] | None:
        if node is None:
            return self.national
        if isinstance(node, HostProcess):
            return node.process
        return node.web if kind == "web gateway" else node.process

    def _respawn(self, node: NodeProcess | HostProcess | None, kind: str) -> None:
        if node is None:
            self.national = self._spawn_national()
        elif isinstance(node, HostProcess):
            node.process = self._spawn_host(node)
        elif kind == "web gateway":
            node.web = self._spawn_web(node)
        else:
            node.process = self._spawn(node)

    def stop(self, grace: float = 10.0) -> None:
        processes = [n.web for n in self.nodes] + [n.process for n in reversed(self.nodes)]
        processes += [h.process for h in reversed(self.hosts)] + [self.national]
        for process in processes:
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for process in processes:
            if process is None:
                continue
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def demo_sign_in(federation: Federation) -> str:
    """Create each node's demo operator accounts for the web console (once) and say how to sign in.

    Here, not in the web gateway: the demo accounts need each node's routing catalogue, and only the
    federation, which assembles every service, may look into more than one of them.
    """
    from services.common.regions import RegionTree
    from services.routing.jurisdiction import load_catalogue
    from services.web.accounts import AccountStore, ensure_demo_accounts

    tree = RegionTree.load()
    nodes = []
    for node in federation.nodes:
        catalogue = load_catalogue(node.code, tree)
        handling = catalogue.unit_for("环境保护", node.code) or catalogue.default_unit or ""
        nodes.append((node.code, tree.get(node.code).tier.value, catalogue.default_unit or "", handling))
    data_dir = Path(federation.data_dir)
    accounts = ensure_demo_accounts(
        AccountStore(data_dir / "web-accounts.json"), nodes, password_file=data_dir / "web-demo-passwords.json"
    )
    url = {n.code: n.web_url for n in federation.nodes}
    lines = ["", "web console demo sign-in (accounts in web-accounts.json, passwords in web-demo-passwords.json):"]
    for account in accounts:
        lines.append(
            f"  {url[account.node]}console  {account.username:<20} {account.password:<14} {','.join(account.roles)}"
            + (f" (unit {account.unit})" if account.unit else "")
        )
    lines.append("citizen portal: the web URL of any node, e.g. " + (url.get("511102") or ""))
    return "\n".join(lines)
