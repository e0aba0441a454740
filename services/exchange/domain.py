"""Exchange rules as plain functions: which inbound items a node accepts, where a down item goes, backoff."""

from __future__ import annotations

import random
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum

from services.common.regions import RegionTree

# Case event types the services of a node emit, by service; all of them travel up (DESIGN §4).
UP_EVENT_TYPES: dict[str, tuple[str, ...]] = {
    "intake": (
        "case_registered",
        "case_evaluated",
        "review_requested",
        "case_withdrawn",
        "case_merged",
        # 办事进度推送: a notice's end and the citizen's opt-out, counted in the warehouse of every tier
        "progress_notice_settled",
        "progress_notices_set",
    ),
    "routing": (
        "work_order_created",
        "work_order_changed",
        "case_handed_off",
        "case_escalated",
        "supervision_issued",
        "deadline_warning",
        "case_evaluated",  # a rating registered at another node, announced by the owner
        "case_merged",  # 并单 (MergeCases)
        "case_sampled",  # 第三方评价: drawn into a month's sample
        "third_party_rated",  # 第三方评价: the evaluation group's rating
    ),
    "video": (
        "visit_booked",
        "visit_outcome_recorded",
        "visit_cancelled",
        "visit_reminder",
        # 远程会商 (remote consultation): facts recorded where it was hosted, judged by origin like visits
        "consultation_booked",
        "consultation_held",
        "consultation_cancelled",
        "consultation_reminder",
    ),
}

# What a citizen did at the node that registered the case (rated, asked for 复查, withdrew, turned
# progress notices off), and the notices it sent the citizen: facts
# recorded there whoever owns the case, not writes of its owner, so they are judged by their origin
# (which must be under the pushing child) and not by the owner or epoch they name. After a 上报 the
# registering county's ratings name the city as owner; refusing them as forged or stale would keep
# the rating from every tier above and block the case's later events behind a sequence gap.
CITIZEN_EVENT_TYPES: frozenset[str] = frozenset(
    {"case_evaluated", "review_requested", "case_withdrawn", "progress_notice_settled", "progress_notices_set"}
)
# The same holds for a video visit: a fact recorded where the leader received the citizen (often the
# registering county's terminal, after the case went up), naming the owner as that node last heard.
FACT_EVENT_TYPES: frozenset[str] = CITIZEN_EVENT_TYPES | frozenset(UP_EVENT_TYPES["video"])

# Services of a node that issue commands (``events.v1.Command`` on the bus, event type "command")
# for cases another node owns; exchange carries them to the owner (DESIGN §3).
COMMAND_SOURCES: tuple[str, ...] = ("intake", "routing", "video")


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
    """The routing-relevant header of an event envelope received over a link.

    ``version`` is the envelope's own (the emitting service's choice; 0 for facts such as visits)
    and is not checked; ``case_sequence`` is the link's per-case order, assigned by the sender's
    up-log appender, and is what gaps and order are judged on.
    """

    event_id: str
    case_id: str
    version: int
    owner_epoch: int
    owner_node: str
    origin_node: str
    event_type: str
    case_sequence: int
    # For an escalation (case_handed_off, kind escalate_up) the epoch the new owner writes with: once it
    # is applied, the giving child's older epoch is stale here.
    new_owner_epoch: int = 0


@dataclass(frozen=True)
class CaseKnowledge:
    """What the receiver already holds for the event's case (sequences: from this child's link)."""

    event_id_at_sequence: str | None  # the stored event at (child, case, sequence), if any
    last_sequence: int | None  # highest sequence stored for the case from this child
    known_epoch: int | None  # highest ownership epoch seen for the case (over every link)
    already_stored: bool  # the event id itself is stored (possibly under another case or link)


class SubtreeMemo:
    """``regions.contains(root, code)`` remembered per code: a batch asks about the same few nodes."""

    def __init__(self, regions: RegionTree, root: str) -> None:
        self._regions = regions
        self._root = root
        self._known: dict[str, bool] = {}

    def __call__(self, code: str) -> bool:
        found = self._known.get(code)
        if found is None:
            found = self._known[code] = self._regions.contains(self._root, code)
        return found


def judge_event_from_child(
    event: InboundEvent,
    *,
    child: str,
    receiver: str,
    regions: RegionTree,
    known: CaseKnowledge,
    under_child: SubtreeMemo | None = None,
) -> Decision:
    """Accept, ignore as a duplicate, or refuse (with the reason quarantined) an event pushed up by ``child``.

    Order of the checks matters: identity first (who may say this at all), then per-case order.
    The child's up-log numbers every case from 1, so a case this link never delivered must start
    at sequence 1; anything else means an earlier item is missing (or was quarantined).
    """
    if not is_direct_child(child, receiver, regions):
        return refuse(f"unknown node: {child} is not a direct child of {receiver}")
    return _judge_from_known_child(
        event,
        child=child,
        under=under_child or SubtreeMemo(regions, child),
        at_sequence=known.event_id_at_sequence,
        last_sequence=known.last_sequence,
        known_epoch=known.known_epoch,
        already_stored=known.already_stored,
    )


