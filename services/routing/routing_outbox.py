"""What routing puts on its outbox: each event with the case's next version (one at a time, or many
cases at once for the sweep), the commands it sends (督办 to an owner elsewhere, a command following a
hand-off, handling updates for a registering node no replica reaches), and the payload of each event."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from lianxin.common.v1 import common_pb2
from lianxin.events.v1 import events_pb2
from sqlalchemy import select

from services.common.events import WORK_ORDER_EVENTS, envelope, to_bus_event
from services.common.outbox import append_event, append_events
from services.common.service import BusEvent
from services.common.timeutil import to_timestamp
from services.routing.domain import DeadlineStageReached, ReplyGiven, State, WorkOrderChanged, WorkOrderCreated
from services.routing.evaluation import CaseSampled, ThirdPartyRated
from services.routing.handlers import (
    CaseMergedInto,
    CaseOwner,
    HandedOff,
    RatingApplied,
    RoutingEvent,
    SupervisionRecorded,
    SupervisionRequested,
    registering_node_to_tell,
)
from services.routing.models import outbox
from services.routing.work_order_rows import (
    CASE_VERSION,
    CASE_VERSION_OF,
    IN_CHUNK,
    INSERT_CASE_VERSION,
    UPDATE_CASE_VERSION,
    SessionBound,
    bulk_insert,
    bulk_update,
)


class RoutingOutbox(SessionBound):
    """Routing's events and commands, in the transaction of the change they tell."""

    def emit(self, case_id: str, events: Sequence[RoutingEvent]) -> None:
        """Each event takes the case's next version at this node, in the same transaction (outbox).

        The version row is read locked unless this unit of work wrote it (``start_case``), then
        written back and the events appended in one statement: prebuilt Core statements (issue 21)."""
        if not events:
            return
        self.session.flush()  # anything the ORM holds goes first, as the ORM's own flush would
        connection = self.session.connection()
        counter = self._versions.get(case_id)
        existed = counter is not None
        if counter is None:
            row = connection.execute(CASE_VERSION_OF[True], {"case_id": case_id}).first()
            existed = row is not None
            counter = [row.version, row.owner_epoch] if row is not None else [0, 0]
        before = list(counter)
        out = self.numbered(case_id, events, counter)
        values = {"version": counter[0], "owner_epoch": counter[1]}
        if not existed:
            connection.execute(INSERT_CASE_VERSION, {"case_id": case_id, **values})
        elif counter != before:
            connection.execute(UPDATE_CASE_VERSION, {"b_case_id": case_id, **values})
        self._versions[case_id] = counter
        append_events(self.session, outbox, out)

    def emit_many(self, items: Sequence[tuple[str, Sequence[RoutingEvent]]]) -> None:
        """``emit`` for many cases at once: one versions read, bulk version writes, one outbox append."""
        case_ids = sorted({case_id for case_id, events in items if events})
        if not case_ids:
            return
        self.session.flush()
        known: dict[str, list[int]] = {}
        for start in range(0, len(case_ids), IN_CHUNK):
            query = (
                select(CASE_VERSION.c.case_id, CASE_VERSION.c.version, CASE_VERSION.c.owner_epoch)
                .where(CASE_VERSION.c.case_id.in_(case_ids[start : start + IN_CHUNK]))
                .order_by(CASE_VERSION.c.case_id)  # row locks in case order, as every bulk writer takes them
                .with_for_update()
            )
            known.update({r.case_id: [r.version, r.owner_epoch] for r in self.session.execute(query)})
        existing = set(known)
        self._versions.clear()  # written below without it
        out: list[tuple[BusEvent, str | None]] = []
        for case_id, events in items:
            counter = known.setdefault(case_id, [0, 0])
            if events:
                out += self.numbered(case_id, events, counter)
        fresh = [{"case_id": c, "version": v, "owner_epoch": e} for c, (v, e) in known.items() if c not in existing]
        changed = [{"b_case_id": c, "version": v, "owner_epoch": e} for c, (v, e) in known.items() if c in existing]
        bulk_insert(self.session, CASE_VERSION, fresh)
        bulk_update(self.session, UPDATE_CASE_VERSION, changed)
        append_events(self.session, outbox, out)

    def numbered(
        self, case_id: str, events: Sequence[RoutingEvent], counter: list[int]
    ) -> list[tuple[BusEvent, str | None]]:
        """The outbox rows of ``events``: each published one takes the case's next version, counted on
        in ``counter`` ([version, owner epoch]; a hand-off moves the epoch on after its event)."""
        tell = self._registering_node_to_tell(case_id)
        out: list[tuple[BusEvent, str | None]] = []
        for event, steps in _folded(events) if FOLD_PLACEMENT else ((e, ()) for e in events):
            translated = _payload(event)
            if translated is None:
                continue
            field, payload, at = translated
            if steps:
                payload.placement.extend(_changed_message(step) for step in steps)
            # A folded placement takes the versions its events took one by one, and names the last.
            counter[0] += 1 + len(steps)
            env = envelope(
                payload_field=field,
                payload=payload,
                case_id=case_id,
                version=counter[0],
                owner_node=self._node,
                owner_epoch=counter[1],
                origin_node=self._node,
                origin_service="routing",
                occurred_at=at,
            )
            out.extend((bus_event, case_id) for bus_event in _outgoing(env, field, tell))
            if isinstance(event, HandedOff):
                counter[1] = event.new_owner_epoch  # this node is no longer the owner
        return out

    def _registering_node_to_tell(self, case_id: str) -> str | None:
        if self._regions is None:
            return None
        return registering_node_to_tell(case_id, self._node, self._regions)

    def send_supervision(self, request: SupervisionRequested) -> None:
        s = request.supervision
        command = events_pb2.Command(
            # One command per supervision: a retried outbox publish is the same command.
            command_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"lianxin:supervise:{s.supervision_id}")),
            case_id=s.case_id,
            target_node=request.target_node,
            issuing_node=self._node,
            owner_epoch_seen=request.owner_epoch_seen,
            issued_at=to_timestamp(s.issued_at),
            supervise=events_pb2.Command.Supervise(
                supervision_id=s.supervision_id,
                level=s.level,
                demand=s.demand,
                due_at=to_timestamp(s.due_at),
                actor=s.by_actor,
            ),
        )
        self._put_command(command)

    def forward_command(self, body: bytes, owner: CaseOwner) -> None:
        command = events_pb2.Command()
        command.ParseFromString(body)
        # A new id per leg: the exchange of each node delivers a command id once, and a case handed
        # back (上报 after 交办) may take the command to a node it was delivered at before.
        command.command_id = str(
            uuid.uuid5(
                uuid.NAMESPACE_URL, f"lianxin:forward:{command.command_id}:{owner.owner_node}:{owner.owner_epoch}"
            )
        )
        command.target_node = owner.owner_node
        command.owner_epoch_seen = owner.owner_epoch
        self._put_command(command)

    def _put_command(self, command: events_pb2.Command) -> None:
        """On the outbox as routing's ``command``: exchange carries it toward ``target_node``."""
        body = command.SerializeToString()
        append_event(
            self.session,
            outbox,
            BusEvent(event_id=command.command_id, source="routing", event_type="command", body=body),
            command.case_id,
        )


