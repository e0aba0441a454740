"""The case page's history in Chinese for people: routing's own notes translated, no server path shown."""

from __future__ import annotations

import re
from pathlib import Path

from services.common.regions import RegionTree
from services.intake.domain import PUBLIC_MILESTONES
from services.routing.domain import lifecycle
from services.routing.domain.timelimits import DeadlineKind
from services.routing.jurisdiction import load_catalogue
from services.web import labels

NAMES = {"511100": "乐山市", "511102": "市中区", "511112": "五通桥区"}


def note(text: str) -> str:
    return labels.history_note(text, lambda code: NAMES.get(code, code))


def test_routing_system_notes_read_as_chinese_sentences() -> None:
    assert note("受理: placed by the dispatch catalogue") == "按派单目录自动受理"
    assert note("交办 to 511102: the matter's region 511102 lies there") == "交办至市中区：事发地市中区在其辖区"
    assert note("satisfied") == "群众评价满意，办结"
    assert note("unsatisfied (不满意)") == "群众评价不满意，退回重办"
    assert note("需要现场核实 (+10 days asked)") == "需要现场核实（申请延期10天）"
    assert note("settle due 2027-02-12 → 2027-02-15 (official calendar for 2027 loaded)") == (
        "办理时限由2027-02-12改为2027-02-15（已载入2027年官方节假日安排）"
    )
    assert note("settle due 2027-02-15 unchanged, no longer provisional (official calendar for 2027 loaded)") == (
        "办理时限2027-02-15不变，不再为暂定（已载入2027年官方节假日安排）"
    )


def test_a_provisional_deadline_note_is_translated_with_the_entry_it_follows() -> None:
    provisional = "[provisional deadline: settle due 2027-03-01 counted Mon-Fri, no official calendar for 2027]"
    text = note(f"受理: placed by the dispatch catalogue {provisional}")
    assert text == "按派单目录自动受理（暂定期限：办理时限2027-03-01，按周一至周五计算，尚无2027年官方节假日安排）"
    # A reply without a note of its own: the provisional date alone, not wrapped in brackets.
    assert note(provisional) == "暂定期限：办理时限2027-03-01，按周一至周五计算，尚无2027年官方节假日安排"


def test_no_server_path_reaches_the_page_even_in_old_notes() -> None:
    old = "派单目录 /work/main/services/routing/catalogues/default.yaml (rendered for 511102)"
    assert note(old) == "按派单目录交办"
    path = "see /srv/lianxin/data/511102/report.pdf for details"
    assert "/srv" not in note(path) and "report.pdf" in note(path)
    assert note("请核实后答复") == "请核实后答复"  # an operator's own words stay as typed
    typed = "于2027/02/15前答复，见 https://example.gov.cn/a/b"
    assert note(typed) == typed  # dates and web addresses are not server paths
    assert note(r"see C:\lianxin\data\note.txt") == "see note.txt"


def test_routing_names_the_catalogue_by_node_not_by_file(tmp_path: Path) -> None:
    tree = RegionTree.load(None)
    catalogue = load_catalogue("511102", tree, tmp_path)  # no file of its own: the default, rendered
    assert catalogue.label == "511102 (default catalogue)"
    assert "/" not in catalogue.label and str(tmp_path) not in catalogue.label


def test_deadline_stages_actors_and_citizen_summaries_in_chinese() -> None:
    assert labels.history_action("chase:settle") == "超期催办（办理时限）"
    assert labels.history_action("visit_outcome") == "视频接访"
    assert labels.history_action("consultation_booked") == "远程会商预约"
    assert labels.history_action("consultation_held") == "远程会商纪要"
    assert labels.actor_label("system") == "系统"
    assert labels.public_summary("已交办 assigned to the handling unit") == "已交办"
    assert labels.public_summary("已收到，待审核 received, awaiting screening") == "已收到，待审核"


def _history_actions() -> set[str]:
    """Every action routing writes into a work order's history: the transitions, "register", and the
    labels of facts (every module-level label constant of domain/lifecycle.py but the FOLLOW_MAIN prefix)."""
    facts = {
        value
        for name, value in vars(lifecycle).items()
        if name.isupper() and isinstance(value, str) and value != lifecycle.FOLLOW_MAIN
    }
    return {a.value for a in lifecycle.Action} | {"register"} | facts


def test_every_history_action_of_a_work_order_has_a_chinese_label() -> None:
    actions = _history_actions()
    assert {"leader_hold", "instruct", "escalate_up", "consultation_held"} <= actions
    cjk = re.compile(r"[\u4e00-\u9fff]")
    for action in sorted(actions):
        label = labels.history_action(action)
        assert label != action and cjk.search(label) and not re.search(r"[A-Za-z]", label), action
        # A merged case following its main case reads the same action of the main case.
        followed = labels.history_action(f"{lifecycle.FOLLOW_MAIN}{action}")
        assert followed == f"主件{label}", action
    for stage in lifecycle.Stage:
        for kind in DeadlineKind:
            label = labels.history_action(f"{stage.value}:{kind.value}")
            assert not re.search(r"[A-Za-z]", label), f"{stage.value}:{kind.value}"


def test_leader_instruction_entries_read_in_chinese_on_the_case_page() -> None:
    held = "领导批转: class land (土地征收) waits for the instruction of the 市委书记"
    assert labels.history_action("leader_hold") == "待领导批示"
    assert note(held) == "属领导批转类别“土地征收”，待市委书记批示"
    assert labels.history_action("instruct") == "领导已批示"
    assert note("领导批示 (张三): 请市自然资源局牵头办理") == "张三批示：请市自然资源局牵头办理"
    assert note("受理: 领导批示 recorded") == "领导已批示，受理"
    assert note("领导已批示: no routing rule placed the case, a clerk assigns it") == "领导已批示，待人工分派"
    # The citizen's timeline says it without the English gloss.
    assert labels.public_summary(PUBLIC_MILESTONES["instruct"]) == "领导已批示"
