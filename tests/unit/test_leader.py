"""领导批转: the leader classes file, and the work order waiting for and receiving the instruction (批示)."""

from __future__ import annotations

import pytest

from services.common.errors import FailedPrecondition, InvalidArgument
from services.routing.domain import State
from services.routing.domain.timelimits import DeadlineKind
from services.routing.leader import LeaderClassError, check_instruction, parse_leader_classes
from services.stats.bulletin import SUMMARY_METRICS
from tests.support.workorders import RULES, at, eod, new_order

GOOD = {
    "classes": [
        {"id": "safety", "name": "重大安全隐患", "leader": "市委书记", "categories": ["安全生产"]},
        {"id": "mass", "name": "群体性事件苗头", "leader": "市长", "keywords": ["集体上访", "聚集"]},
    ]
}


def test_a_matter_matches_its_class_by_category_or_keyword() -> None:
    classes = parse_leader_classes(GOOD, source="c.yaml")
    assert classes.match("安全生产", "").id == "safety"  # type: ignore[union-attr]
    assert classes.match("城乡建设", "三十多户居民准备集体上访").id == "mass"  # type: ignore[union-attr]
    assert classes.match("城乡建设", "楼道灯坏了") is None


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"classes": []}, "classes"),
        ({"other": 1}, "(top level)"),
        ({"classes": [{"id": "a", "name": "n", "leader": "l"}]}, "classes[0]"),
        ({"classes": [{"id": "a", "name": "n", "leader": "", "keywords": ["x"]}]}, "classes[0].leader"),
        ({"classes": [{"id": "a", "name": "n", "leader": "l", "keywords": "x"}]}, "classes[0].keywords"),
        ({"classes": [{"id": "a", "name": "n", "leader": "l", "keywords": ["x"], "colour": 1}]}, "classes[0].colour"),
        ({"classes": [GOOD["classes"][0], GOOD["classes"][0]]}, "classes[1].id"),
    ],
)
def test_a_bad_file_names_the_key(raw: object, key: str) -> None:
    with pytest.raises(LeaderClassError) as caught:
        parse_leader_classes(raw, source="c.yaml")
    assert str(caught.value).startswith(f"c.yaml: {key}: ")


def test_the_instruction_and_the_leaders_name_are_required() -> None:
    for args, field in ((("", "批示"), "leader_name"), (("李", " "), "instruction"), (("李" * 41, "x"), "leader_name")):
        with pytest.raises(InvalidArgument) as caught:
            check_instruction(*args)
        assert caught.value.field == field
    assert check_instruction(" 李明华 ", " 请牵头办理 ") == ("李明华", "请牵头办理")


def test_a_held_case_cannot_be_handled_until_the_leader_instructs() -> None:
    order = new_order()  # REGISTERED, petition, 2026-06-01 09:00
    (hold,) = order.hold_for_leader(
        class_id="safety", note="waits", unit_id="lszq-zjj", at=at(6, 1, 9), actor="system", rules=RULES
    )
    assert hold.action == "leader_hold" and order.state is State.REGISTERED
    assert order.deadlines[DeadlineKind.INSTRUCT] == eod(6, 3)  # 2 working days
    with pytest.raises(FailedPrecondition, match="waits for the leader's instruction"):
        order.accept(at=at(6, 2), actor="clerk", rules=RULES)
    with pytest.raises(FailedPrecondition, match="waits for the leader's instruction"):
        order.transfer(to_node="511100", at=at(6, 2), actor="clerk")
    (given,) = order.instruct(leader_name="李明华", text="请牵头办理", at=at(6, 2), actor="mishu")
    assert given.leader_name == "李明华" and "请牵头办理" in given.reason
    assert DeadlineKind.INSTRUCT not in order.deadlines and order.instruction is not None
    order.accept(at=at(6, 2), actor="clerk", rules=RULES)  # handling goes on
    with pytest.raises(FailedPrecondition, match="already instructed"):
        order.instruct(leader_name="李明华", text="again", at=at(6, 3), actor="mishu")


def test_the_bulletin_counts_instructed_cases_and_the_other_handling_figures() -> None:
    assert {"instructed", "assist_late", "matters", "merged"} <= set(SUMMARY_METRICS)
