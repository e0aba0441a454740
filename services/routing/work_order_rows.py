"""The ``work_orders`` and ``work_order_history`` rows of a work order: the aggregate as JSON, its
columns, its new history rows, and the bulk statements the sweep writes with."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Connection, Table, bindparam, insert, select, update
from sqlalchemy.orm import Session

from services.common.regions import RegionTree, Tier
from services.common.timeutil import to_utc
from services.routing.domain import OPEN_STATES, Assist, HistoryEntry, Instruction, State, WorkOrder
from services.routing.domain.timelimits import DeadlineKind
from services.routing.handlers import FAR_FUTURE, StoredWorkOrder
from services.routing.inbox import InboxRow
from services.routing.models import CaseVersionRow, SupervisionRow, WorkOrderHistoryRow, WorkOrderRow

OPEN = sorted(s.value for s in OPEN_STATES)
# A stored state by its value: a dict lookup, not Enum's __call__ (a list reads one or more per row).
STATE_OF: dict[str, State] = {s.value: s for s in State}


WO = cast(Table, WorkOrderRow.__table__)


HISTORY = cast(Table, WorkOrderHistoryRow.__table__)


SUPERVISION = cast(Table, SupervisionRow.__table__)


CASE_VERSION = cast(Table, CaseVersionRow.__table__)


# Bulk statements (executemany): the dicts carry the column values, ``b_*`` keys the row to touch.
UPDATE_WORK_ORDER = update(WO).where(WO.c.work_order_id == bindparam("b_work_order_id"))


UPDATE_CASE_VERSION = update(CASE_VERSION).where(CASE_VERSION.c.case_id == bindparam("b_case_id"))
INSERT_CASE_VERSION = insert(CASE_VERSION)
# A case's (version, owner epoch), FOR UPDATE when ``emit`` numbers events from it.
_CASE_VERSION_OF = select(CASE_VERSION.c.version, CASE_VERSION.c.owner_epoch).where(
    CASE_VERSION.c.case_id == bindparam("case_id")
)
CASE_VERSION_OF = {False: _CASE_VERSION_OF, True: _CASE_VERSION_OF.with_for_update()}


IN_CHUNK = 5000  # ids per IN (...) list: far below SQLite's and PostgreSQL's parameter limits


def _dt(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else to_utc(value).isoformat()


def encode_order(order: WorkOrder) -> str:
    """The aggregate without its history (kept in its own table) as JSON."""
    return json.dumps(
        {
            "tier": order.tier.value,
            "category": order.category,
            "region_code": order.region_code,
            "unit_id": order.unit_id,
            "handling_kind": order.handling_kind.value,
            "deadlines": {k: _iso(v) for k, v in order.deadlines.items()},
            "windows": {k: _iso(v) for k, v in order.windows.items()},
            "clock_starts": {k: _iso(v) for k, v in order.clock_starts.items()},
            "pauses": [[_iso(a), _iso(b)] for a, b in order.pauses],
            "paused_since": _iso(order.paused_since),
            "ext": [order.extension_requested, order.extension_pending, order.extension_days],
            "objection_barred": order.objection_barred,
            "reopen_count": order.reopen_count,
            "reviewed": order.reviewed,
            "reply": [order.reply_text, list(order.reply_attachments), _iso(order.replied_at)],
            "merged_into": order.merged_into,
            "merged_from": order.merged_from.value if order.merged_from else None,
            "leader": [
                order.leader_class,
                order.leader_unit,
                None
                if order.instruction is None
                else [
                    order.instruction.leader_name,
                    order.instruction.text,
                    _iso(order.instruction.at),
                    order.instruction.recorded_by,
                ],
            ],
            "assists": {
                u: [_iso(a.requested_at), _iso(a.due), _iso(a.answered_at), a.answer, a.late]
                for u, a in order.assists.items()
            },
            "transferred_to": order.transferred_to,
            "fired": sorted([k, s] for k, s in order.fired),
        },
        ensure_ascii=False,
        separators=(",", ":"),
    )


def inbox_row(row: Any, title: str) -> InboxRow:
    """A ``work_orders`` row as an inbox shows it: the columns, and of its JSON only the deadlines."""
    data = json.loads(row.data)
    return InboxRow(
        work_order_id=row.work_order_id,
        case_id=row.case_id,
        title=title,
        category=row.category,
        state=STATE_OF[row.state],
        unit_id=row.unit_id,
        deadlines={k: datetime.fromisoformat(v) for k, v in data["deadlines"].items()},
        windows={k: datetime.fromisoformat(v) for k, v in data["windows"].items()},
        next_due=to_utc(row.next_due),
    )


def decode_order(row: Any, history: list[HistoryEntry]) -> WorkOrder:
    """``row`` is a ``WorkOrderRow`` or a Core row of the ``work_orders`` table (same attribute names)."""
    d: dict[str, Any] = json.loads(row.data)
    requested, pending, ext_days = d["ext"]
    reply_text, attachments, replied_at = d["reply"]
    return WorkOrder(
        id=row.work_order_id,
        case_id=row.case_id,
        node=row.node,
        tier=Tier(d["tier"]),
        category=d["category"],
        region_code=d["region_code"],
        state=STATE_OF[row.state],
        unit_id=d["unit_id"],
        handling_kind=DeadlineKind(d["handling_kind"]),
        deadlines={k: datetime.fromisoformat(v) for k, v in d["deadlines"].items()},
        windows={k: datetime.fromisoformat(v) for k, v in d["windows"].items()},
        clock_starts={k: datetime.fromisoformat(v) for k, v in d["clock_starts"].items()},
        pauses=[(datetime.fromisoformat(a), datetime.fromisoformat(b)) for a, b in d["pauses"]],
        paused_since=_dt(d["paused_since"]),
        extension_requested=requested,
        extension_pending=pending,
        extension_days=ext_days,
        objection_barred=d["objection_barred"],
        reopen_count=d["reopen_count"],
        reviewed=d["reviewed"],
        reply_text=reply_text,
        reply_attachments=tuple(attachments),
        replied_at=_dt(replied_at),
        merged_into=d["merged_into"],
        merged_from=State(d["merged_from"]) if d.get("merged_from") else None,
        **_leader_fields(d.get("leader")),
        assists={
            u: Assist(u, datetime.fromisoformat(r), datetime.fromisoformat(due), _dt(ans), text, late)
            for u, (r, due, ans, text, late) in d.get("assists", {}).items()
        },
        transferred_to=d["transferred_to"],
        fired={(k, s) for k, s in d["fired"]},
        history=history,
        version=row.version,
    )


def _leader_fields(raw: Any) -> dict[str, Any]:
    if not raw:
        return {}
    class_id, unit, given = raw
    instruction = None
    if given:
        name, text, at, by = given
        instruction = Instruction(name, text, datetime.fromisoformat(at), by)
    return {"leader_class": class_id, "leader_unit": unit, "instruction": instruction}


def work_order_columns(stored: StoredWorkOrder) -> dict[str, Any]:
    """The ``work_orders`` columns of a stored work order, except its key and ``created_at``."""
    order = stored.order
    return {
        "case_id": order.case_id,
        "node": order.node,
        "unit_id": order.unit_id or "",
        "category": order.category or "",
        "region_code": order.region_code or "",
        "state": order.state.value,
        "manual_queue": int(stored.manual_queue),
        "manual_reason": stored.manual_reason,
        "hand_off_to": order.transferred_to or "",
        "data": encode_order(order),
        "requested_days": stored.requested_days,
        "provisional": ",".join(stored.provisional),
        "assisting": _assisting(order),
        "leader_queue": (order.leader_class or "") if order.awaiting_instruction else "",
        # SQLite keeps wall-clock text: every stored instant is UTC so comparisons hold on both backends.
        "next_due": to_utc(stored.next_due or FAR_FUTURE),
        "next_sweep_at": None if stored.next_sweep_at is None else to_utc(stored.next_sweep_at),
        "version": order.version,
        "updated_at": to_utc(stored.updated_at),
    }


def _assisting(order: WorkOrder) -> str:
    pending = sorted(u for u, a in order.assists.items() if a.pending)
    return f",{','.join(pending)}," if pending else ""


def new_history(stored: StoredWorkOrder) -> list[dict[str, Any]]:
    """History rows not stored yet; marks them stored."""
    order = stored.order
    rows = [
        {
            "work_order_id": order.id,
            "at": to_utc(entry.at),
            "actor": entry.actor,
            "action": entry.action,
            "from_state": entry.from_state.value if entry.from_state else "",
            "to_state": entry.to_state.value,
            "reason": entry.reason,
        }
        for entry in order.history[stored.saved_history :]
    ]
    stored.saved_history = len(order.history)
    return rows


def bulk_insert(session: Session, table: Table, rows: list[dict[str, Any]]) -> None:
    """INSERT many rows as one executemany (psycopg 3 pipelines it; array-unnest forms measured slower:
    psycopg dumps big arrays in Python)."""
    if rows:
        session.execute(insert(table), rows)


def bulk_update(session: Session, statement: Any, rows: list[dict[str, Any]]) -> None:
    """UPDATE many rows as one executemany; each dict holds the new values and the ``b_*`` key."""
    if rows:
        session.execute(statement, rows)


class SessionBound:
    """What every table family of ``SqlRoutingUnitOfWork`` works in: the session of its transaction and the node."""

    session: Session
    _node: str
    _regions: RegionTree | None
    # Work orders ``get`` found absent in this unit of work: ``save`` inserts them without looking again.
    _absent: set[str]
    # (version, owner epoch) of the cases this unit of work wrote to ``case_versions`` (so holds
    # locked until commit): ``emit`` numbers on from them without reading the row again.
    _versions: dict[str, list[int]]
    # A query's read transaction (``read_transaction``) when the unit of work only reads: then it has
    # no ORM session, and the reads run their Core statements on this connection.
    _reads: Connection | None

    def _connection(self) -> Connection:
        """The connection the reads run their Core statements on."""
        return self._reads if self._reads is not None else self.session.connection()

    @property
    def _postgres(self) -> bool:
        return self.session.get_bind().dialect.name == "postgresql"