# One work_order_created for a placement that accepts and assigns as it creates (issue 21): the
# steps travel inside it (``placement``) and every reader expands them (``events.unfolded``).
# False publishes the three events, as every node did before (tests compare the two).
FOLD_PLACEMENT = True
# The steps placement takes at the instant of the creation (受理, then 交办 to the unit).
_PLACEMENT_STEPS = ("accept", "assign")


def _folded(events: Sequence[RoutingEvent]) -> list[tuple[RoutingEvent, tuple[WorkOrderChanged, ...]]]:
    """``events`` with each creation paired with the placement steps that follow it at the same
    instant on the same work order (folded into it), every other event with none."""
    out: list[tuple[RoutingEvent, tuple[WorkOrderChanged, ...]]] = []
    index = 0
    while index < len(events):
        event = events[index]
        index += 1
        following = events[index : index + len(_PLACEMENT_STEPS)]
        steps = tuple(step for step in following if isinstance(step, WorkOrderChanged))
        if (
            isinstance(event, WorkOrderCreated)
            and tuple(str(step.action) for step in steps) == _PLACEMENT_STEPS
            and all(step.work_order_id == event.work_order_id and step.at == event.at for step in steps)
        ):
            out.append((event, steps))
            index += len(steps)
        else:
            out.append((event, ()))
    return out


def _outgoing(env: events_pb2.EventEnvelope, field: str, tell: str | None) -> list[BusEvent]:
    """The event for ``env``, and after it, when the registering node ``tell`` follows this kind of
    event, the same event as a command for that node."""
    bus_event = to_bus_event(env)
    if tell is None or field not in WORK_ORDER_EVENTS:
        return [bus_event]
    return [bus_event, _handling_command(env, bus_event.body, tell)]


def _handling_command(env: events_pb2.EventEnvelope, body: bytes, target: str) -> BusEvent:
    """The work order event ``env`` (serialized as ``body``) as a ``Command.HandlingUpdate`` for ``target``.

    The command id derives from the event id, so a redelivery is one command however often the
    relay publishes it; routing's outbox publishes it as type "command" and exchange carries it to
    ``target`` (docs/exchange.md "Commands").
    """
    command_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"lianxin:handling:{env.event_id}"))
    command = events_pb2.Command(
        command_id=command_id,
        case_id=env.case_id,
        target_node=target,
        issuing_node=env.origin_node,
        owner_epoch_seen=env.owner_epoch,  # exchange never retargets a handling update
        issued_at=env.occurred_at,
        handling=events_pb2.Command.HandlingUpdate(envelope=body),
    )
    command.trace_context.update(env.trace_context)
    return BusEvent(event_id=command_id, source="routing", event_type="command", body=command.SerializeToString())


