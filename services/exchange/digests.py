"""Case digests, pure: what a node holds of a case (``Held``, ``digest``) and the owner, state and work
orders its events say (``summarise_case``), so two tiers can be compared (``DigestCases``, ``lianxin reconcile``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class Held:
    """One case event a node holds (its up-log row), as ListReplicas shows it."""

    case_id: str
    version: int
    event_type: str
    origin_node: str
    event_id: str
    case_sequence: int
    # When this node appended it to its up-log; not part of the digest (each node has its own clock).
    appended_at: datetime | None = None


def digest(held: Sequence[Held]) -> str:
    """SHA-256 over the sorted "case:version:event_id" lines: equal on two nodes iff they hold the same events.

    Not over the case sequences: each node numbers its own up-log, so those differ between nodes.
    """
    h = hashlib.sha256()
    for case_id, version, event_id in sorted((e.case_id, e.version, e.event_id) for e in held):
        h.update(f"{case_id}:{version}:{event_id}\n".encode())
    return h.hexdigest()


@dataclass(frozen=True)
class HeldEvent:
    """What a case digest needs of one held event (parsed from its envelope by the store)."""

    event_id: str
    version: int
    event_type: str
    owner_node: str
    owner_epoch: int
    state: str = ""  # the case state the event sets ("" for none), CaseState names without prefix
    work_order_id: str = ""
    hand_off_to: str = ""  # case_handed_off: the new owner and its epoch
    hand_off_epoch: int = 0


@dataclass(frozen=True)
class CaseSummary:
    """One node's view of one case from the events it holds (``DigestCases``)."""

    case_id: str
    events: int
    version: int
    owner_node: str
    owner_epoch: int
    state: str
    work_orders: tuple[tuple[str, str], ...]  # (work order id, state), sorted by id
    digest: str


def summarise_case(case_id: str, held: Sequence[HeldEvent], digest: str) -> CaseSummary:
    """Owner, epoch, state and work-order states as the latest held events say.

    Events are taken in ownership order (epoch, then version, then id): a node's events after a
    hand-off carry the higher epoch, so two nodes holding the same events derive the same summary.
    """
    ordered = sorted(held, key=lambda e: (e.owner_epoch, e.version, e.event_id))
    owner_node, owner_epoch, state = "", 0, ""
    work_orders: dict[str, str] = {}
    for event in ordered:
        if event.hand_off_to:
            owner_node, owner_epoch = event.hand_off_to, event.hand_off_epoch
        elif event.owner_epoch >= owner_epoch and event.owner_node:
            owner_node, owner_epoch = event.owner_node, event.owner_epoch
        if event.state:
            state = event.state
            if event.work_order_id:
                work_orders[event.work_order_id] = event.state
    return CaseSummary(
        case_id=case_id,
        events=len(held),
        version=max((e.version for e in held), default=0),
        owner_node=owner_node,
        owner_epoch=owner_epoch,
        state=state,
        work_orders=tuple(sorted(work_orders.items())),
        digest=digest,
    )
