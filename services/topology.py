"""Federation topologies for ``lianxin up --topology`` and ``lianxin host``: which nodes, their parents,
which host process serves each, and each node's port.

A topology file is YAML (docs/operations.md, "Many nodes in one process")::

    hosts: 2            # optional: how many host processes serve the tree (default: one per node group)
    tree:               # each key a 6-digit region code from the region list, its value its children
      "510000":
        "511100":
          "511102":
          "511111":

Plain rules, no grpc: the CLI, the federation and Kubernetes (the StatefulSet's ordinal is the host
index) all derive the same placement and ports from the same file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from services.common.regions import RegionTree


class TopologyError(ValueError):
    """A topology that cannot be served; the message is one line naming the place and the reason."""


# Above this many nodes a host process is split (GIL and startup time grow with the nodes of one process).
NODES_PER_HOST = 70


@dataclass(frozen=True)
class Topology:
    """Nodes parents first, each with its parent (None for the root) and its host index."""

    nodes: tuple[tuple[str, str | None], ...]
    host_of: Mapping[str, int]

    @property
    def hosts(self) -> int:
        return max(self.host_of.values()) + 1

    def index(self, code: str) -> int:
        return [c for c, _ in self.nodes].index(code)

    def members(self, host: int) -> list[tuple[str, str | None]]:
        """The nodes host ``host`` serves, parents first."""
        if not 0 <= host < self.hosts:
            raise TopologyError(f"host index {host}: the topology has hosts 0..{self.hosts - 1}")
        return [(code, parent) for code, parent in self.nodes if self.host_of[code] == host]

    def address(self, code: str, base_port: int, host_address: str = "127.0.0.1") -> str:
        """Where node ``code`` listens: its host's address (``{host}`` is the host index) and base+index."""
        return f"{host_address.format(host=self.host_of[code])}:{base_port + self.index(code)}"


def place(nodes: Sequence[tuple[str, str | None]], hosts: int | None = None) -> Topology:
    """Put the root alone on host 0 (every link ends there) and each child subtree of the root whole on
    one of the other hosts, largest first onto the least loaded, so a city and its counties share a
    process and a county's link to its city never leaves it. ``hosts=None``: about NODES_PER_HOST each."""
    if not nodes:
        raise TopologyError("tree: no nodes")
    root = nodes[0][0]
    if len(nodes) == 1:
        return Topology(tuple(nodes), {root: 0})
    branches: dict[str, list[str]] = {}
    top_of: dict[str, str] = {}
    for code, parent in nodes[1:]:
        top = code if parent == root else top_of[parent or ""]
        top_of[code] = top
        branches.setdefault(top, []).append(code)
    if hosts is None:
        hosts = 1 + max(1, -(-(len(nodes) - 1) // NODES_PER_HOST))
    if hosts < 1:
        raise TopologyError(f"hosts: must be at least 1, got {hosts}")
    host_of = {root: 0}
    if hosts == 1:
        host_of.update({code: 0 for code, _ in nodes})
        return Topology(tuple(nodes), host_of)
    load = [0] * (hosts - 1)
    for _top, members in sorted(branches.items(), key=lambda item: (-len(item[1]), item[0])):
        target = min(range(hosts - 1), key=lambda h: (load[h], h))
        load[target] += len(members)
        host_of.update({code: 1 + target for code in members})
    return Topology(tuple(nodes), host_of)


def region_topology(root: str, regions: RegionTree, hosts: int | None = None) -> Topology:
    """``root`` and every region below it in the shipped list (``sichuan``: 1 + 21 + 183 nodes)."""
    nodes = [(code, regions.parent(code) if code != root else None) for code in regions.subtree(root)]
    return place(_parents_first(nodes), hosts)


def _parents_first(nodes: list[tuple[str, str | None]]) -> list[tuple[str, str | None]]:
    depth: dict[str, int] = {}
    for code, parent in nodes:  # depth-first order already has each parent before its children
        depth[code] = depth[parent] + 1 if parent else 0
    return sorted(nodes, key=lambda node: depth[node[0]])


def parse_topology(text: str, regions: RegionTree, *, hosts: int | None = None) -> Topology:
    """A YAML topology (module docstring) → Topology; TopologyError naming the field and the reason."""
    import yaml

    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise TopologyError(f"not valid YAML{where}") from None
    if not isinstance(document, dict) or "tree" not in document:
        raise TopologyError("expected a mapping with a 'tree' key (and optionally 'hosts')")
    unknown = sorted(set(document) - {"tree", "hosts"})
    if unknown:
        raise TopologyError(f"{unknown[0]}: unknown key (expected 'tree' and optionally 'hosts')")
    file_hosts = document.get("hosts")
    if file_hosts is not None and (not isinstance(file_hosts, int) or isinstance(file_hosts, bool) or file_hosts < 1):
        raise TopologyError(f"hosts: must be a whole number of at least 1, got {file_hosts!r}")
    tree = document["tree"]
    if not isinstance(tree, dict) or len(tree) != 1:
        raise TopologyError("tree: must have exactly one root region")
    nodes: list[tuple[str, str | None]] = []
    _walk(tree, None, "tree", regions, nodes)
    return place(_parents_first(nodes), hosts if hosts is not None else file_hosts)


def _walk(
    children: object, parent: str | None, where: str, regions: RegionTree, out: list[tuple[str, str | None]]
) -> None:
    if children is None:
        return
    if not isinstance(children, dict):
        raise TopologyError(f"{where}: children must be a mapping of region codes, got {type(children).__name__}")
    seen = {code for code, _ in out}
    for key, grandchildren in children.items():
        code = f"{key:06d}" if isinstance(key, int) and not isinstance(key, bool) else str(key)
        path = f"{where}.{code}"
        if len(code) != 6 or not code.isdigit():
            raise TopologyError(f"{path}: must be a 6-digit region code")
        if code not in regions:
            raise TopologyError(f"{path}: not a region in the region list")
        if code in seen:
            raise TopologyError(f"{path}: appears twice")
        if parent is not None and regions.parent(code) != parent:
            raise TopologyError(f"{path}: region {code} is not under {parent} in the region list")
        out.append((code, parent))
        seen.add(code)
        _walk(grandchildren, code, path, regions, out)


def load_topology(spec: str, regions: RegionTree, *, hosts: int | None = None) -> Topology:
    """``sichuan`` (every shipped region) or a YAML file's path."""
    if spec == "sichuan":
        return region_topology("510000", regions, hosts)
    path = Path(spec)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise TopologyError(f"topology {spec}: cannot read ({error.strerror or error})") from None
    try:
        return parse_topology(text, regions, hosts=hosts)
    except TopologyError as error:
        raise TopologyError(f"topology {path.name}: {error}") from None


def dump_topology(topology: Topology) -> str:
    """The YAML a host process reads back (``lianxin up`` writes it beside the data)."""
    import yaml

    children: dict[str | None, list[str]] = {}
    for code, parent in topology.nodes:
        children.setdefault(parent, []).append(code)

    def subtree(code: str) -> dict[str, object] | None:
        below = children.get(code, [])
        return {child: subtree(child) for child in below} if below else None

    root = topology.nodes[0][0]
    text: str = yaml.safe_dump({"hosts": topology.hosts, "tree": {root: subtree(root)}}, sort_keys=False)
    return text