def _state_enum(state: State | None) -> common_pb2.CaseState.ValueType:
    return common_pb2.CaseState.Value(f"CASE_STATE_{state.value}") if state else common_pb2.CASE_STATE_UNSPECIFIED


def _deadlines(items: Sequence[tuple[str, datetime]]) -> list[common_pb2.Deadline]:
    return [common_pb2.Deadline(kind=k, due_at=to_timestamp(v)) for k, v in items]


def _payload(event: RoutingEvent) -> tuple[str, Any, datetime] | None:
    """The envelope's payload field, the payload and when it happened; None for an event not published
    (a reply travels in its work_order_changed)."""
    return _work_order_payload(event) or _case_payload(event)


def _work_order_payload(event: RoutingEvent) -> tuple[str, Any, datetime] | None:
    if isinstance(event, WorkOrderCreated):
        return (
            "work_order_created",
            events_pb2.WorkOrderCreated(
                work_order_id=event.work_order_id,
                unit_id=event.unit_id or "",
                node=event.node,
                category=event.category or "",
                region_code=event.region_code or "",
                deadlines=_deadlines(event.deadlines),
                manual_queue=event.manual_queue,
            ),
            event.at,
        )
    if isinstance(event, WorkOrderChanged):
        return "work_order_changed", _changed_message(event), event.at
    if isinstance(event, DeadlineStageReached):
        return (
            "deadline_warning",
            events_pb2.DeadlineWarning(
                work_order_id=event.work_order_id,
                deadline_kind=event.kind,
                due_at=to_timestamp(event.deadline),
                stage=event.stage.value,
                unit_ids=list(event.unit_ids),
            ),
            event.at,
        )
    return None


def _changed_message(event: WorkOrderChanged) -> events_pb2.WorkOrderChanged:
    return events_pb2.WorkOrderChanged(
        work_order_id=event.work_order_id,
        unit_id=event.unit_id or "",
        from_state=_state_enum(event.from_state),
        to_state=_state_enum(event.to_state),
        action=str(event.action),
        actor=event.actor,
        reason=event.reason,
        deadlines=_deadlines(event.deadlines),
        reply_text=event.reply_text,
        main_case_id=event.main_case_id,
        assisting_unit_id=event.assisting_unit_id,
        leader_name=event.leader_name,
    )


def _case_payload(event: RoutingEvent) -> tuple[str, Any, datetime] | None:
    if isinstance(event, SupervisionRecorded):
        s = event.supervision
        return (
            "supervision_issued",
            events_pb2.SupervisionIssued(
                supervision_id=s.supervision_id,
                level=s.level,
                by_node=s.by_node,
                demand=s.demand,
                due_at=to_timestamp(s.due_at),
            ),
            s.issued_at,
        )
    if isinstance(event, HandedOff):
        case = common_pb2.Case()
        case.ParseFromString(event.case_snapshot)
        case.ClearField("complainant")  # never personal data in an event (DESIGN §5)
        if not case.case_id:
            # No snapshot kept (placed before snapshots were): what the work order knows.
            case.case_id, case.region_code, case.category = event.case_id, event.region_code, event.category
        return (
            "case_handed_off",
            events_pb2.CaseHandedOff(
                from_node=event.from_node,
                to_node=event.to_node,
                new_owner_epoch=event.new_owner_epoch,
                kind=event.kind,
                reason=event.reason,
                case=case,
                from_work_order_id=event.from_work_order_id,
            ),
            event.at,
        )
    if isinstance(event, RatingApplied):
        return (
            "case_evaluated",
            events_pb2.CaseEvaluated(
                satisfaction=common_pb2.Satisfaction.Value(f"SATISFACTION_{event.satisfaction}"),
                comment=event.comment,
                work_order_id=event.work_order_id,
                unit_id=event.unit_id,
            ),
            event.at,
        )
    if isinstance(event, CaseMergedInto):
        return "case_merged", events_pb2.CaseMerged(into_case_id=event.into_case_id, reason=event.reason), event.at
    if isinstance(event, CaseSampled):
        return (
            "case_sampled",
            events_pb2.CaseSampled(
                month=event.month, seed=event.seed, work_order_id=event.work_order_id, unit_id=event.unit_id
            ),
            event.at,
        )
    if isinstance(event, ThirdPartyRated):
        return (
            "third_party_rated",
            events_pb2.ThirdPartyRated(
                month=event.month,
                rating=common_pb2.Satisfaction.Value(f"SATISFACTION_{event.rating}"),
                comment=event.comment,
                work_order_id=event.work_order_id,
                unit_id=event.unit_id,
                evaluator=event.evaluator,
            ),
            event.at,
        )
    if isinstance(event, ReplyGiven):
        return None  # carried by work_order_changed(reply); the text stays with the work order
    return None
