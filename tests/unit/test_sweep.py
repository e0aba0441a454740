"""The deadline sweep: warning, chase and supervision exactly at their boundaries, each fired once."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta

from services.common.calendar import ChineseWorkingCalendar
from services.common.regions import Tier
from services.common.timeutil import CHINA
from services.routing.domain import (
    DeadlineStageReached,
    Stage,
    SweepAction,
    WorkOrder,
    sweep,
)
from services.routing.domain.timelimits import DeadlineKind, TimeLimitPolicy, TimeRules

POLICY = TimeLimitPolicy.default()
CAL = ChineseWorkingCalendar()
RULES = TimeRules(POLICY, CAL)
TICK = timedelta(microseconds=1)
K = DeadlineKind


def at(m: int, d: int, hh: int = 10) -> datetime:
    return datetime(2026, m, d, hh, tzinfo=CHINA)


def eod(m: int, d: int) -> datetime:
    return datetime.combine(date(2026, m, d), time.max, tzinfo=CHINA)


def registered(id: str = "wo-1") -> WorkOrder:
    order, _ = WorkOrder.register(
        id=id,
        case_id=f"case-{id}",
        node="511102",
        tier=Tier.COUNTY,
        at=at(6, 1, 9),
        actor="clerk",
        rules=RULES,
    )
    return order


def in_progress(id: str = "wo-1") -> WorkOrder:
    order = registered(id)
    order.accept(at=at(6, 1), actor="clerk", rules=RULES)
    order.assign(unit_id="lszq-zjj", at=at(6, 2), actor="clerk", rules=RULES)
    order.start(at=at(6, 3), actor="lszq-zjj")
    return order  # only the settlement deadline runs: end of 31 Jul


def stages(actions: list[SweepAction]) -> list[tuple[str, Stage]]:
    return [(a.kind, a.stage) for a in actions]


def run(order: WorkOrder, now: datetime) -> list[SweepAction]:
    return sweep([order], now, POLICY, CAL)


# Settlement: due end of Fri 31 Jul; 60-day limit → warning 12 days before (end of 19 Jul);
# supervision 2 working days after (end of Tue 4 Aug).
WARN, CHASE, SUPERVISE = eod(7, 19), eod(7, 31), eod(8, 4)


def test_each_stage_fires_exactly_at_its_boundary_and_not_a_tick_before() -> None:
    order = in_progress()
    assert order.deadlines == {K.SETTLE: CHASE}

    assert run(order, WARN - TICK) == []
    (warning,) = run(order, WARN)
    assert (warning.kind, warning.stage, warning.deadline, warning.boundary) == (
        K.SETTLE,
        Stage.WARNING,
        CHASE,
        WARN,
    )
    order.record_sweep(warning)

    assert run(order, CHASE - TICK) == []
    (chase,) = run(order, CHASE)
    assert chase.stage is Stage.CHASE and chase.boundary == CHASE
    order.record_sweep(chase)

    assert run(order, SUPERVISE - TICK) == []
    (supervision,) = run(order, SUPERVISE)
    assert supervision.stage is Stage.SUPERVISION and supervision.node == "511102"
    assert supervision.unit_id == "lszq-zjj"
    order.record_sweep(supervision)

    assert run(order, SUPERVISE + timedelta(days=30)) == []


def test_a_stage_fires_once_however_often_the_sweep_runs() -> None:
    order = in_progress()
    for hour in range(0, 48):
        for action in run(order, WARN + timedelta(hours=hour)):
            order.record_sweep(action, at=WARN + timedelta(hours=hour))
    assert [h.action for h in order.history if ":" in h.action] == ["warning:settle"]
    # Without recording, the pure sweep keeps proposing it: remembering is the work order's job.
    fresh = in_progress()
    assert len(run(fresh, WARN)) == 1
    assert run(fresh, WARN) == run(fresh, WARN + timedelta(hours=1))


def test_a_late_sweep_skips_the_stale_warning_but_sends_chase_and_supervision() -> None:
    order = in_progress()
    assert stages(run(order, CHASE + TICK)) == [(K.SETTLE, Stage.CHASE)]
    assert stages(run(order, SUPERVISE)) == [(K.SETTLE, Stage.CHASE), (K.SETTLE, Stage.SUPERVISION)]
    (chase,) = run(order, CHASE)
    order.record_sweep(chase)
    assert (K.SETTLE, "warning") in order.fired  # the skipped warning never comes later
    assert stages(run(order, SUPERVISE)) == [(K.SETTLE, Stage.SUPERVISION)]


def test_working_day_deadlines_reach_over_weekends() -> None:
    order = registered()
    # County assign: 4 working days from Mon 1 Jun → end of Fri 5 Jun; warning end of Thu 4 Jun;
    # supervision 2 working days later → end of Tue 9 Jun. The notice (15 days → 16 Jun) is not due yet.
    assert order.deadlines[K.ASSIGN] == eod(6, 5)
    assert run(order, eod(6, 4) - TICK) == []
    assert stages(run(order, eod(6, 4))) == [(K.ASSIGN, Stage.WARNING)]
    assert stages(run(order, eod(6, 8))) == [(K.ASSIGN, Stage.CHASE)]
    assert stages(run(order, eod(6, 9) - TICK)) == [(K.ASSIGN, Stage.CHASE)]
    assert stages(run(order, eod(6, 9))) == [(K.ASSIGN, Stage.CHASE), (K.ASSIGN, Stage.SUPERVISION)]


def test_several_orders_and_deadlines_are_swept_independently() -> None:
    a, b = registered("wo-a"), in_progress("wo-b")
    # By end of 16 Jun: wo-a's assign (5 Jun) is past supervision and its notice (16 Jun) is due today.
    actions = sweep([a, b], eod(6, 16), POLICY, CAL)
    assert [(x.work_order_id, x.kind, x.stage) for x in actions] == [
        ("wo-a", K.ACCEPT_NOTICE, Stage.CHASE),
        ("wo-a", K.ASSIGN, Stage.CHASE),
        ("wo-a", K.ASSIGN, Stage.SUPERVISION),
    ]


def test_paused_and_finished_orders_are_not_swept() -> None:
    paused = in_progress()
    paused.pause(at=at(7, 1), actor="h", reason="等待补充材料")
    assert run(paused, SUPERVISE) == []
    done = in_progress()
    done.reply(text="答复", at=at(7, 30), actor="h", rules=RULES)
    assert run(done, SUPERVISE) == []
    withdrawn = in_progress()
    withdrawn.withdraw(at=at(7, 1), actor="citizen")
    assert run(withdrawn, SUPERVISE) == []


def test_a_moved_deadline_fires_again_and_stale_actions_are_dropped() -> None:
    order = in_progress()
    (warning,) = run(order, WARN)
    order.record_sweep(warning)
    order.request_extension(at=at(7, 20), actor="h", reason="需要鉴定")
    order.approve_extension(days=30, at=at(7, 21), actor="leader", rules=RULES)
    new_due = order.deadlines[K.SETTLE]
    assert new_due == eod(8, 31)
    assert order.fired == set()
    assert order.record_sweep(warning) == []  # computed against the old deadline
    # 90-day limit → lead 18 days → warning at end of 13 Aug.
    assert run(order, eod(8, 13) - TICK) == []
    (again,) = run(order, eod(8, 13))
    events = order.record_sweep(again, at=eod(8, 13) + timedelta(minutes=5))
    (reached,) = events
    assert isinstance(reached, DeadlineStageReached)
    assert (reached.kind, reached.stage, reached.deadline) == (K.SETTLE, Stage.WARNING, new_due)
    entry = order.history[-1]
    assert (entry.action, entry.actor, entry.from_state, entry.to_state) == (
        "warning:settle",
        "system",
        order.state,
        order.state,
    )
