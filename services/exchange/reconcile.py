"""`lianxin reconcile`: compare, case by case, what a node's subtree holds with the replicas above it.

Over gRPC only (``ExchangeService.DigestCases``): the node's cases are paged, and each page is asked
of every ancestor for the same cases restricted to events from the node's subtree; then each
ancestor's cases from that subtree are paged to find any the node itself does not hold. Two nodes
holding the same events of a case have the same digest, owner, epoch, version, state and work-order
states; anything else is a divergence (an event quarantined or lost on the way, a replica missing).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import grpc
from lianxin.common.v1 import common_pb2
from lianxin.exchange.v1 import exchange_service_pb2 as exchange_pb2
from lianxin.exchange.v1 import exchange_service_pb2_grpc as exchange_grpc

PAGE = 500


@dataclass(frozen=True)
class Divergence:
    """One case that ``node`` and the replica ``above`` hold differently."""

    node: str
    above: str
    case_id: str
    detail: str

    def line(self) -> str:
        return f"{self.node} → {self.above} {self.case_id}: {self.detail}"


@dataclass
class Report:
    nodes: int = 0
    comparisons: int = 0  # (node, ancestor) pairs
    cases: int = 0  # cases compared, summed over the pairs
    divergences: list[Divergence] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"reconcile: {self.nodes} nodes against {self.comparisons} replicas above, "
            f"{self.cases} cases compared, {len(self.divergences)} divergences"
        )


def _state(value: int) -> str:
    return common_pb2.CaseState.Name(common_pb2.CaseState.ValueType(value)).removeprefix("CASE_STATE_")


def describe(below: exchange_pb2.CaseDigest | None, above: exchange_pb2.CaseDigest | None) -> str:
    """What differs between two nodes' digests of one case ("" when they agree)."""
    if below is None or not below.digest:
        return f"held above ({above.events if above else 0} events), not below"
    if above is None or not above.digest:
        return f"not held above ({below.events} events below)"
    if below.digest == above.digest:
        return ""
    parts = [f"events {below.events} vs {above.events}"]
    pairs = (
        ("version", str(below.version), str(above.version)),
        ("owner", f"{below.owner_node}/{below.owner_epoch}", f"{above.owner_node}/{above.owner_epoch}"),
        ("state", _state(below.state), _state(above.state)),
        ("work orders", _work_orders(below), _work_orders(above)),
    )
    parts += [f"{name} {mine} vs {theirs}" for name, mine, theirs in pairs if mine != theirs]
    return ", ".join(parts)


def _work_orders(digest: exchange_pb2.CaseDigest) -> str:
    return ",".join(f"{w.work_order_id}={_state(w.state)}" for w in digest.work_orders) or "-"


def _pages(stub: exchange_grpc.ExchangeServiceStub, subtree: str = "") -> Iterator[exchange_pb2.DigestCasesResponse]:
    token = ""
    while True:
        page = stub.DigestCases(
            exchange_pb2.DigestCasesRequest(subtree_node=subtree, page_token=token, page_size=PAGE), timeout=30
        )
        yield page
        if not page.next_page_token:
            return
        token = page.next_page_token


def _cases(
    stub: exchange_grpc.ExchangeServiceStub, ids: Sequence[str], subtree: str
) -> dict[str, exchange_pb2.CaseDigest]:
    out: dict[str, exchange_pb2.CaseDigest] = {}
    for start in range(0, len(ids), 1000):
        reply = stub.DigestCases(
            exchange_pb2.DigestCasesRequest(subtree_node=subtree, case_ids=ids[start : start + 1000]), timeout=30
        )
        out.update({c.case_id: c for c in reply.cases})
    return out


def reconcile_node(
    node_address: str,
    above: Sequence[str],
    report: Report,
    connect: Callable[[str], grpc.Channel] = grpc.insecure_channel,
) -> None:
    """Compare the node at ``node_address`` with each replica ``above`` (its ancestors' addresses).

    ``connect`` opens a channel to an address (a secure federation's: mutual TLS and a token)."""
    with connect(node_address) as channel:
        mine = exchange_grpc.ExchangeServiceStub(channel)
        ancestors = [connect(a) for a in above]
        try:
            stubs = [exchange_grpc.ExchangeServiceStub(c) for c in ancestors]
            names = [""] * len(stubs)
            node = ""
            seen: set[str] = set()
            report.nodes += 1
            report.comparisons += len(stubs)
            for page in _pages(mine):
                node = page.node
                ids = [c.case_id for c in page.cases]
                seen.update(ids)
                for i, stub in enumerate(stubs):
                    reply = stub.DigestCases(
                        exchange_pb2.DigestCasesRequest(subtree_node=node, case_ids=ids), timeout=30
                    )
                    names[i] = reply.node
                    theirs = {c.case_id: c for c in reply.cases}
                    for case in page.cases:
                        report.cases += 1
                        detail = describe(case, theirs.get(case.case_id))
                        if detail:
                            report.divergences.append(Divergence(node, reply.node, case.case_id, detail))
            if not node:  # nothing held below: still ask the replicas above what they hold of it
                node = mine.DigestCases(exchange_pb2.DigestCasesRequest(page_size=1), timeout=30).node
            for i, stub in enumerate(stubs):
                for page in _pages(stub, node):
                    extra = [c for c in page.cases if c.case_id not in seen]
                    held_below = _cases(mine, [c.case_id for c in extra], "") if extra else {}
                    for case in extra:
                        report.cases += 1
                        detail = describe(held_below.get(case.case_id), case)
                        if detail:
                            report.divergences.append(Divergence(node, names[i] or page.node, case.case_id, detail))
        finally:
            for c in ancestors:
                c.close()


def reconcile(
    pairs: Sequence[tuple[str, Sequence[str]]], connect: Callable[[str], grpc.Channel] = grpc.insecure_channel
) -> Report:
    """Every (node address, ancestor addresses) pair; raises grpc.RpcError when a node cannot be reached."""
    report = Report()
    for node_address, above in pairs:
        reconcile_node(node_address, above, report, connect)
    return report


def federation_pairs(base_port: int, topology: Sequence[tuple[str, str | None]]) -> list[tuple[str, list[str]]]:
    """(node, ancestors) addresses of the embedded federation that numbers its nodes from ``base_port``."""
    address = {code: f"127.0.0.1:{base_port + i}" for i, (code, _parent) in enumerate(topology)}
    parent = dict(topology)
    pairs = []
    for code, _ in topology:
        chain, up = [], parent[code]
        while up:
            chain.append(address[up])
            up = parent[up]
        if chain:
            pairs.append((address[code], chain))
    return pairs


def settled(
    pairs: Sequence[tuple[str, Sequence[str]]],
    *,
    wait_s: float,
    run: Callable[[Sequence[tuple[str, Sequence[str]]]], Report] = reconcile,
) -> Report:
    """``reconcile`` again until it finds nothing or ``wait_s`` has passed (events still on their way up)."""
    deadline = time.monotonic() + wait_s
    while True:
        report = run(pairs)
        if not report.divergences or time.monotonic() >= deadline:
            return report
        time.sleep(0.5)  # polling a condition with a deadline
