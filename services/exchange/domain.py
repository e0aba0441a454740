"""Exchange rules as plain functions: which inbound items a node accepts, where a down item goes, backoff."""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import Enum

from services.common.regions import RegionTree

# Case event types the services of a node emit, by service; all of them travel up (DESIGN §4).
UP_EVENT_TYPES: dict[str, tuple[str, ...]] = {
    "intake": ("case_registered", "case_evaluated", "review_requested", "case_withdrawn", "case_merged"),
    "routing": (
        "work_order_created",
        "work_order_changed",
        "case_handed_off",
        "case_escalated",
        "supervision_issued",
        "deadline_warning",
    ),
    "video": ("visit_booked", "visit_outcome_recorded"),
}


class Verdict(Enum):
    APPLY = "apply"
    DUPLICATE = "duplicate"  # already stored under the same event id: acknowledged, nothing done
    REFUSE = "refuse"


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    reason: str = ""


APPLY = Decision(Verdict.APPLY)
DUPLICATE = Decision(Verdict.DUPLICATE)


def refuse(reason: str) -> Decision:
    return Decision(Verdict.REFUSE, reason)


@dataclass(frozen=True)
class InboundEvent:
    """The routing-relevant header of an event envelope received over a link."""

    event_id: str
    case_id: str
    version: int
    owner_epoch: int
    owner_node: str
    origin_node: str
    event_type: str


@dataclass(frozen=True)
class CaseKnowledge:
    """What the receiver already holds for the event's case."""

    event_id_at_version: str | None  # the stored event at (case, version), if any
    last_version: int | None  # highest replica version stored for the case
    known_epoch: int | None  # highest ownership epoch seen for the case
    already_stored: bool  # the event id itself is stored (possibly under another case)


def judge_event_from_child(
    event: InboundEvent, *, child: str, receiver: str, regions: RegionTree, known: CaseKnowledge
) -> Decision:
    """Accept, ignore as a duplicate, or refuse (with the reason quarantined) an event pushed up by ``child``.

    Order of the checks matters: identity first (who may say this at all), then per-case order.
    A case never seen before may start at any version: a case handed down from above, or one
    whose earlier versions were emitted by this node itself, has no replicas here yet.
    """
    if child not in regions or regions.parent(child) != receiver:
        return refuse(f"unknown node: {child} is not a direct child of {receiver}")
    if not event.event_id or not event.case_id or event.version <= 0 or not event.event_type:
        return refuse("malformed payload: event_id, case_id, version and payload are required")
    if not regions.contains(child, event.origin_node):
        return refuse(f"out of subtree: origin {event.origin_node or '-'} is not under {child}")
    if not regions.contains(child, event.owner_node):
        return refuse(f"forged owner: owner {event.owner_node or '-'} is not under {child}")
    if known.already_stored or known.event_id_at_version == event.event_id:
        return DUPLICATE
    if known.event_id_at_version is not None:
        return refuse(f"conflict: {event.case_id} v{event.version} already stored as another event")
    if known.known_epoch is not None and event.owner_epoch < known.known_epoch:
        return refuse(f"stale owner: epoch {event.owner_epoch} < known {known.known_epoch}")
    if known.last_version is not None and event.version != known.last_version + 1:
        if event.version > known.last_version:
            return refuse(f"version gap: v{event.version} after v{known.last_version}")
        return refuse(f"out of order: v{event.version} after v{known.last_version}")
    return APPLY


@dataclass(frozen=True)
class DownRoute:
    """Where a down item goes at the node that pulled it: here, or the next hop's queue."""

    local: bool
    next_child: str = ""


def route_down(target: str, *, here: str, regions: RegionTree) -> DownRoute | None:
    """None when ``target`` is not this node nor below it (the parent sent it to the wrong place)."""
    if target == here:
        return DownRoute(local=True)
    child = regions.child_toward(here, target)
    if child is None:
        return None
    return DownRoute(local=False, next_child=child)


def backoff_delay(
    failures: int, *, base_s: float = 0.2, cap_s: float = 10.0, rng: random.Random | None = None
) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(cap, base * 2**failures)] (never 0 for 1+ failures)."""
    if failures <= 0:
        return 0.0
    ceiling = min(cap_s, base_s * (2 ** min(failures, 30)))
    return (rng or random).uniform(ceiling / 2, ceiling)


def payload_summary(event_type: str, case_id: str, version: int) -> str:
    """What an operator sees of a quarantined item: no personal data, only its identity."""
    return f"{event_type or '?'} {case_id or '?'} v{version}"
