"""Routing's use cases over an in-memory unit of work: what the office, a unit and a citizen notice, without a database.

The same use cases run on SQLite and PostgreSQL in tests/integration/test_routing_store.py and the
node tests; these are the fast layer of the pyramid (cosmicpython's "unit tests with a fake unit of
work"). The node's rules are the bundled catalogue and the national time limits.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import date, datetime, time, timedelta
from typing import Any

import pytest
from lianxin.common.v1 import common_pb2

from services.common.errors import Conflict, FailedPrecondition, InvalidArgument, PermissionDenied, StaleOwner
from services.common.timeutil import CHINA
from services.routing import handlers
from services.routing.consumers import registered_case
from services.routing.domain import (
    FOLLOW_MAIN,
    DeadlineStageReached,
    State,
    WorkOrderChanged,
    WorkOrderCreated,
)
from services.routing.leader import parse_leader_classes
from tests.support.routing import FakeRoutingStore
from tests.support.routing_store import case, routing_for

NOW = datetime(2026, 11, 23, 10, tzinfo=CHINA)
COUNTY, CITY = "511102", "511100"


def placed(store: FakeRoutingStore, routing: handlers.Routing, arriving: handlers.RegisteredCase) -> str:
    with store.unit_of_work() as uow:
        stored = handlers.on_case_arrived(arriving, uow, routing, now=NOW)
        uow.commit()
    return stored.order.id


def act(
    store: FakeRoutingStore,
    routing: handlers.Routing,
    work_order_id: str,
    step: Callable[[handlers.StoredWorkOrder, datetime, str], Any],
    *,
    expected_version: int = 0,
) -> handlers.StoredWorkOrder:
    return handlers.act(
        work_order_id,
        step,
        actor="op-1",
        expected_version=expected_version,
        uow_factory=store.unit_of_work,
        routing=routing,
        now=NOW,
    )


def replied(store: FakeRoutingStore, routing: handlers.Routing, work_order_id: str) -> handlers.StoredWorkOrder:
    act(store, routing, work_order_id, lambda s, at, who: handlers.accept(s, at, who, routing, "签收"))
    return act(
        store,
        routing,
        work_order_id,
        lambda s, at, who: handlers.reply(s, at, who, routing, text="已处理。", attachments=(), acting_unit=""),
    )


def test_a_case_of_the_node_s_own_region_is_accepted_and_assigned_by_the_catalogue_once() -> None:
    store, county = FakeRoutingStore(COUNTY), routing_for(COUNTY)
    wo = placed(store, county, case("511102-20261122-000001", version=3))
    order = store.work_order(wo).order
    assert order.state is State.ASSIGNED and order.unit_id
    published = store.events("511102-20261122-000001")
    assert [p.version for p in published] == [4, 5, 6]  # after the registration's own versions
    created = published[0].event
    assert isinstance(created, WorkOrderCreated) and created.unit_id == order.unit_id and not created.manual_queue
    assert [e.event.action for e in published[1:] if isinstance(e.event, WorkOrderChanged)] == ["accept", "assign"]
    placed(store, county, case("511102-20261122-000001", version=3))  # the event delivered again
    assert len(store.tables.work_orders) == 1 and len(store.events("511102-20261122-000001")) == 3


def test_a_case_without_a_region_waits_in_the_manual_queue_for_a_clerk() -> None:
    store, county = FakeRoutingStore(COUNTY), routing_for(COUNTY)
    wo = placed(store, county, case("511102-20261122-000002", region=""))
    queued, total = store.unit_of_work().list_work_orders(
        handlers.WorkOrderQuery(manual_only=True), after=None, limit=10
    )
    assert [s.order.id for s in queued] == [wo] and total == 1 and "no region" in queued[0].manual_reason
    unit = next(iter(county.catalogue.units))
    assigned = act(
        store, county, wo, lambda s, at, who: handlers.assign_manually(s, at, who, county, unit_id=unit, reason="人工")
    )
    assert assigned.order.state is State.ASSIGNED and not assigned.manual_queue


def test_a_case_of_a_region_below_is_handed_down_and_this_node_s_work_order_refuses_writes() -> None:
    store, city = FakeRoutingStore(CITY), routing_for(CITY)
    wo = placed(store, city, case("511100-20261122-000003"))
    assert store.work_order(wo).order.state is State.TRANSFERRED
    hand_off = store.events("511100-20261122-000003")[-1].event
    assert isinstance(hand_off, handlers.HandedOff)
    assert (hand_off.to_node, hand_off.new_owner_epoch, hand_off.kind) == (COUNTY, 2, "assign_down")
    with pytest.raises(StaleOwner):
        act(store, city, wo, lambda s, at, who: handlers.accept(s, at, who, city, "签收"))


def test_a_refused_action_changes_nothing_and_names_what_is_wrong() -> None:
    store, county = FakeRoutingStore(COUNTY), routing_for(COUNTY)
    wo = placed(store, county, case("511102-20261122-000004"))
    before = (store.commits, len(store.tables.outbox), store.work_order(wo).order.version)
    with pytest.raises(Conflict):
        act(store, county, wo, lambda s, at, who: handlers.accept(s, at, who, county, ""), expected_version=99)
    with pytest.raises(InvalidArgument) as refused:
        act(store, county, wo, lambda s, at, who: s.order.object(at=at, actor=who, reason=""))
    assert refused.value.field == "reason"
    with pytest.raises(FailedPrecondition, match="state ASSIGNED"):
        act(store, county, wo, lambda s, at, who: s.order.refuse(at=at, actor=who, reason="不属于受理范围"))
    with pytest.raises(InvalidArgument) as no_days:
        act(store, county, wo, lambda s, at, who: handlers.request_extension(s, at, who, county, days=0, reason="x"))
    assert no_days.value.field == "days"
    assert (store.commits, len(store.tables.outbox), store.work_order(wo).order.version) == before


def test_only_the_lead_unit_replies_and_the_citizen_s_rating_closes_or_reopens_once() -> None:
    store, county = FakeRoutingStore(COUNTY), routing_for(COUNTY)
    wo = placed(store, county, case("511102-20261122-000005"))
    with pytest.raises(PermissionDenied):
        act(
            store,
            county,
            wo,
            lambda s, at, who: handlers.reply(s, at, who, county, text="答复", attachments=(), acting_unit="other"),
        )
    assert replied(store, county, wo).order.state is State.REPLIED

    def rated(satisfied: bool | None) -> State:
        with store.unit_of_work() as uow:
            stored = handlers.on_case_evaluated(
                "511102-20261122-000005", satisfied=satisfied, comment="", uow=uow, routing=county, now=NOW
            )
            uow.commit()
        assert stored is not None
        return stored.order.state

    assert rated(False) is State.REOPENED  # 退回重办, once
    replied(store, county, wo)
    assert rated(False) is State.REOPENED and store.work_order(wo).order.reviewed  # then 复查
    other = placed(store, county, case("511102-20261122-000006"))
    replied(store, county, other)
    with store.unit_of_work() as uow:
        handlers.on_case_evaluated(
            "511102-20261122-000006", satisfied=True, comment="", uow=uow, routing=county, now=NOW
        )
        uow.commit()
    assert store.work_order(other).order.state is State.CLOSED


def test_a_withdrawal_ends_open_handling_and_leaves_a_closed_case_as_it_is() -> None:
    store, county = FakeRoutingStore(COUNTY), routing_for(COUNTY)
    open_wo = placed(store, county, case("511102-20261122-000007"))
    with store.unit_of_work() as uow:
        outcome = handlers.on_case_withdrawn("511102-20261122-000007", reason="", uow=uow, routing=county, now=NOW)
        uow.commit()
    assert outcome == handlers.WithdrawalOutcome(applied=True, state=State.WITHDRAWN)
    assert store.work_order(open_wo).order.deadlines == {}
    with store.unit_of_work() as uow:
        unknown = handlers.on_case_withdrawn("511102-20261122-000099", reason="", uow=uow, routing=county, now=NOW)
    assert unknown == handlers.WithdrawalOutcome(applied=False, state=None)


def test_the_second_unresolved_repeat_is_supervised_by_the_tier_above() -> None:
    store, county = FakeRoutingStore(COUNTY), routing_for(COUNTY)
    placed(store, county, case("511102-20261122-000010"))
    placed(store, county, case("511102-20261122-000011", repeat_of="511102-20261122-000010"))
    assert store.tables.supervisions == {}
    placed(store, county, case("511102-20261122-000012", repeat_of="511102-20261122-000010"))
    (supervision,) = store.tables.supervisions.values()
    assert (supervision.case_id, supervision.level, supervision.by_node) == (
        "511102-20261122-000010",
        "supervise",
        CITY,
    )
    assert store.kinds("511102-20261122-000010")[-1] == "SupervisionRecorded"


def test_a_merged_case_follows_its_main_case_s_reply() -> None:
    store, county = FakeRoutingStore(COUNTY), routing_for(COUNTY)
    main = placed(store, county, case("511102-20261122-000020"))
    follower = placed(store, county, case("511102-20261122-000021"))
    handlers.merge_cases(
        main_case_id="511102-20261122-000020",
        case_ids=["511102-20261122-000021"],
        actor="op-1",
        expected_version=0,
        reason="同一路段",
        acting_unit="",
        uow_factory=store.unit_of_work,
        routing=county,
        now=NOW,
    )
    assert store.work_order(follower).order.state is State.MERGED
    replied(store, county, main)
    followed = [
        p.event
        for p in store.events("511102-20261122-000021")
        if isinstance(p.event, WorkOrderChanged) and str(p.event.action) == f"{FOLLOW_MAIN}reply"
    ]
    assert len(followed) == 1 and followed[0].reply_text == "已处理。" and followed[0].to_state is State.REPLIED
    with pytest.raises(FailedPrecondition):  # its citizens follow it here: no hand-off before the undo
        handlers.escalate(
            case_id="511102-20261122-000020",
            actor="op-1",
            expected_version=0,
            reason="跨区",
            uow_factory=store.unit_of_work,
            routing=county,
            now=NOW,
        )


def test_the_sweep_chases_a_missed_deadline_once_and_counts_it_overdue() -> None:
    store, county = FakeRoutingStore(COUNTY), routing_for(COUNTY)
    registered = datetime(2026, 9, 30, 10, tzinfo=CHINA)
    with store.unit_of_work() as uow:
        stored = handlers.on_case_arrived(case("511102-20260930-000001", hotline=True), uow, county, now=registered)
        uow.commit()
    chase = datetime.combine(date(2026, 10, 23), time.max, tzinfo=CHINA)  # 13 working days across 国庆
    first = handlers.run_sweep(uow_factory=store.unit_of_work, routing=county, now=chase)
    again = handlers.run_sweep(uow_factory=store.unit_of_work, routing=county, now=chase)
    assert (first.chases, again.chases, again.open) == (1, 0, 1)
    (chased,) = [s for s in store.tables.supervisions.values() if s.level == "chase"]
    assert chased.by_node == COUNTY and "hotline_complaint" in chased.demand
    stages = [
        p.event.stage.value for p in store.events(stored.order.case_id) if isinstance(p.event, DeadlineStageReached)
    ]
    assert stages == ["chase"]  # the warning would come late: skipped


def test_a_supervision_of_a_case_handed_down_goes_to_its_owner_as_a_command() -> None:
    store, city = FakeRoutingStore(CITY), routing_for(CITY)
    placed(store, city, case("511100-20261122-000030"))
    sent = handlers.supervise(
        case_id="511100-20261122-000030",
        work_order_id="",
        actor="sup-1",
        expected_version=0,
        level="supervise",
        demand="三日内办结",
        due_at=datetime(2026, 11, 30, tzinfo=CHINA),
        uow_factory=store.unit_of_work,
        routing=city,
        now=NOW,
    )
    assert sent.sent_to == COUNTY and store.tables.supervisions == {}
    (command,) = store.tables.commands
    assert isinstance(command, handlers.SupervisionRequested) and command.target_node == COUNTY
    with store.unit_of_work() as uow:
        owner = handlers.handed_on_to("511100-20261122-000030", uow, CITY)
    assert owner is not None and owner.owner_node == COUNTY


def test_bad_supervision_input_names_the_field() -> None:
    store, county = FakeRoutingStore(COUNTY), routing_for(COUNTY)
    placed(store, county, case("511102-20261122-000031"))
    base: dict[str, Any] = dict(
        case_id="511102-20261122-000031",
        work_order_id="",
        actor="sup-1",
        expected_version=0,
        level="supervise",
        demand="三日内办结",
        due_at=datetime(2026, 11, 30, tzinfo=CHINA),
        uow_factory=store.unit_of_work,
        routing=county,
        now=NOW,
    )
    changes: list[tuple[dict[str, Any], str]] = [
        ({"level": "shout"}, "level"),
        ({"demand": " "}, "demand"),
        ({"due_at": NOW}, "due_at"),
    ]
    for change, field in changes:
        with pytest.raises(InvalidArgument) as refused:
            handlers.supervise(**{**base, **change})
        assert refused.value.field == field
    assert store.tables.supervisions == {}


def test_the_month_s_third_party_sample_is_drawn_once_shown_masked_and_rated_once() -> None:
    store, county = FakeRoutingStore(COUNTY), routing_for(COUNTY)
    pb = common_pb2.Case(
        case_id="511102-20261101-000040",
        region_code=COUNTY,
        category="环境保护",
        registering_node=COUNTY,
        title="噪音扰民",
        body="夜间施工，联系电话13812345678。",
    )
    wo = placed(store, county, registered_case(pb, version=1, owner_epoch=1))
    replied(store, county, wo)
    with store.unit_of_work() as uow:
        handlers.on_case_evaluated(pb.case_id, satisfied=True, comment="", uow=uow, routing=county, now=NOW)
        uow.commit()

    def draw() -> tuple[object, list[Any]]:
        return handlers.draw_evaluation_sample(
            month="2026-11",
            seed="s1",
            percent=100,
            minimum=1,
            actor="eval-1",
            uow_factory=store.unit_of_work,
            routing=county,
            now=NOW + timedelta(days=8),  # December: November's closed cases are all in
        )

    _, items = draw()
    assert [i.case_id for i in items] == [pb.case_id] and store.kinds(pb.case_id)[-1] == "CaseSampled"
    with pytest.raises(FailedPrecondition, match="already drawn"):
        draw()
    _, views, total = handlers.list_evaluation_sample(
        month="2026-11", unrated_only=True, after=None, limit=10, uow_factory=store.unit_of_work
    )
    assert total == 1 and "13812345678" not in views[0].body and views[0].reply_text == "已处理。"

    def rate(rating: str, comment: str = "") -> handlers.SampleView:
        return handlers.record_third_party_rating(
            month="2026-11",
            case_id=pb.case_id,
            actor="eval-1",
            rating=rating,
            comment=comment,
            uow_factory=store.unit_of_work,
            now=NOW,
        )

    with pytest.raises(InvalidArgument) as no_reason:
        rate("UNSATISFIED")
    assert no_reason.value.field == "comment"
    assert rate("SATISFIED").item.rating == "SATISFIED"
    with pytest.raises(FailedPrecondition, match="already rated"):
        rate("BASICALLY_SATISFIED")
    assert store.kinds(pb.case_id)[-1] == "ThirdPartyRated"


def test_a_matter_of_a_leader_s_class_waits_for_the_instruction_then_goes_to_the_unit_placement_chose() -> None:
    store = FakeRoutingStore(COUNTY)
    county = dataclasses.replace(
        routing_for(COUNTY),
        leader_classes=parse_leader_classes(
            {"classes": [{"id": "mass", "name": "群体性事件苗头", "leader": "区长", "keywords": ["集体上访"]}]},
            source="leader.yaml",
        ),
    )
    pb = common_pb2.Case(
        case_id="511102-20261122-000050",
        region_code=COUNTY,
        category="城乡建设",
        registering_node=COUNTY,
        title="拆迁补偿",
        body="三十多户居民准备集体上访。",
    )
    wo = placed(store, county, registered_case(pb, version=1, owner_epoch=1))
    held = store.work_order(wo).order
    assert held.state is State.REGISTERED and held.awaiting_instruction
    queue, _ = store.unit_of_work().list_work_orders(handlers.WorkOrderQuery(leader_queue=True), after=None, limit=10)
    assert [s.order.id for s in queue] == [wo]
    with pytest.raises(FailedPrecondition, match="leader's instruction"):
        act(store, county, wo, lambda s, at, who: handlers.accept(s, at, who, county, "受理"))
    with pytest.raises(InvalidArgument) as no_leader:
        act(
            store,
            county,
            wo,
            lambda s, at, who: handlers.record_instruction(s, at, who, county, leader_name="", instruction="请办理"),
        )
    assert no_leader.value.field == "leader_name"
    instructed = act(
        store,
        county,
        wo,
        lambda s, at, who: handlers.record_instruction(
            s, at, who, county, leader_name="李明华", instruction="请住建局牵头办理"
        ),
    )
    assert instructed.order.state is State.ASSIGNED and instructed.order.unit_id == held.leader_unit
    assert instructed.order.instruction is not None and instructed.order.instruction.leader_name == "李明华"


def test_an_escalation_back_up_is_taken_back_by_the_work_order_that_handed_the_case_down() -> None:
    store, city = FakeRoutingStore(CITY), routing_for(CITY)
    wo = placed(store, city, case("511100-20261122-000060"))  # 交办 down to the county: epoch 1 → 2
    assert store.work_order(wo).order.state is State.TRANSFERRED
    back = dataclasses.replace(case("511100-20261122-000060", version=9), owner_epoch=3)
    with store.unit_of_work() as uow:
        again = handlers.on_case_arrived(back, uow, city, now=NOW, escalated=True)
        uow.commit()
    assert again.order.id == wo and again.order.state is State.ASSIGNED  # 上报: placed by category here
    assert len(store.tables.work_orders) == 1
    with store.unit_of_work() as uow:  # the same hand-off delivered again changes nothing
        handlers.on_case_arrived(back, uow, city, now=NOW, escalated=True)
        uow.commit()
    assert store.work_order(wo).order.version == again.order.version