def is_direct_child(child: str, receiver: str, regions: RegionTree) -> bool:
    return child in regions and regions.parent(child) == receiver


def _judge_from_known_child(
    event: InboundEvent,
    *,
    child: str,
    under: SubtreeMemo,
    at_sequence: str | None,
    last_sequence: int | None,
    known_epoch: int | None,
    already_stored: bool,
) -> Decision:
    """``judge_event_from_child`` once the child is known to be a direct child (checked once per batch)."""
    if not event.event_id or not event.case_id or event.version < 0 or event.case_sequence <= 0 or not event.event_type:
        return refuse("malformed payload: event_id, case_id, case_sequence and payload are required")
    if not under(event.origin_node):
        return refuse(f"out of subtree: origin {event.origin_node or '-'} is not under {child}")
    citizen = event.event_type in FACT_EVENT_TYPES
    if not under(event.owner_node) and not citizen:
        return refuse(f"forged owner: owner {event.owner_node or '-'} is not under {child}")
    if already_stored or at_sequence == event.event_id:
        return DUPLICATE
    if at_sequence is not None:
        return refuse(f"conflict: {event.case_id} #{event.case_sequence} already stored as another event")
    if known_epoch is not None and event.owner_epoch < known_epoch and not citizen:
        return refuse(f"stale owner: epoch {event.owner_epoch} < known {known_epoch}")
    last = last_sequence or 0
    if event.case_sequence != last + 1:
        if event.case_sequence > last:
            return refuse(f"sequence gap: #{event.case_sequence} after #{last}")
        return refuse(f"out of order: #{event.case_sequence} after #{last}")
    return APPLY


@dataclass
class CaseLedger:
    """What the receiver holds for one case, loaded once per batch and kept current while judging it."""

    last_sequence: int | None = None  # from the pushing child's link
    known_epoch: int | None = None
    events_at: dict[int, str] = field(default_factory=dict)  # sequence -> stored event id (the ones asked for)


def judge_batch(
    events: Sequence[InboundEvent],
    *,
    child: str,
    receiver: str,
    regions: RegionTree,
    ledgers: dict[str, CaseLedger],
    stored_ids: set[str],
) -> list[Decision]:
    """Judge a child's batch in order, as if each applied item were stored before the next is judged.

    ``ledgers`` (by case id) and ``stored_ids`` hold what the receiver had before the batch; they are
    updated in place with what the batch applies, so the caller can write everything in one go.
    """
    if not is_direct_child(child, receiver, regions):
        return [refuse(f"unknown node: {child} is not a direct child of {receiver}") for _ in events]
    decisions: list[Decision] = []
    under_child = SubtreeMemo(regions, child)
    for event in events:
        ledger = ledgers.get(event.case_id)
        if ledger is None:
            ledger = ledgers[event.case_id] = CaseLedger()
        decision = _judge_from_known_child(
            event,
            child=child,
            under=under_child,
            at_sequence=ledger.events_at.get(event.case_sequence) if ledger.events_at else None,
            last_sequence=ledger.last_sequence,
            known_epoch=ledger.known_epoch,
            already_stored=event.event_id in stored_ids,
        )
        if decision.verdict is Verdict.APPLY:
            stored_ids.add(event.event_id)
            ledger.last_sequence = event.case_sequence
            ledger.events_at[event.case_sequence] = event.event_id
            ledger.known_epoch = max(ledger.known_epoch or 0, event.owner_epoch, event.new_owner_epoch)
        decisions.append(decision)
    return decisions


def epochs_to_note(
    applied: Sequence[tuple[InboundEvent, str]], before: dict[str, int | None]
) -> dict[str, tuple[int, str]]:
    """(epoch, owner) per case that a batch's applied events raise above what was known before it.

    Each item is an applied event with, for an escalation, the node it hands the case to (else "").
    The highest epoch wins, a later event at the same epoch names the owner; only what rises above
    ``before`` (by case, None = nothing known) is returned: the known epoch never goes down.
    """
    epochs: dict[str, tuple[int, str]] = {}
    for event, new_owner in applied:
        if event.owner_epoch >= epochs.get(event.case_id, (-1, ""))[0]:
            epochs[event.case_id] = (event.owner_epoch, event.owner_node)
        if event.new_owner_epoch and event.new_owner_epoch >= epochs.get(event.case_id, (-1, ""))[0]:
            # 上报: the parent (to_node) owns the case from this epoch on.
            epochs[event.case_id] = (event.new_owner_epoch, new_owner)
    return {c: e for c, e in epochs.items() if before.get(c) is None or e[0] > (before[c] or 0)}


