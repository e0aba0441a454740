"""What a node does with an item that reached it, inside the caller's unit of work: a child's envelopes
judged and applied, a command delivered or passed on, a hand-off from above applied or passed down.

Each function returns the item's outcome (None = applied, "" = nothing to do, else the reason to
quarantine it); the caller commits. The rules are ``domain``'s; the protobuf reading is ``mapping``'s.
"""

from __future__ import annotations

from collections.abc import Sequence

from services.common.telemetry import record_event_spans
from services.exchange import domain, mapping
from services.exchange.ports import (
    COMMAND,
    DELIVERED,
    ENVELOPE,
    ExchangeDeps,
    ExchangeUnitOfWork,
    Item,
    Refused,
    Replica,
    UpRow,
)


def accept_from_child(
    uow: ExchangeUnitOfWork, deps: ExchangeDeps, child: str, items: Sequence[Item]
) -> list[str | None]:
    """Per item: None = applied; "" = duplicate (nothing to do); otherwise the refusal reason.

    Runs of envelopes are judged and written together; a command in between is routed on its
    own after the envelopes before it, so the outbox keeps the child's order.
    """
    outcomes: list[str | None] = []
    run: list[Item] = []

    def flush() -> None:
        outcomes.extend(_apply_envelopes(uow, deps, child, run))
        run.clear()

    for item in items:
        if item.kind == COMMAND:
            flush()
            outcomes.append(route_command(uow, deps, item.body, came_from_parent=False))
        else:
            run.append(item)
    flush()
    return outcomes


def _apply_envelopes(uow: ExchangeUnitOfWork, deps: ExchangeDeps, child: str, run: Sequence[Item]) -> list[str | None]:
    if not run:
        return []
    readable = [mapping.replica(item) for item in run]
    replicas = [r for r in readable if r is not None]
    events = [r.event for r in replicas]
    ledgers, stored_ids = uow.load_ledgers(child, events)
    epochs_before = {case_id: ledger.known_epoch for case_id, ledger in ledgers.items()}
    decisions = domain.judge_batch(
        events, child=child, receiver=deps.node, regions=deps.regions, ledgers=ledgers, stored_ids=stored_ids
    )
    applied = [r for r, decision in zip(replicas, decisions, strict=True) if decision.verdict is domain.Verdict.APPLY]
    if applied:
        _store_replicas(uow, deps, child, applied, epochs_before)
    verdicts = iter(decisions)
    outcomes: list[str | None] = []
    for replica in readable:
        if replica is None:
            outcomes.append("malformed payload: not an event envelope")
            continue
        decision = next(verdicts)
        if decision.verdict is domain.Verdict.APPLY:
            outcomes.append(None)
        elif decision.verdict is domain.Verdict.DUPLICATE:
            outcomes.append("")
        else:
            outcomes.append(decision.reason)
    return outcomes


def _store_replicas(
    uow: ExchangeUnitOfWork,
    deps: ExchangeDeps,
    child: str,
    applied: Sequence[Replica],
    epochs_before: dict[str, int | None],
) -> None:
    """Write what a batch applies: our up-log (re-sequenced), epochs, replicas, hand-offs passing by, the outbox."""
    # Multi-hop: what the child sent travels on to our parent, numbered on our own up-log. The
    # events were just judged new (not among our replicas), and only this link brings them.
    uow.append_up(
        [
            UpRow(r.event.event_id, r.event.case_id, r.event.version, r.event.event_type, r.event.origin_node, r.body)
            for r in applied
        ],
        fresh_ids={r.event.event_id for r in applied},
    )
    # Only what raises the known epoch (the upsert would ignore the rest anyway).
    uow.note_epochs(domain.epochs_to_note([(r.event, r.hand_off_to) for r in applied], epochs_before))
    now = deps.clock()
    uow.store_replicas(child, applied, now)
    for r in applied:
        if r.event.event_type == "case_handed_off":
            # A hand-off that came up from one child for a node under another (转送 sideways): down it goes.
            toward = domain.hand_off_route(r.hand_off_to, here=deps.node, child=child, regions=deps.regions)
            if toward is not None:
                uow.enqueue_down(toward, r.event.event_id, ENVELOPE, r.body)
    # Our own services see the replica too (through the outbox, so at least once, in order).
    uow.publish([(r.event.event_id, r.event.event_type, r.event.case_id, r.body) for r in applied], now)
    # Each replica continues its case's trace (the context its event carries), so one trace runs
    # from the county's intake up to the province; the push that brought it is polling, not traced.
    record_event_spans("exchange stores replica", [r.trace_context for r in applied], {"lianxin.child": child})


