"""Host mode: one process serving many regional nodes (a city and its counties, a province's tree).

Each node stays a node of its own: its region code, its databases (SQLite files under
``data_dir/<node>/`` or its own PostgreSQL schemas), its outbox, cursors, keys and certificate, and
its own gRPC port, exactly as ``lianxin node`` would run it. One port per node, not one listener
routing by node: every client, link, probe and certificate check then works unchanged, and a node
can leave the host for a process of its own by changing nothing but where it runs.

Shared by the nodes of a host: the imported code and the region list, one gRPC thread pool (its
threads start only when calls arrive), and one /metrics port for the process.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime

from services.common.regions import RegionTree
from services.common.service import utc_now
from services.common.settings import Settings
from services.common.waiting import LinkDriver
from services.node import Node, long_poll_threads
from services.topology import Topology

log = logging.getLogger(__name__)

# gRPC worker threads a host may start per node it serves (they start on demand, so idle costs nothing).
WORKERS_PER_NODE = 4


@dataclass(frozen=True)
class HostedNode:
    """One node of a host: its code, its port (0 picks one) and where its parent is.

    ``parent_address``: the parent's host:port outside this host, or None when ``parent_code`` is
    served by this same host (its address is known once it has started) or the node is a root.
    """

    code: str
    grpc_port: int = 0
    parent_code: str | None = None
    parent_address: str | None = None
    national: str | None = None


class Host:
    """Starts its nodes parents first in one process and stops them children first."""

    def __init__(
        self,
        settings: Settings,
        nodes: Sequence[HostedNode],
        *,
        regions: RegionTree | None = None,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.settings = settings
        self.members = list(nodes)
        self.regions = regions or RegionTree.load(settings.regions_file)
        self.clock = clock
        self.nodes: dict[str, Node] = {}
        # The process's link driver holds a thread per waiting PullDown: one per child link of the host,
        # or a host's counties would queue behind four threads for their cities' long polls.
        self.link_driver = LinkDriver(workers=len(self.members) + 4)
        LinkDriver.share(self.link_driver)
        # Plus a thread for each long poll the nodes' children may hold (services/node.py).
        self.executor = ThreadPoolExecutor(
            max_workers=max(settings.grpc_workers, WORKERS_PER_NODE * len(self.members))
            + sum(long_poll_threads(self.regions, member.code) for member in self.members),
            thread_name_prefix="grpc-host",
        )

    def node(self, code: str) -> Node:
        return self.nodes[code]

    def settings_for(self, member: HostedNode, first: bool) -> Settings:
        parent = member.parent_address
        if parent is None and member.parent_code is not None:
            if member.parent_code not in self.nodes:
                raise ValueError(f"node {member.code}: its parent {member.parent_code} must be listed before it")
            parent = self.nodes[member.parent_code].address
        token_key = self.settings.token_key
        return self.settings.with_overrides(
            node=member.code,
            parent=parent,
            national=member.national,
            grpc_port=member.grpc_port,
            # One /metrics per process: the registry is the process's, a port per node would repeat it.
            metrics_port=self.settings.metrics_port if first else None,
            # One plaintext health port per process too (Kubernetes probes): it answers for the first node.
            health_port=self.settings.health_port if first else None,
            # A public port is one node's (LIANXIN_PUBLIC_PORT): a host's nodes would all claim it.
            public_port=None,
            # A host's nodes each have their own token key file (``{node}`` in LIANXIN_TOKEN_KEY).
            token_key=token_key.replace("{node}", member.code) if token_key else None,
        )

    def start(self, progress: Callable[[Node], None] | None = None) -> Host:
        try:
            for i, member in enumerate(self.members):
                if member.code in self.nodes:
                    raise ValueError(f"node {member.code} is listed twice")
                settings = self.settings_for(member, first=i == 0)
                node = Node(settings, regions=self.regions, clock=self.clock, executor=self.executor)
                # Registered before start so stop() closes a node that started halfway.
                self.nodes[member.code] = node
                node.start()
                if progress is not None:
                    progress(node)
        except BaseException:
            self.stop(grace=1.0)
            raise
        log.info("host started", extra={"nodes": len(self.nodes)})
        return self

    def stop(self, grace: float = 5.0) -> None:
        """Children first (their last pushes reach a parent still serving), then the shared pool."""
        for code in reversed(list(self.nodes)):
            node = self.nodes[code]
            try:
                node.stop(grace if node.server is not None else 0.0)
            except Exception:
                log.exception("node stop failed", extra={"node": code})
        self.link_driver.stop()
        self.executor.shutdown(wait=True, cancel_futures=True)


def members_from_codes(
    codes: Sequence[str], regions: RegionTree, *, parent: str | None, national: str | None
) -> list[HostedNode]:
    """``lianxin host --nodes``: a node whose parent is in the list links to it in this process; the
    others link to ``parent`` (LIANXIN_PARENT), a root to ``national``. Ports are picked freely."""
    listed = set(codes)
    members = []
    for code in codes:
        if code not in regions:
            raise ValueError(f"--nodes: {code} is not a known region code")
        up = regions.parent(code)
        if up in listed:
            members.append(HostedNode(code, parent_code=up))
        else:
            members.append(HostedNode(code, parent_address=parent, national=None if parent else national))
    # Parents first: a node's in-process parent must have its address before the node starts.
    depth = {code: len(regions.ancestors(code)) for code in codes}
    return sorted(members, key=lambda m: depth[m.code])


def members_from_topology(
    topology: Topology, host: int, *, base_port: int, host_address: str, national: str | None
) -> list[HostedNode]:
    """``lianxin host --topology FILE --host-index N``: the host's share, ports and parents by the file."""
    members = []
    for code, parent in topology.members(host):
        port = base_port + topology.index(code)
        if parent is None:
            members.append(HostedNode(code, port, national=national))
        elif topology.host_of[parent] == host:
            members.append(HostedNode(code, port, parent_code=parent))
        else:
            members.append(HostedNode(code, port, parent_address=topology.address(parent, base_port, host_address)))
    return members
