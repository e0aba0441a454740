"""The work order's fields, its clocks (deadlines and windows counted from their starts, pauses,
the sweep's fired stages) and its history; the steps are in ``cooperation`` and ``workorder``."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from services.common.clock import china_date, to_utc
from services.common.errors import FailedPrecondition
from services.common.regions import Tier
from services.routing.domain.events import (
    Assist,
    DeadlineList,
    DeadlineStageReached,
    HistoryEntry,
    Instruction,
    SweepAction,
    WorkOrderChanged,
    WorkOrderEvent,
)
from services.routing.domain.lifecycle import (
    HELD_ACTIONS,
    RECOMPUTE_DEADLINES,
    STAGE_ORDER,
    TERMINAL_STATES,
    TRANSITIONS,
    WINDOW_KINDS,
    Action,
    Stage,
    State,
)
from services.routing.domain.timelimits import DeadlineKind, Limit, TimeLimitPolicy, TimeRules


@dataclass
class WorkOrderClocks:
    """One case's handling at one node: what it holds and how its clocks run (``WorkOrder`` acts on it)."""

    id: str
    case_id: str
    node: str
    tier: Tier
    category: str | None = None
    region_code: str | None = None
    state: State = State.REGISTERED
    unit_id: str | None = None
    handling_kind: DeadlineKind = DeadlineKind.SETTLE
    deadlines: dict[str, datetime] = field(default_factory=dict)
    windows: dict[str, datetime] = field(default_factory=dict)
    clock_starts: dict[str, datetime] = field(default_factory=dict)
    pauses: list[tuple[datetime, datetime]] = field(default_factory=list)
    paused_since: datetime | None = None
    extension_requested: bool = False
    extension_pending: bool = False
    extension_days: int = 0
    objection_barred: bool = False
    reopen_count: int = 0
    reviewed: bool = False
    reply_text: str | None = None
    reply_attachments: tuple[str, ...] = ()
    replied_at: datetime | None = None
    merged_into: str | None = None
    merged_from: State | None = None
    assists: dict[str, Assist] = field(default_factory=dict)  # 协办 by unit; the lead is ``unit_id``
    leader_class: str | None = None  # 领导批转: the class that holds the case for a leader
    leader_unit: str | None = None  # the unit placement chose, assigned once the leader has instructed
    instruction: Instruction | None = None

    @property
    def awaiting_instruction(self) -> bool:
        return self.leader_class is not None and self.instruction is None

    transferred_to: str | None = None
    fired: set[tuple[str, str]] = field(default_factory=set)
    history: list[HistoryEntry] = field(default_factory=list)
    version: int = 0

    def limit_of(self, kind: str, policy: TimeLimitPolicy) -> Limit:
        """The limit behind one of this work order's deadlines, extension included."""
        limit = policy.limit_for(DeadlineKind(kind), tier=self.tier, category=self.category)
        if kind == self.handling_kind and self.extension_days:
            return Limit(limit.days + self.extension_days, limit.count)
        return limit

    def record_sweep(
        self, action: SweepAction, *, at: datetime | None = None, actor: str = "system"
    ) -> list[WorkOrderEvent]:
        """Remember that a sweep stage fired (and the earlier ones with it), so it never fires twice.

        An action computed against a deadline that has since moved or been met is dropped.
        Not a state transition, so not in ``TRANSITIONS``; it does go into the history.
        """
        if action.work_order_id != self.id or self.deadlines.get(action.kind) != action.deadline:
            return []
        for stage in STAGE_ORDER[: STAGE_ORDER.index(action.stage) + 1]:
            self.fired.add((action.kind, stage.value))
        owing: tuple[str, ...] = ()
        if action.kind == DeadlineKind.ASSIST:
            owing = self.late_assists(action.deadline)
            if action.stage is not Stage.WARNING:
                for unit in owing:
                    self.assists[unit].late = True  # chased: counted late whenever it answers
        at = to_utc(at if at is not None else action.boundary)
        self.history.append(HistoryEntry(at, actor, f"{action.stage.value}:{action.kind}", self.state, self.state))
        self.version += 1
        return [
            DeadlineStageReached(
                work_order_id=self.id,
                case_id=self.case_id,
                node=self.node,
                unit_id=self.unit_id,
                kind=action.kind,
                stage=action.stage,
                deadline=action.deadline,
                at=at,
                unit_ids=owing,
            )
        ]

    def recompute(self, rules: TimeRules) -> list[str]:
        """Recompute every running clock from its start (a calendar year was loaded); returns kinds that moved.

        Not a transition: the caller records it (history and event) when something moved.
        """
        before = {**self.deadlines, **self.windows}
        for kind in list(self.clock_starts):
            if kind in self.deadlines or kind in self.windows:
                self._recompute(DeadlineKind(kind), rules)
        after = {**self.deadlines, **self.windows}
        return sorted(k for k in after if before.get(k) != after[k])

    def calendar_loaded(
        self, rules: TimeRules, *, at: datetime, years: Iterable[int], provisional: Iterable[str], actor: str = "system"
    ) -> list[WorkOrderChanged]:
        """An official calendar year was loaded: every running clock is counted again from its start.

        One history entry (and event) per deadline that moved, naming the old and the new day, so
        the case's history shows why a due date changed; when none moved, one entry says that the
        provisional dates (``provisional``: the kinds counted Monday-Friday) now stand as official.
        Not a transition: the state stays.
        """
        at = to_utc(at)
        label = "official calendar for " + ", ".join(str(y) for y in sorted(set(years))) + " loaded"
        before = {**self.deadlines, **self.windows}
        moved = self.recompute(rules)
        after = {**self.deadlines, **self.windows}
        notes = [
            f"{kind} due {china_date(before[kind]).isoformat()} → {china_date(after[kind]).isoformat()} ({label})"
            for kind in moved
            if kind in before
        ]
        if not notes:
            kinds = ", ".join(f"{k} due {china_date(after[k]).isoformat()}" for k in sorted(provisional) if k in after)
            notes = [f"{kinds or 'deadlines'} unchanged, no longer provisional ({label})"]
        return [self._noted(RECOMPUTE_DEADLINES, at=at, actor=actor, note=note) for note in notes]

    def late_assists(self, deadline: datetime) -> tuple[str, ...]:
        """Unanswered assisting units due by ``deadline`` (the assist deadline the sweep chases)."""
        return tuple(sorted(a.unit_id for a in self.assists.values() if a.pending and a.due <= deadline))

    def _noted(self, label: str, *, at: datetime, actor: str, note: str) -> WorkOrderChanged:
        """A history entry (and its event) that records a fact about the case and keeps the state."""
        self.history.append(HistoryEntry(at, actor, label, self.state, self.state, note))
        self.version += 1
        return WorkOrderChanged(
            work_order_id=self.id,
            case_id=self.case_id,
            action=label,
            from_state=self.state,
            to_state=self.state,
            actor=actor,
            at=at,
            reason=note,
            unit_id=self.unit_id,
            deadlines=self._deadline_list(),
        )

    def _check(self, action: Action, at: datetime) -> datetime:
        """The table lookup every action starts with; returns ``at`` as UTC."""
        if (self.state, action) not in TRANSITIONS:
            raise FailedPrecondition(f"cannot {action.value} a work order in state {self.state.value}", self.state)
        if action in HELD_ACTIONS and self.awaiting_instruction:
            raise FailedPrecondition(
                f"cannot {action.value}: the case waits for the leader's instruction"
                f" (领导批示, class {self.leader_class})",
                self.state,
            )
        return to_utc(at)

    def _changed(
        self,
        action: Action,
        at: datetime,
        actor: str,
        reason: str,
        *,
        target: str | None = None,
        label: str | None = None,
        to_state: State | None = None,
    ) -> WorkOrderChanged:
        """``label`` names the step in the history and the event when it is a kind of ``action`` (escalate_up);
        ``to_state`` overrides the table's target where the table names a usual one (unmerge)."""
        before = self.state
        after = to_state or TRANSITIONS[(before, action)]
        if after in TERMINAL_STATES or after is State.REPLIED:
            self._close_pause(at)
        self.state = after
        self.history.append(HistoryEntry(at, actor, label or action.value, before, after, reason))
        self.version += 1
        return WorkOrderChanged(
            work_order_id=self.id,
            case_id=self.case_id,
            action=label or action,  # the label travels as the event's action text
            from_state=before,
            to_state=after,
            actor=actor,
            at=at,
            reason=reason,
            unit_id=self.unit_id,
            deadlines=self._deadline_list(),
            target=target,
        )

    def _deadline_list(self) -> DeadlineList:
        return tuple(sorted({**self.deadlines, **self.windows}.items()))

    def _start_clock(self, kind: DeadlineKind, at: datetime, rules: TimeRules) -> None:
        self.clock_starts[kind] = at
        self._recompute(kind, rules)

    def _recompute(self, kind: DeadlineKind, rules: TimeRules) -> None:
        start = self.clock_starts[kind]
        windows = kind in WINDOW_KINDS
        due = rules.deadline(
            kind,
            start,
            tier=self.tier,
            category=self.category,
            # Rights (objection, review request) run regardless of pauses; duties stand still.
            paused=() if windows else self.pauses,
            extra_days=self.extension_days if kind == self.handling_kind else 0,
        )
        target = self.windows if windows else self.deadlines
        if target.get(kind) != due:
            # A moved deadline is a new deadline: its warning, chase and supervision may fire again.
            self.fired = {(k, s) for (k, s) in self.fired if k != kind}
        target[kind] = due

    def _stop_clock(self, kind: DeadlineKind) -> None:
        self.deadlines.pop(kind, None)
        self.windows.pop(kind, None)
        self.clock_starts.pop(kind, None)

    def _stop_all_clocks(self, at: datetime) -> None:
        self._close_pause(at)
        for kind in list(self.deadlines):
            self._stop_clock(DeadlineKind(kind))

    def _close_pause(self, at: datetime) -> None:
        if self.paused_since is not None:
            self.pauses.append((self.paused_since, at))
            self.paused_since = None
