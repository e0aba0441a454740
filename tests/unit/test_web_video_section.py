"""The case page's video booking (视频接访): leaders by name, and a sentence when none receives by video yet."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from services.common.regions import RegionTree
from services.web.app import make_templates


def render(**context: Any) -> str:
    page = {"may_book": True, "visits": [], "leader": "", "leader_names": {}, "slots": [], "case_id": "C1"}
    page.update(csrf="x", errors={}, **context)
    return make_templates(RegionTree.load(None)).get_template("console/_video.html").render(page)


def test_without_a_published_schedule_the_page_says_so_in_chinese_and_asks_for_no_leader_id() -> None:
    html = render(leaders=[])
    assert "还没有领导公布视频接访日程" in html
    assert 'name="leader"' not in html and "编号" not in html
    # A leader id typed into the address does not bring back a booking form either.
    assert 'name="leader_id"' not in render(leaders=[], leader="leader-1")


def test_leaders_who_receive_by_video_are_offered_by_name() -> None:
    html = render(leaders=[SimpleNamespace(leader_id="leader-1", leader_name="王区长")])
    assert '<option value="leader-1">王区长</option>' in html
    assert "还没有领导公布" not in html
