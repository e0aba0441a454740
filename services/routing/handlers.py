"""Routing's use cases as plain functions over a unit of work (no gRPC, SQLAlchemy or broker here).

One module per family in ``services.routing.handling``, all importable from here: ``ports`` (the
unit-of-work Protocol, ``Routing``, the records and events beside the work order's), ``bookkeeping``
(save, emit and follow the main case; load locked; ``act``), ``placing`` (a case arriving: assign,
交办 down, queue, 上报 back), ``transitions`` (the office's and units' actions), ``assisting`` (主办/协办
and the reply), ``leader_instructions`` (领导批示), ``hand_offs`` (上报, 人工交办), ``merge`` (并单),
``citizen`` (ratings, 复查, 撤回, video's notes), ``supervision`` (催办/督办), ``sweep`` (deadlines and
provisional ones), ``evaluation`` (第三方评价). The unit of work turns the domain events returned by
``services.routing.domain`` into outbox rows, with the case's next version; the store implements
it, tests fake it (tests/support/routing.py).
"""

from __future__ import annotations

from services.routing.handling.assisting import answer_assist, reply, request_assist
from services.routing.handling.bookkeeping import (
    act,
    changing,
    checked_actor,
    lead_only,
    load,
    next_sweep_boundary,
    persist,
    refresh,
    refuse_if_handed_off,
)
from services.routing.handling.citizen import (
    WithdrawalOutcome,
    on_case_evaluated,
    on_case_withdrawn,
    on_consultation,
    on_visit_outcome,
)
from services.routing.handling.evaluation import (
    SampleView,
    draw_evaluation_sample,
    list_evaluation_sample,
    record_third_party_rating,
)
from services.routing.handling.hand_offs import escalate, hand_down
from services.routing.handling.leader_instructions import record_instruction
from services.routing.handling.merge import MergeResult, merge_cases, unmerge_case
from services.routing.handling.placing import decide_escalated, handling_kind_for, on_case_arrived
from services.routing.handling.ports import (
    FAR_FUTURE,
    LEVELS,
    SYSTEM,
    BatchChange,
    CalendarLoader,
    CaseMergedInto,
    CaseOwner,
    HandedOff,
    RatingApplied,
    RegisteredCase,
    Routing,
    RoutingEvent,
    RoutingUnitOfWork,
    StoredWorkOrder,
    Supervision,
    SupervisionRecorded,
    SupervisionRequested,
    UnitOfWorkFactory,
    WorkOrderQuery,
    registering_node_to_tell,
    work_order_id_for,
)
from services.routing.handling.supervision import (
    SupervisionSent,
    apply_supervision_command,
    handed_on_to,
    note_replica_owner,
    owner_to_note,
    record_replicated_supervision,
    supervise,
)
from services.routing.handling.sweep import SweepReport, load_calendar_years, recompute_provisional_deadlines, run_sweep
from services.routing.handling.transitions import (
    accept,
    arbitrate,
    assign_manually,
    decide_extension,
    get_work_order,
    request_extension,
    review_decision,
)

__all__ = [
    "FAR_FUTURE",
    "LEVELS",
    "SYSTEM",
    "BatchChange",
    "CalendarLoader",
    "CaseMergedInto",
    "CaseOwner",
    "HandedOff",
    "MergeResult",
    "RatingApplied",
    "RegisteredCase",
    "Routing",
    "RoutingEvent",
    "RoutingUnitOfWork",
    "SampleView",
    "StoredWorkOrder",
    "Supervision",
    "SupervisionRecorded",
    "SupervisionRequested",
    "SupervisionSent",
    "SweepReport",
    "UnitOfWorkFactory",
    "WithdrawalOutcome",
    "WorkOrderQuery",
    "accept",
    "act",
    "answer_assist",
    "apply_supervision_command",
    "arbitrate",
    "assign_manually",
    "changing",
    "checked_actor",
    "decide_escalated",
    "decide_extension",
    "draw_evaluation_sample",
    "escalate",
    "get_work_order",
    "hand_down",
    "handed_on_to",
    "handling_kind_for",
    "lead_only",
    "list_evaluation_sample",
    "load",
    "load_calendar_years",
    "merge_cases",
    "next_sweep_boundary",
    "note_replica_owner",
    "on_case_arrived",
    "on_case_evaluated",
    "on_case_withdrawn",
    "on_consultation",
    "on_visit_outcome",
    "owner_to_note",
    "persist",
    "recompute_provisional_deadlines",
    "record_instruction",
    "record_replicated_supervision",
    "record_third_party_rating",
    "refresh",
    "refuse_if_handed_off",
    "registering_node_to_tell",
    "reply",
    "request_assist",
    "request_extension",
    "review_decision",
    "run_sweep",
    "supervise",
    "unmerge_case",
    "work_order_id_for",
]