# ---------------------------------------------------------------------------------- link mechanics

# A pushed batch: at most this many items (LIANXIN_EXCHANGE_BATCH) and about this many bytes of
# bodies, below what a server reads of one request (grpcserver.MAX_RECEIVE_BYTES, 2 MiB) whatever
# the envelopes carry; 500 ordinary envelopes are far less, so the byte limit rarely binds.
BATCH_ITEMS = 500
MAX_BATCH_BYTES = 1024 * 1024


def batch_length(sizes: Sequence[int], *, max_bytes: int = MAX_BATCH_BYTES) -> int:
    """How many of the next up-log items (their body sizes, in position order) one push carries.

    At least one, so an item larger than ``max_bytes`` still travels (alone); the item limit is
    applied by the caller when it reads the log.
    """
    total = 0
    for count, size in enumerate(sizes):
        total += size
        if count and total > max_bytes:
            return count
    return len(sizes)


def fresh_positions(positions: Sequence[int], stored: int) -> tuple[list[int], int]:
    """(indexes of the pushed items to judge, position to acknowledge) for a receiver whose cursor is ``stored``.

    Only positions above the cursor and above every earlier item of the batch are new; the rest
    are resends of what the receiver holds (its acknowledgement was lost). The acknowledgement is
    the last new position, or the cursor itself when nothing was new, so a resend is acked again.
    """
    fresh: list[int] = []
    top = stored
    for index, position in enumerate(positions):
        if position > top:
            fresh.append(index)
            top = position
    return fresh, top


def advance_cursor(stored: int, position: int | None) -> int:
    """A cursor never moves back: a late or repeated acknowledgement leaves it where it is."""
    return max(stored, position or 0)


def acked_prefix(reports: Sequence[tuple[int, str | None]], acked_ids: set[str], start: int) -> int:
    """The national cursor after a report: the position of the last item of the acknowledged prefix.

    ``reports`` are (up-log position, report id or None for an item that is not reported). The cursor
    stops before the first report the national system did not acknowledge, so nothing is skipped.
    """
    position = start
    for item_position, report_id in reports:
        if report_id is not None and report_id not in acked_ids:
            break
        position = item_position
    return position


@dataclass(frozen=True)
class DiscardDecision:
    """Whether a quarantined item may be discarded and whether its case sequence then counts as passed."""

    allowed: bool
    skip: bool = False  # the item's sequence is recorded as passed: the case's next one is judged after it
    reason: str = ""


def judge_discard(case_sequence: int, *, last_passed: int, earlier_held: Sequence[int]) -> DiscardDecision:
    """The sequence-gap rule after a discard (docs/exchange.md).

    An event a child pushed holds a place in its case's sequence on that link. Discarding it skips
    that place: the parent counts it as passed, so the case's next event (``case_sequence + 1``)
    applies. Only the first place still missing may be skipped: with an earlier event of the case
    still in quarantine, that one must be replayed or discarded first, or skipping would silently
    jump over it. An item at or below the last place passed (out of order, a conflict) or without
    a place (a command, a hand-off from the parent) is discarded without a skip.
    """
    if case_sequence <= 0 or case_sequence <= last_passed:
        return DiscardDecision(True)
    if earlier_held:
        first = min(earlier_held)
        return DiscardDecision(False, reason=f"#{first} of the case is still in quarantine: replay or discard it first")
    return DiscardDecision(True, skip=True)


def number_case_events(case_ids: Sequence[str], last: dict[str, int]) -> list[int]:
    """The up-log's per-case sequences for new rows in append order; ``last`` (by case) is advanced in place."""
    numbers: list[int] = []
    for case_id in case_ids:
        last[case_id] = last.get(case_id, 0) + 1
        numbers.append(last[case_id])
    return numbers


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


class CommandAction(Enum):
    DELIVER = "deliver"  # publish on this node's bus: the target's services decide
    DOWN = "down"  # queue for the direct child toward the target
    UP = "up"  # append to this node's up-log: the parent link carries it on
    REFUSE = "refuse"


@dataclass(frozen=True)
class CommandRoute:
    action: CommandAction
    next_child: str = ""
    reason: str = ""


