"""Protobuf in and out of exchange's rules: envelopes and commands read into the domain's values, and
the items of ``PushEvents``/``PullDown`` (the only module besides the servicer that parses the contract's
messages; the handlers see ``domain`` values and bodies as bytes).
"""

from __future__ import annotations

from collections.abc import Sequence

from lianxin.common.v1 import common_pb2
from lianxin.events.v1 import events_pb2
from lianxin.exchange.v1 import exchange_service_pb2 as exchange_pb2

from services.common.events import last_unfolded, parse_command, parse_envelope
from services.exchange import domain
from services.exchange.digests import HeldEvent
from services.exchange.ports import COMMAND, ENVELOPE, CommandHead, HandOff, Item, Replica, UpRow


def up_row(env: events_pb2.EventEnvelope, body: bytes) -> UpRow:
    return UpRow(env.event_id, env.case_id, env.version, env.WhichOneof("payload") or "", env.origin_node, body)


def command_head(body: bytes) -> CommandHead | None:
    cmd = parse_command(body)
    if cmd is None:
        return None
    return CommandHead(
        cmd.command_id, cmd.case_id, cmd.target_node, cmd.owner_epoch_seen, cmd.WhichOneof("body") == "handling"
    )


def retarget(body: bytes, target_node: str, owner_epoch_seen: int) -> bytes:
    """The command in ``body`` sent on to the newer owner this node knows (with its epoch)."""
    cmd = events_pb2.Command.FromString(body)
    cmd.target_node, cmd.owner_epoch_seen = target_node, owner_epoch_seen
    return cmd.SerializeToString()


def hand_off(body: bytes) -> HandOff | None:
    """The hand-off in an envelope body; None when it is no envelope or another event."""
    env = parse_envelope(body)
    if env is None or env.WhichOneof("payload") != "case_handed_off":
        return None
    return hand_off_of(env)


def hand_off_of(env: events_pb2.EventEnvelope) -> HandOff:
    return HandOff(env.event_id, env.case_id, env.case_handed_off.to_node, env.case_handed_off.new_owner_epoch)


def replica(item: Item) -> Replica | None:
    """The routing-relevant header of a pushed envelope, with its body and trace context; None when unreadable."""
    env = parse_envelope(item.body)
    if env is None:
        return None
    event_type = env.WhichOneof("payload") or ""
    new_owner_epoch = 0
    hand_off_to = ""
    if event_type == "case_handed_off":
        hand_off = env.case_handed_off
        new_owner_epoch = domain.escalation_epoch(event_type, hand_off.kind, hand_off.new_owner_epoch)
        hand_off_to = hand_off.to_node
    event = domain.InboundEvent(
        env.event_id,
        env.case_id,
        env.version,
        env.owner_epoch,
        env.owner_node,
        env.origin_node,
        event_type,
        item.case_sequence,
        new_owner_epoch,
    )
    return Replica(event, item.body, hand_off_to, env.trace_context)


def case_of(body: bytes) -> str | None:
    """The case an envelope body belongs to; None when it is no envelope."""
    env = parse_envelope(body)
    return env.case_id if env is not None else None


def summary(item: Item) -> str:
    """What an operator sees of a quarantined item (no personal data: type, case, version, sequence)."""
    env = parse_envelope(item.body) if item.kind == ENVELOPE else None
    if env is not None:
        return domain.payload_summary(env.WhichOneof("payload") or "", env.case_id, env.version, item.case_sequence)
    if item.kind == COMMAND and (cmd := parse_command(item.body)) is not None:
        return f"command {cmd.WhichOneof('body')} {cmd.case_id} → {cmd.target_node}"
    return "unreadable item"


def held_event(body: bytes) -> HeldEvent | None:
    envelope = parse_envelope(body)
    if envelope is None:
        return None
    # A placement folded into its creation (issue 21) sets the state its last step set, at its version.
    env = last_unfolded(envelope)
    kind = env.WhichOneof("payload") or ""
    state, work_order_id, to_node, epoch = "", "", "", 0
    if kind == "work_order_changed" and env.work_order_changed.to_state:
        state = _STATE_NAMES.get(env.work_order_changed.to_state, "")
        work_order_id = env.work_order_changed.work_order_id
    elif kind == "work_order_created":
        created = env.work_order_created
        work_order_id = created.work_order_id
        state = "ASSIGNED" if created.unit_id and not created.manual_queue else "REGISTERED"
    elif kind == "case_handed_off":
        state, to_node, epoch = "TRANSFERRED", env.case_handed_off.to_node, env.case_handed_off.new_owner_epoch
    else:
        state = _STATE_BY_PAYLOAD.get(kind, "")
    return HeldEvent(
        event_id=envelope.event_id,
        version=envelope.version,
        event_type=envelope.WhichOneof("payload") or "",
        owner_node=env.owner_node,
        owner_epoch=env.owner_epoch,
        state=state,
        work_order_id=work_order_id,
        hand_off_to=to_node,
        hand_off_epoch=epoch,
    )


_STATE_BY_PAYLOAD = {"case_registered": "REGISTERED", "case_withdrawn": "WITHDRAWN", "case_merged": "MERGED"}
_STATE_NAMES = {number: name.removeprefix("CASE_STATE_") for name, number in common_pb2.CaseState.items() if number}


def pushed_items(items: Sequence[exchange_pb2.ExchangeItem]) -> list[Item]:
    """A ``PushEvents`` request's items as the handlers take them."""
    return [
        Item(
            i.position,
            ENVELOPE if i.WhichOneof("item") != "command" else COMMAND,
            i.envelope or i.command,
            i.case_sequence,
        )
        for i in items
    ]


def down_items(items: Sequence[Item]) -> list[exchange_pb2.DownItem]:
    out = []
    for i in items:
        down = exchange_pb2.DownItem(position=i.position)
        if i.kind == COMMAND:
            down.command = i.body
        else:
            down.envelope = i.body
        out.append(down)
    return out


def exchange_items(items: Sequence[Item]) -> list[exchange_pb2.ExchangeItem]:
    """Up-log items as a ``PushEvents`` request carries them."""
    return [
        exchange_pb2.ExchangeItem(position=i.position, command=i.body)
        if i.kind == COMMAND
        else exchange_pb2.ExchangeItem(position=i.position, envelope=i.body, case_sequence=i.case_sequence)
        for i in items
    ]


def pulled_items(items: Sequence[exchange_pb2.DownItem]) -> list[Item]:
    """A ``PullDown`` answer's items as the handlers take them."""
    return [
        Item(d.position, ENVELOPE if d.WhichOneof("item") == "envelope" else COMMAND, d.envelope or d.command)
        for d in items
    ]