def route_command(uow: ExchangeUnitOfWork, deps: ExchangeDeps, body: bytes, *, came_from_parent: bool) -> str | None:
    """Deliver, send down, or send up a command; returns a refusal reason, "" for an already delivered one.

    The command follows ownership: when this node knows a newer owner than the issuer saw
    (a 上报 or 交办 since), it is retargeted there first, with the newer epoch. A handling update
    (for the registering node's citizen tracking) is never retargeted.
    """
    cmd = mapping.command_head(body)
    if cmd is None:
        return "malformed payload: not a command"
    if len(cmd.command_id) > 36:
        return "malformed payload: command_id longer than 36 characters"
    known = uow.known_owner(cmd.case_id)
    # A handling update goes to the node that registered the case (its citizen's tracking), not
    # to the owner: it never follows ownership.
    chased = (
        None
        if cmd.handling
        else domain.chase_owner(
            cmd.target_node,
            cmd.owner_epoch_seen,
            known_epoch=known[0] if known is not None else None,
            known_owner=known[1] if known is not None else "",
        )
    )
    target, epoch_seen = chased if chased is not None else (cmd.target_node, cmd.owner_epoch_seen)
    if chased is not None:
        body = mapping.retarget(body, target, epoch_seen)
    route = domain.route_command(
        target, here=deps.node, regions=deps.regions, came_from_parent=came_from_parent and chased is None
    )
    if route.action is domain.CommandAction.REFUSE:
        return route.reason
    if route.action is domain.CommandAction.DOWN:
        uow.enqueue_down(route.next_child, domain.command_hop_id(cmd.command_id, target, epoch_seen), COMMAND, body)
    elif route.action is domain.CommandAction.UP:
        uow.append_up_command(domain.command_hop_id(cmd.command_id, target, epoch_seen), cmd.case_id, body)
    else:
        if not uow.first_delivery(DELIVERED, cmd.command_id):
            return ""  # delivered before (the same command by another way, or replayed)
        uow.publish_one(cmd.command_id, COMMAND, cmd.case_id, body)
    return None


def accept_from_parent(uow: ExchangeUnitOfWork, deps: ExchangeDeps, item: Item) -> str | None:
    if item.kind == COMMAND:
        return route_command(uow, deps, item.body, came_from_parent=True)
    hand_off = mapping.hand_off(item.body)
    if hand_off is None:
        return "malformed payload: only case_handed_off envelopes travel down"
    known = uow.known_epoch(hand_off.case_id)
    if known is not None and hand_off.new_owner_epoch < known:
        return f"stale owner: hand-off epoch {hand_off.new_owner_epoch} < known {known}"
    route = domain.route_down(hand_off.to_node, here=deps.node, regions=deps.regions)
    if route is None:
        return f"out of subtree: hand-off to {hand_off.to_node or '-'} is not under {deps.node}"
    uow.note_epochs({hand_off.case_id: (hand_off.new_owner_epoch, hand_off.to_node)})
    # Published here also when it only passes through (routing ignores a hand-off not addressed
    # to it): this node's warehouse counts the cases handed down into its subtree (docs/stats.md).
    uow.publish_one(hand_off.event_id, "case_handed_off", hand_off.case_id, item.body)
    if not route.local:
        uow.enqueue_down(route.next_child, hand_off.event_id, ENVELOPE, item.body)
    return None


def quarantine(uow: ExchangeUnitOfWork, peer: str, direction: str, refused: Sequence[tuple[Item, str]]) -> None:
    """Keep refused items for an operator, each with what it is (``mapping.summary``) and why it was refused."""
    if refused:
        uow.quarantine(peer, direction, [Refused(item, reason, mapping.summary(item)) for item, reason in refused])
