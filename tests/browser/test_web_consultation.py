"""远程会商 on the console's case page, in Debian's chromium: the county's clerk proposes a consultation
with the city's bureau, sees the earliest common slot, books it and records the minutes; the case's
history shows both entries, and the city's console lists the consultation with its minutes.

Its own small federation (city 511100 and county 511102, a web gateway each): a consultation asks the
other node for its free periods and holds its unit and room there, node to node. The shared browser
federation runs tokens without mutual TLS, where one node cannot vouch for itself to another
(production runs `lianxin up --secure`: the calling node's certificate, docs/security.md).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from lianxin.common.v1 import common_pb2
from lianxin.intake.v1 import intake_service_pb2 as intake_pb2
from lianxin.intake.v1 import intake_service_pb2_grpc as intake_grpc
from lianxin.video.v1 import video_service_pb2 as video_pb2
from lianxin.video.v1 import video_service_pb2_grpc as video_grpc

from services.federation import Federation
from tests.support.helpers import free_port_block, wait_until
from tests.support.web import Visitor, post_form

TOPOLOGY = (("511100", None), ("511102", "511100"))
MINUTES = "市县两级会商：市中区生态环境局三日内现场核查，市局督导。"


@pytest.fixture(scope="module")
def consult_federation(
    tmp_path_factory: pytest.TempPathFactory, chromium: str
) -> Iterator[tuple[Federation, dict[str, str]]]:
    from services.federation import demo_sign_in

    size = len(TOPOLOGY)
    base = free_port_block(3 * size, start=24000)
    fed = Federation(
        data_dir=Path(tmp_path_factory.mktemp("consultfed")),
        base_port=base,
        metrics_base_port=base + size,
        web_base_port=base + 2 * size,
        topology=TOPOLOGY,
        with_national=False,
        extra_env={"LIANXIN_LOG_LEVEL": "WARNING", "LIANXIN_INTAKE_RATE_LIMIT": "1000/3600"},
    )
    demo_sign_in(fed)
    passwords = json.loads((fed.data_dir / "web-demo-passwords.json").read_text("utf-8"))
    try:
        fed.start(ready_timeout_s=180)
        yield fed, passwords
    finally:
        fed.stop()


def _register_rooms(fed: Federation, suffix: str) -> tuple[str, str]:
    county_room, city_room = f"511102-HS-{suffix}", f"511100-HS-{suffix}"
    for node, room, owner, name in (
        ("511102", county_room, "511102", "市中区会商室"),
        ("511102", city_room, "511100", "乐山市会商室"),
        ("511100", city_room, "511100", "乐山市会商室"),
    ):
        with grpc.insecure_channel(fed.node(node).address) as channel:
            video_grpc.VideoServiceStub(channel).RegisterRoom(
                video_pb2.RegisterRoomRequest(room=video_pb2.Room(room_id=room, node=owner, name=name)), timeout=10
            )
    return county_room, city_room


def _submit(address: str) -> str:
    with grpc.insecure_channel(address) as channel:
        reply = intake_grpc.IntakeServiceStub(channel).SubmitCase(
            intake_pb2.SubmitCaseRequest(
                channel=common_pb2.CHANNEL_WEB,
                channel_ref=str(uuid.uuid4()),
                title="河道垃圾堆积",
                body="乐山市市中区某河道垃圾堆积发臭，涉及上下游两级监管。",
                category="环境保护",
                region_code="511102",
                anonymous=True,
            ),
            timeout=10,
        )
    case_id: str = reply.case.case_id
    return case_id


def _sign_in(visitor: Visitor, base: str, username: str, password: str) -> None:
    visitor.goto(f"{base}/console/login")
    visitor.page.fill("#username", username)
    visitor.page.fill("#password", password)
    visitor.page.click("form[action='/console/login'] >> nth=0 >> button[type=submit]")
    visitor.page.wait_for_url(re.compile(r"/console$"))


def test_clerk_books_a_consultation_at_the_earliest_common_slot_and_records_its_minutes(
    consult_federation: tuple[Federation, dict[str, str]], visit: Callable[[], Visitor]
) -> None:
    fed, passwords = consult_federation
    county_room, city_room = _register_rooms(fed, uuid.uuid4().hex[:6])
    case_id = _submit(fed.node("511102").address)
    county = (fed.node("511102").web_url or "").rstrip("/")
    city = (fed.node("511100").web_url or "").rstrip("/")

    clerk = visit()
    _sign_in(clerk, county, "clerk-511102", passwords["clerk-511102"])
    clerk.goto(f"{county}/console/case/{case_id}")
    page = clerk.page
    page.wait_for_selector("#form-consult")
    page.click("#form-consult button[value=propose_consultation]")  # nothing filled: one line, in Chinese
    assert "会商事项" in page.inner_text("#consult-error")
    page.fill("#consult-topic", "河道垃圾的属地与监管责任")
    page.select_option("#consult-room-1", county_room)
    page.fill("#consult-unit-1", "lszq-sthjj")
    page.select_option("#consult-room-2", city_room)
    page.fill("#consult-unit-2", "lsj-sthjj")
    page.click("#form-consult button[value=propose_consultation]")
    page.wait_for_selector("#consult-proposal")
    earliest = page.inner_text("#consult-proposal label >> nth=0")
    assert "最早" in earliest
    clerk.check("console-case-consult-proposed")
    page.click("#form-consult button[value=book_consultation]")
    page.wait_for_selector("#consultations")
    listed = page.inner_text("#consultations")
    assert earliest.split("（")[0].split("–")[0].strip() in listed and "已预约" in listed
    # 改期: to the next common slot, still booked, at another hour.
    page.click("#form-reschedule-1 button[type=submit]")
    page.wait_for_selector("#consultations")
    moved = page.inner_text("#consultations")
    assert "已预约" in moved and moved.split("·")[0] != listed.split("·")[0]

    page.fill("#minutes-1", MINUTES)
    page.click("#form-minutes-1 button[type=submit]")
    page.wait_for_selector(".consult-minutes")
    assert MINUTES in page.inner_text("#consultations") and "已会商" in page.inner_text("#consultations")

    def in_history() -> bool:
        clerk.goto(f"{county}/console/case/{case_id}")
        history = page.inner_text(".timeline") if page.locator(".timeline").count() else ""
        return "远程会商纪要" in history and MINUTES in history and "远程会商预约" in history

    wait_until(in_history, 60, "the consultation in the case's history")
    clerk.check("console-case-consult-held")
    # Like every form: with the clerk's own cookies but a forged CSRF token, refused and nothing booked.
    cookies = "; ".join(f"{c['name']}={c['value']}" for c in page.context.cookies())
    forged = {
        "action": "book_consultation",
        "csrf": "forged",
        "topic": "伪造",
        "room_1": county_room,
        "unit_1": "lszq-sthjj",
        "room_2": city_room,
        "unit_2": "lsj-sthjj",
    }
    status, _ = post_form(f"{county}/console/case/{case_id}", forged, cookie=cookies)
    assert status == 403
    clerk.goto(f"{county}/console/case/{case_id}")
    assert page.locator("#consultations > li").count() == 1

    # The city holds a copy from the replicated events: its office reads the minutes there.
    supervisor = visit()
    _sign_in(supervisor, city, "supervisor-511100", passwords["supervisor-511100"])

    def at_the_city() -> bool:
        supervisor.goto(f"{city}/console/case/{case_id}")
        shown = supervisor.page.inner_text("main")
        return MINUTES in shown and "已会商" in shown

    wait_until(at_the_city, 60, "the consultation's minutes on the city's console")
    supervisor.check("console-remote-case-consult")