def route_command(target: str, *, here: str, regions: RegionTree, came_from_parent: bool) -> CommandRoute:
    """Where a command goes next from ``here``: delivered, down toward its target, or up (it climbs).

    A command climbs when its target is neither this node nor below it; the first ancestor whose
    subtree holds the target turns it down. Refused only when it cannot get anywhere: an unknown
    target, the root with the target outside its tree, or a parent sending down a command whose
    target is not below this node (sending it back up would bounce it between the two).
    """
    if not target or target not in regions:
        return CommandRoute(CommandAction.REFUSE, reason=f"unknown node: command target {target or '-'}")
    if target == here:
        return CommandRoute(CommandAction.DELIVER)
    child = regions.child_toward(here, target)
    if child is not None:
        return CommandRoute(CommandAction.DOWN, next_child=child)
    if came_from_parent:
        return CommandRoute(CommandAction.REFUSE, reason=f"out of subtree: command target {target} is not under {here}")
    if here not in regions or regions.parent(here) is None:
        return CommandRoute(
            CommandAction.REFUSE, reason=f"unroutable: command target {target} is not reachable from {here}"
        )
    return CommandRoute(CommandAction.UP)


def chase_owner(target: str, seen_epoch: int, *, known_epoch: int | None, known_owner: str) -> tuple[str, int] | None:
    """(new target, epoch) when this node knows a newer owner than the issuer saw, else None.

    Ownership moves only by hand-offs with increasing epochs, so a higher epoch known here is newer
    news than the issuer had: the command follows the hand-off (DESIGN §3, ``owner_epoch_seen``).
    Each retarget raises the epoch the command carries, so a command cannot chase in a circle.
    """
    if known_epoch is None or known_epoch <= seen_epoch or not known_owner or known_owner == target:
        return None
    return known_owner, known_epoch


def command_hop_id(command_id: str, target_node: str, owner_epoch_seen: int) -> str:
    """The key of one command on one leg (up-log row, down-queue item): command id, target and epoch seen.

    A command retargeted after a hand-off gets a new key, so it may pass a node it passed before;
    a resend of the same leg has the same key and is stored once.
    """
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"lianxin:command:{command_id}:{target_node}:{owner_epoch_seen}"))


def hand_off_route(to_node: str, *, here: str, child: str, regions: RegionTree) -> str | None:
    """The child to queue a hand-off replica for, when it came up from ``child`` but its target is elsewhere below.

    A hand-off whose target is ``child``'s subtree was queued down there already; one for this
    node is handled by its own services; one for a node above climbs with the replica.
    """
    if to_node == here or regions.contains(child, to_node):
        return None
    return regions.child_toward(here, to_node)


def backoff_delay(
    failures: int, *, base_s: float = 0.2, cap_s: float = 10.0, rng: random.Random | None = None
) -> float:
    """Exponential backoff with equal jitter: uniform in [ceiling / 2, ceiling], ceiling = min(cap, base * 2**failures).

    Half the ceiling is kept so that a retry never comes at once after a failure (0 only for 0 failures).
    """
    if failures <= 0:
        return 0.0
    ceiling = min(cap_s, base_s * (2 ** min(failures, 30)))
    return (rng or random).uniform(ceiling / 2, ceiling)


class LinkState(Enum):
    HEALTHY = "healthy"
    LAGGING = "lagging"
    UNREACHABLE = "unreachable"


# No contact for this long and the link counts as unreachable; this many items behind, as lagging.
UNREACHABLE_AFTER_S = 30.0
LAGGING_EVENTS = 1000


def link_state(*, failing: bool, silent_for_s: float | None, lag_events: int) -> LinkState:
    """How ``LinkStatus`` reports a link: unreachable when its calls fail or it has been silent too long
    (``silent_for_s`` None: never in contact), lagging when too many items wait, else healthy."""
    if failing or silent_for_s is None or silent_for_s > UNREACHABLE_AFTER_S:
        return LinkState.UNREACHABLE
    if lag_events > LAGGING_EVENTS:
        return LinkState.LAGGING
    return LinkState.HEALTHY


def payload_summary(event_type: str, case_id: str, version: int, case_sequence: int = 0) -> str:
    """What an operator sees of a quarantined item: no personal data, only its identity."""
    sequence = f" #{case_sequence}" if case_sequence else ""
    return f"{event_type or '?'} {case_id or '?'} v{version}{sequence}"


def escalation_epoch(event_type: str, kind: str, new_owner_epoch: int) -> int:
    """The epoch an escalation (上报) hands to the parent, else 0.

    Only ``escalate_up`` raises the epoch a receiver knows from a hand-off's payload: after a hand-off
    down (交办) the giving node's services may still write with their epoch, so that stays as it was.
    """
    return new_owner_epoch if event_type == "case_handed_off" and kind == "escalate_up" else 0
