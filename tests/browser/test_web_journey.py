"""The people's front door in a real browser: a citizen, a county clerk and a provincial supervisor.

One real federation (province 510000, city 511100, counties 511102 and 511111) with token security
on, a web gateway per node, and Debian's chromium. Every page the people open is checked for
console errors, 375 px width and serious accessibility violations (conftest.Visitor.check).
"""

from __future__ import annotations

import re
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

import grpc
from lianxin.common.v1 import common_pb2
from lianxin.intake.v1 import intake_service_pb2 as intake_pb2
from lianxin.intake.v1 import intake_service_pb2_grpc as intake_grpc

from services.common.timeutil import CHINA
from tests.support.web import Visitor, WebFederation, post_form

PHONE = "13812345678"
ID_NUMBER = "11010519491231002X"
NAME = "张三丰"


def _eventually(what: str, check: Callable[[], bool], timeout: float = 90.0) -> None:
    """Reload-and-look until ``check`` holds: the federation replicates asynchronously."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.5)  # polling a condition with a deadline


def _sign_in(visitor: Visitor, base: str, username: str, password: str) -> None:
    visitor.goto(f"{base}/console/login")
    visitor.check("console-login")
    visitor.page.fill("#username", username)
    visitor.page.fill("#password", password)
    visitor.page.click("form[action='/console/login'] >> nth=0 >> button[type=submit]")
    visitor.page.wait_for_url(re.compile(r"/console$"))


def _received(visitor: Visitor, region: str) -> int:
    text = visitor.page.inner_text(f"#row-{region} td[data-metric=received]").strip()
    return int(text) if text.isdigit() else 0


def test_citizen_clerk_and_supervisor_journey(web_federation: WebFederation, visit: Callable[[], Visitor]) -> None:
    county, province = web_federation.url("511102"), web_federation.url("510000")
    pw = web_federation.passwords

    # The provincial supervisor looks at the city's figures before anything happens.
    supervisor = visit()
    _sign_in(supervisor, province, "supervisor-510000", pw["supervisor-510000"])
    supervisor.goto(f"{province}/console/dashboard?region=511100")
    supervisor.check("console-dashboard")
    before = _received(supervisor, "511102")

    # A citizen at the county portal types a wrong phone number and sees the error beside the field.
    citizen = visit()
    citizen.goto(f"{county}/")
    citizen.check("portal-home")
    citizen.goto(f"{county}/submit")
    citizen.check("portal-submit")
    title = f"小区门口夜间施工噪音扰民 {uuid.uuid4().hex[:4]}"
    page = citizen.page
    page.fill("#title", title)
    page.fill("#body", "乐山市市中区嘉州大道某小区门口连续多晚施工到凌晨，噪音严重影响休息，请有关部门处理。")
    page.select_option("#category", "环境保护")
    page.fill("#address", "嘉州大道某小区门口")
    page.fill("#name", NAME)
    page.fill("#phone", "1381234")
    page.fill("#id_number", ID_NUMBER)
    page.check("#publish")
    page.click("button[value=submit]")
    error = page.locator("#phone-error")
    assert "手机号码" in error.inner_text()
    assert page.get_attribute("#phone", "aria-invalid") == "true"
    # Nothing typed is lost.
    assert page.input_value("#title") == title
    assert page.input_value("#address") == "嘉州大道某小区门口"
    assert page.input_value("#category") == "环境保护"
    assert page.is_checked("#publish")
    citizen.check("portal-submit-error")

    page.fill("#phone", PHONE)
    page.click("button[value=submit]")
    page.wait_for_url(re.compile(r"/submit/done$"))
    code = page.inner_text("#tracking-code").strip()
    assert re.fullmatch(r"[0-9A-Z-]{8,16}", code), code
    citizen.check("portal-submitted")

    # A county clerk signs in, finds it in the inbox, signs for it and replies.
    clerk = visit()
    _sign_in(clerk, county, "clerk-511102", pw["clerk-511102"])
    cpage = clerk.page
    _eventually(
        "the case in the clerk's inbox", lambda: bool(clerk.goto(f"{county}/console")) and title in cpage.content()
    )
    assert "乐山市市中生态环境局" in cpage.inner_text("main")  # the unit's name, not its code
    clerk.check("console-inbox")
    cpage.click(f"text={title}")
    case_url = cpage.url
    case_id = case_url.rsplit("/", 1)[-1]
    clerk.check("console-case")
    # The clerk (an office role) sees the complainant masked, never in full.
    assert "138****5678" in cpage.content() and PHONE not in cpage.content()
    cpage.click("#form-start button[type=submit]")
    cpage.wait_for_selector("#form-reply")
    reply = "经核查，施工单位已停止夜间施工，城管执法大队将持续巡查。"
    cpage.fill("#form-reply textarea[name=text]", reply)
    cpage.click("#form-reply button[type=submit]")
    cpage.wait_for_selector("#wo-reply")
    assert "已答复" in cpage.inner_text("#case-state")
    # The handling unit by its name, and a history people can read: Chinese, no server path.
    content = cpage.inner_text("main")
    assert "乐山市市中生态环境局" in content and "lszq-sthjj" not in content
    history = cpage.inner_text("ol.timeline")
    assert "按派单目录交办" in history and "系统" in history
    for leak in (".yaml", "catalogue", "/services/", "placed by"):
        assert leak not in cpage.content(), leak
    clerk.check("console-case-replied")

    # The citizen tracks the case, reads the reply and rates it unsatisfied.
    citizen.goto(f"{county}/track")
    citizen.check("portal-track")
    page.fill("#tracking_code", code)
    page.fill("#phone_last4", PHONE[-4:])
    page.click("form[action='/track'] button[type=submit]")
    page.wait_for_url(re.compile(r"/track/case$"))
    _eventually(
        "the reply on the citizen's page",
        lambda: bool(citizen.goto(f"{county}/track/case")) and page.query_selector("#sat-unsatisfied") is not None,
    )
    assert "已答复" in page.inner_text("#case-state")
    assert reply in page.inner_text("#reply-text")
    assert page.query_selector("form[action='/track/withdraw']") is None  # replied: no longer withdrawable
    citizen.check("portal-tracked")
    page.check("#sat-unsatisfied")
    page.fill("#comment", "夜间仍有施工，问题没有解决。")
    page.click("form[action='/track/evaluate'] button[type=submit]")
    page.wait_for_url(re.compile(r"/track/case$"))
    assert "感谢您的评价" in page.inner_text("main")
    citizen.check("portal-rated")

    # The clerk sees the case reopened (退回重办).
    _eventually(
        "the reopened case", lambda: bool(clerk.goto(case_url)) and "退回重办" in cpage.inner_text("#case-state")
    )
    clerk.check("console-case-reopened")
    # ... and redoes it: signs for it again and gives a second reply.
    second = "经再次核查，已责令施工单位夜间全面停工，并安排专人每晚巡查。"
    cpage.click("#form-start button[type=submit]")
    cpage.wait_for_selector("#form-reply")
    cpage.fill("#form-reply textarea[name=text]", second)
    cpage.click("#form-reply button[type=submit]")
    cpage.wait_for_selector("#wo-reply")
    assert second in cpage.inner_text("#wo-reply")

    # The provincial supervisor sees the county's figure change and drills down to that case.
    _eventually(
        "the county's figures at the province",
        lambda: (
            bool(supervisor.goto(f"{province}/console/dashboard?region=511100"))
            and _received(supervisor, "511102") > before
        ),
    )
    supervisor.check("console-dashboard-city")
    spage = supervisor.page
    spage.click("#row-511102 td[data-metric=received] a")
    spage.wait_for_selector("#drill-cases")
    assert case_id in spage.inner_text("#drill-cases")
    supervisor.check("console-drill")
    spage.click(f"#drill-cases a:text('{case_id}')")
    spage.wait_for_url(re.compile(re.escape(case_id) + "$"))
    assert case_id in spage.inner_text("main")
    supervisor.check("console-case-province")

    # The public board shows the published reply, with the phone masked and nothing else personal.
    _eventually(
        "the published reply on the board",
        lambda: (
            bool(citizen.goto(f"{county}/board?q={urllib.parse.quote(title[-4:])}"))
            and second in page.inner_text("main")
        ),
    )
    entry = page.inner_text(f"#reply-{case_id}")
    assert title in entry and "138****5678" in entry and "张*" in entry
    html = page.content()
    assert PHONE not in html and NAME not in html and ID_NUMBER not in html
    # The units' rates (张榜公布) are explained in Chinese, from the stats service's definitions.
    terms = page.locator("dl.definitions dt").all_inner_texts()
    meanings = page.locator("dl.definitions dd").all_inner_texts()
    assert dict(zip(terms, meanings, strict=True))["回复率"].startswith("已答复件数 ÷ 应答复件数")
    # Said once: no definition starts again with its term ("平均答复时长（工作日）" over "平均答复时长：…").
    assert not any(meaning.startswith(term.split("（")[0]) for term, meaning in zip(terms, meanings, strict=True))
    assert "cases" not in page.inner_text("dl.definitions")
    citizen.check("portal-board")

    # Personal data never travelled in a URL.
    for visitor in (citizen, clerk, supervisor):
        for url in visitor.urls:
            for secret in (PHONE, PHONE[-4:], ID_NUMBER, urllib.parse.quote(NAME), NAME, code):
                assert secret not in url, f"{secret!r} in {url}"


def _submit_by_grpc(address: str, category: str = "交通运输", title: str = "道路积水严重") -> tuple[str, str]:
    with grpc.insecure_channel(address) as channel:
        reply = intake_grpc.IntakeServiceStub(channel).SubmitCase(
            intake_pb2.SubmitCaseRequest(
                channel=common_pb2.CHANNEL_WEB,
                channel_ref=str(uuid.uuid4()),
                title=title,
                body="乐山市市中区某路段雨后积水严重，行人无法通行。",
                category=category,
                region_code="511102",
                complainant=common_pb2.Person(name=NAME, phone=PHONE, id_number=ID_NUMBER),
            ),
            timeout=10,
        )
    return reply.case.case_id, reply.tracking_code


def test_clerk_of_another_county_gets_403_for_the_case_page(
    web_federation: WebFederation, visit: Callable[[], Visitor]
) -> None:
    county = web_federation.url("511102")
    case_id, _code = _submit_by_grpc(web_federation.grpc("511102"))
    stranger = visit()
    _sign_in(stranger, county, "clerk-511111", web_federation.passwords["clerk-511111"])
    response = stranger.goto(f"{county}/console/case/{case_id}")
    assert response.status == 403
    body = stranger.page.inner_text("main")
    assert "无权访问" in body and "道路积水" not in body
    stranger.check("console-forbidden", allow_console=("403",))


def test_handling_unit_never_sees_the_complainant(web_federation: WebFederation, visit: Callable[[], Visitor]) -> None:
    county = web_federation.url("511102")
    case_id, _code = _submit_by_grpc(web_federation.grpc("511102"), "环境保护")
    handler = visit()
    _sign_in(handler, county, "handler-511102", web_federation.passwords["handler-511102"])
    handler.goto(f"{county}/console/case/{case_id}")
    html = handler.page.content()
    assert "道路积水" in html
    for shown in (PHONE, "138****5678", NAME, "张*", ID_NUMBER, "110105"):
        assert shown not in html, shown
    assert "保密" in handler.page.inner_text("#complainant")
    handler.check("console-case-handler")


def test_forms_without_their_csrf_token_are_refused(
    web_federation: WebFederation, visit: Callable[[], Visitor]
) -> None:
    county = web_federation.url("511102")
    fields = {"title": "测试", "body": "测试内容", "phone": PHONE, "channel_ref": str(uuid.uuid4()), "action": "submit"}
    status, body = post_form(f"{county}/submit", fields)
    assert status == 403 and "CSRF" in body
    # With the browser's own cookies but a forged token: refused too, and nothing registered.
    visitor = visit()
    visitor.goto(f"{county}/submit")
    cookies = "; ".join(f"{c['name']}={c['value']}" for c in visitor.page.context.cookies())
    status, _ = post_form(f"{county}/submit", {**fields, "csrf": "forged"}, cookie=cookies)
    assert status == 403
    status, _ = post_form(
        f"{county}/console/login",
        {"username": "clerk-511102", "password": web_federation.passwords["clerk-511102"], "csrf": "forged"},
        cookie=cookies,
    )
    assert status == 403


def test_pages_send_a_strict_content_security_policy(web_federation: WebFederation) -> None:
    with urllib.request.urlopen(f"{web_federation.url('511102')}/submit", timeout=10) as reply:
        csp = reply.headers["Content-Security-Policy"]
        cookies = reply.headers.get_all("Set-Cookie") or []
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert cookies and all("HttpOnly" in c and "SameSite=strict" in c for c in cookies)


def test_health_and_metrics_answer(web_federation: WebFederation) -> None:
    base = web_federation.url("511102")
    with urllib.request.urlopen(f"{base}/healthz", timeout=10) as reply:
        assert reply.status == 200
    urllib.request.urlopen(f"{base}/", timeout=10).read()
    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    assert 'lianxin_web_requests_total{method="GET",route="home",status="200"}' in text


def _publish_leader(web_federation: WebFederation, name: str, weekdays: Sequence[int] = range(1, 8)) -> str:
    """A leader of 市中区 receiving by video on ``weekdays``, 09:00-17:00; returns the leader id."""
    from lianxin.video.v1 import video_service_pb2 as video_pb2
    from lianxin.video.v1 import video_service_pb2_grpc as video_grpc

    from services.common.security import bearer_metadata, issue_token

    admin = issue_token(web_federation.token_key.encode(), subject="admin", node="511102", roles=["admin"])
    leader = f"leader-{uuid.uuid4().hex[:6]}"
    with grpc.insecure_channel(web_federation.grpc("511102")) as channel:
        stub = video_grpc.VideoServiceStub(channel)
        room = video_pb2.Room(room_id=f"{leader}-R1", node="511102", name="接访室")
        stub.RegisterRoom(video_pb2.RegisterRoomRequest(room=room), metadata=bearer_metadata(admin), timeout=10)
        schedule = video_pb2.Schedule(
            leader_id=leader,
            leader_name=name,
            node="511102",
            weekly_patterns=[
                video_pb2.WeeklyPattern(weekday=d, start_time="09:00", end_time="17:00") for d in weekdays
            ],
            slot_minutes=30,
            buffer_minutes=10,
            max_per_session=4,
            room_ids=[room.room_id],
        )
        stub.PublishSchedule(
            video_pb2.PublishScheduleRequest(actor="admin", schedule=schedule),
            metadata=bearer_metadata(admin),
            timeout=10,
        )
    return leader


def test_citizen_books_and_cancels_a_video_visit_for_their_own_case(
    web_federation: WebFederation, visit: Callable[[], Visitor]
) -> None:
    county = web_federation.url("511102")
    # Receptions only three and four days from now: every slot is more than a day ahead, so cancellable.
    today = datetime.now(CHINA).date()
    days = sorted({(today + timedelta(days=n)).isoweekday() for n in (3, 4)})
    leader_name = f"王{uuid.uuid4().hex[:2]}（区长）"
    _publish_leader(web_federation, leader_name, days)
    _case_id, code = _submit_by_grpc(web_federation.grpc("511102"))

    citizen = visit()
    page = citizen.page
    citizen.goto(f"{county}/video")
    assert leader_name in page.inner_text("#leaders")
    page.click(f"#leaders a:text('{leader_name}')")
    page.wait_for_selector("#slots")
    assert page.query_selector("form[action='/video/book']") is None  # not yet proved which case is theirs
    assert "查询您的诉求进度" in page.inner_text("main")
    citizen.check("portal-video-leader")

    citizen.goto(f"{county}/track")
    page.fill("#tracking_code", code)
    page.fill("#phone_last4", PHONE[-4:])
    page.click("form[action='/track'] button[type=submit]")
    page.wait_for_url(re.compile(r"/track/case$"))
    assert "您可以为本诉求预约领导视频接访" in page.inner_text("main")
    page.click("a[href='/video']")
    page.click(f"#leaders a:text('{leader_name}')")
    page.wait_for_selector("form[action='/video/book']")
    citizen.check("portal-video-book")
    chosen = page.locator("#slots li").first.inner_text().split("–")[0].strip()
    page.locator("#slots li button").first.click()
    page.wait_for_url(re.compile(r"/track/case$"))
    assert "已预约" in page.inner_text("main") and chosen in page.inner_text("#my-visits")
    assert leader_name in page.inner_text("#my-visits")
    citizen.check("portal-visit-booked")

    # A second booking for the same case is refused with a sentence, and the page keeps working.
    citizen.goto(f"{county}/video")
    page.click(f"#leaders a:text('{leader_name}')")
    page.locator("#slots li button").first.click()
    page.wait_for_selector("#book-error")
    assert "已预约了一场视频接访" in page.inner_text("#book-error")
    citizen.check("portal-video-already-booked")

    citizen.goto(f"{county}/track/case")
    page.click("#my-visits button:text('取消预约')")
    page.wait_for_url(re.compile(r"/track/case$"))
    assert "已取消" in page.inner_text("#my-visits") and page.query_selector("#my-visits button") is None
    citizen.check("portal-visit-cancelled")
    for url in citizen.urls:
        assert code not in url and PHONE[-4:] not in url


def test_clerk_books_a_video_visit_from_the_leaders_free_slots(
    web_federation: WebFederation, visit: Callable[[], Visitor]
) -> None:
    county = web_federation.url("511102")
    leader = _publish_leader(web_federation, "李某某（副区长）")
    case_id, _code = _submit_by_grpc(web_federation.grpc("511102"))

    citizen = visit()
    citizen.goto(f"{county}/video?leader={leader}")
    assert citizen.page.locator("#slots li").count() > 0
    citizen.check("portal-video")

    clerk = visit()
    _sign_in(clerk, county, "clerk-511102", web_federation.passwords["clerk-511102"])
    clerk.goto(f"{county}/console/case/{case_id}?leader={leader}")
    first = clerk.page.locator(".slots li").first.inner_text().split("–")[0].strip()
    clerk.page.locator(".slots li button").first.click()
    clerk.page.wait_for_selector("#visits")
    assert first in clerk.page.inner_text("#visits")
    clerk.check("console-case-video")


def test_moderation_exchange_desk_and_bulletin_pages_open_for_an_admin(
    web_federation: WebFederation, visit: Callable[[], Visitor]
) -> None:
    city = web_federation.url("511100")
    admin = visit()
    _sign_in(admin, city, "admin-511100", web_federation.passwords["admin-511100"])
    admin.goto(f"{city}/console/moderation")
    assert "待审核" in admin.page.inner_text("h1")
    admin.check("console-moderation")
    admin.goto(f"{city}/console/exchange")
    assert "511100" in admin.page.inner_text("main") or "510000" in admin.page.inner_text("main")
    admin.check("console-exchange")
    admin.goto(f"{city}/console/dashboard")
    with admin.page.expect_download(timeout=60_000) as download:  # the bulletin takes seconds to draw
        admin.page.click("text=下载月度通报")
    assert download.value.suggested_filename.startswith("bulletin-511100-")
    # Signing out ends the session: the console asks for a sign-in again.
    admin.page.click("form[action='/console/logout'] button")
    admin.page.wait_for_url(re.compile(r"/console/login$"))
    admin.goto(f"{city}/console")
    assert admin.page.url.endswith("/console/login")


def test_clerk_merges_a_duplicate_into_its_main_case_and_undoes_it(
    web_federation: WebFederation, visit: Callable[[], Visitor]
) -> None:
    """并单 on the case page: the duplicate's form names the main case; an undo before the reply."""
    county = web_federation.url("511102")
    main_id, _ = _submit_by_grpc(web_federation.grpc("511102"))
    twin_id, _ = _submit_by_grpc(web_federation.grpc("511102"))
    clerk = visit()
    _sign_in(clerk, county, "clerk-511102", web_federation.passwords["clerk-511102"])

    def merge_form_shown() -> bool:
        clerk.goto(f"{county}/console/case/{twin_id}")
        return bool(clerk.page.locator("#form-merge").count() > 0)

    _eventually("the merge form on the duplicate's page", merge_form_shown)
    clerk.page.fill("#merge-main_case_id", twin_id)  # itself: refused, naming the field
    clerk.page.fill("#merge-reason", "同一路段积水")
    clerk.page.click("#form-merge button[type=submit]")
    assert clerk.page.locator("#form-merge .error").count() > 0
    clerk.page.fill("#merge-main_case_id", main_id)
    clerk.page.fill("#merge-reason", "同一路段积水")
    clerk.page.click("#form-merge button[type=submit]")
    clerk.page.wait_for_selector("#form-unmerge")
    assert "已并单" in clerk.page.inner_text("#case-state")
    clerk.check("console-case-merged")
    clerk.page.fill("#unmerge-reason", "地点不同，分别办理")
    clerk.page.click("#form-unmerge button[type=submit]")
    clerk.page.wait_for_selector("#form-merge")
    assert "已并单" not in clerk.page.inner_text("#case-state")


def test_citizen_sees_progress_notices_and_turns_them_off_and_on(
    web_federation: WebFederation, visit: Callable[[], Visitor]
) -> None:
    county = web_federation.url("511102")
    _case_id, code = _submit_by_grpc(web_federation.grpc("511102"))
    citizen = visit()
    page = citizen.page
    citizen.goto(f"{county}/track")
    page.fill("#tracking_code", code)
    page.fill("#phone_last4", PHONE[-4:])
    page.click("form[action='/track'] button[type=submit]")
    page.wait_for_url(re.compile(r"/track/case$"))
    assert "办理进度通知" in page.inner_text("main")
    page.click("form[action='/track/notices'] button:text('关闭短信/微信进度通知')")
    page.wait_for_url(re.compile(r"/track/case$"))
    assert "已关闭办理进度通知" in page.inner_text("body")
    page.click("form[action='/track/notices'] button:text('恢复短信/微信进度通知')")
    page.wait_for_url(re.compile(r"/track/case$"))
    assert "已恢复办理进度通知" in page.inner_text("body")


def test_lead_unit_asks_an_assisting_unit_which_answers_from_its_assist_tab(
    web_federation: WebFederation, visit: Callable[[], Visitor]
) -> None:
    """主办/协办 screens: the office asks the environment unit to assist on a transport case; that
    unit finds it under its 协办 tab, answers the lead, and the case page shows the answer."""
    from services.common.regions import RegionTree
    from services.routing.jurisdiction import load_catalogue

    county = web_federation.url("511102")
    assisting = load_catalogue("511102", RegionTree.load()).unit_for("环境保护", "511102")
    case_id, _ = _submit_by_grpc(web_federation.grpc("511102"))
    clerk = visit()
    _sign_in(clerk, county, "clerk-511102", web_federation.passwords["clerk-511102"])

    def assist_form_shown() -> bool:
        clerk.goto(f"{county}/console/case/{case_id}")
        return bool(clerk.page.locator("#form-request_assist").count() > 0)

    _eventually("the request-assist form on the case page", assist_form_shown)
    clerk.page.fill("#request_assist-request", "请提供该路段排水设施的巡查记录")
    clerk.page.click("#form-request_assist button[type=submit]")  # no unit ticked: one line, in Chinese
    assert clerk.page.inner_text("#form-request_assist .error").strip() == "请至少选择一个协办单位"
    clerk.page.check(f"#form-request_assist input[value='{assisting}']")
    clerk.page.fill("#request_assist-request", "请提供该路段排水设施的巡查记录")
    clerk.page.click("#form-request_assist button[type=submit]")
    clerk.page.wait_for_selector("#assisting-units")
    assert "待答复" in clerk.page.inner_text("#assisting-units")
    assert "答复期限" in clerk.page.inner_text("#assisting-units")
    clerk.check("console-case-assist-asked")

    handler = visit()
    _sign_in(handler, county, "handler-511102", web_federation.passwords["handler-511102"])
    handler.goto(f"{county}/console?tab=assist")
    handler.page.wait_for_selector(f"a[href='/console/case/{case_id}']")
    handler.check("console-inbox-assist")
    handler.page.click(f"a[href='/console/case/{case_id}']")
    handler.page.wait_for_selector("#form-answer_assist")
    assert handler.page.locator("#form-reply").count() == 0  # only the lead replies to the citizen
    handler.page.click("#form-answer_assist button[type=submit]")  # empty answer
    assert handler.page.inner_text("#form-answer_assist .error").strip() == "此项必须填写"
    handler.page.fill("#answer_assist-text", "已安排排水巡查，记录见附件")
    handler.page.click("#form-answer_assist button[type=submit]")
    handler.page.wait_for_selector("#form-answer_assist", state="detached")
    handler.goto(f"{county}/console?tab=assist")
    assert handler.page.locator(f"a[href='/console/case/{case_id}']").count() == 0
    clerk.goto(f"{county}/console/case/{case_id}")  # the lead sees the answer
    shown = clerk.page.inner_text("#assisting-units")
    assert "已答复" in shown and "已安排排水巡查" in shown and "逾期" not in shown
    clerk.check("console-case-assist-answered")


def test_leader_queue_lists_a_waiting_case_and_the_office_records_the_instruction(
    web_federation: WebFederation, visit: Callable[[], Visitor]
) -> None:
    """领导批示 screens: a case of the leader's class waits in the queue with its time limit; the
    instruction recorded on its case page takes it out and shows the leader's name."""
    county = web_federation.url("511102")
    case_id, _ = _submit_by_grpc(web_federation.grpc("511102"), title="危化品仓库违规存放")
    clerk = visit()
    _sign_in(clerk, county, "clerk-511102", web_federation.passwords["clerk-511102"])

    def queued() -> bool:
        clerk.goto(f"{county}/console/leader")
        return bool(clerk.page.locator(f"#leader-queue a[href='/console/case/{case_id}']").count() > 0)

    _eventually("the case in the leader's queue", queued)
    row = clerk.page.inner_text("#leader-queue tbody")
    assert "重大安全事故隐患" in row and "市委书记" in row and "领导批示时限" in row
    clerk.check("console-leader-queue")
    clerk.page.click(f"#leader-queue a[href='/console/case/{case_id}']")
    clerk.page.wait_for_selector("#form-instruct")
    assert "待领导批示" in clerk.page.inner_text("#instruction")
    clerk.page.fill("#instruct-instruction", "请区应急局牵头，三日内排查")
    clerk.page.click("#form-instruct button[type=submit]")  # no leader's name: one line, in Chinese
    assert clerk.page.inner_text("#form-instruct .error").strip() == "此项必须填写"
    clerk.page.fill("#instruct-leader_name", "李明华")
    clerk.page.fill("#instruct-instruction", "请区应急局牵头，三日内排查")
    clerk.page.click("#form-instruct button[type=submit]")
    clerk.page.wait_for_selector("#form-instruct", state="detached")
    assert "李明华" in clerk.page.inner_text("#instruction")
    # The history says both steps in Chinese: the hold with its class and leader, then the instruction.
    history = clerk.page.inner_text("ol.timeline")
    assert "属领导批转类别“重大安全事故隐患”，待市委书记批示" in history and "李明华批示" in history
    assert "waits for" not in history and "instruction" not in history
    clerk.check("console-case-instructed")
    clerk.goto(f"{county}/console/leader")
    assert clerk.page.locator(f"#leader-queue a[href='/console/case/{case_id}']").count() == 0


def test_evaluator_sees_only_the_month_s_sample_and_rates_each_case_once(
    web_federation: WebFederation, visit: Callable[[], Visitor]
) -> None:
    """第三方评价 screens: the supervisor draws the month's sample with a seed; the evaluation group's
    member lands on the sample (nothing else of the console), reads the case masked and rates it once."""
    from lianxin.routing.v1 import routing_service_pb2 as routing_pb2
    from lianxin.routing.v1 import routing_service_pb2_grpc as routing_grpc

    from services.common.security import bearer_metadata, issue_token

    county = web_federation.url("511102")
    admin = bearer_metadata(
        issue_token(web_federation.token_key.encode(), subject="admin", node="511102", roles=["admin"])
    )
    with grpc.insecure_channel(web_federation.grpc("511102")) as channel:
        case_id = (
            intake_grpc.IntakeServiceStub(channel)
            .SubmitCase(
                intake_pb2.SubmitCaseRequest(
                    channel=common_pb2.CHANNEL_WEB,
                    channel_ref=str(uuid.uuid4()),
                    title="河道漂浮垃圾无人清理",
                    body="河道漂浮垃圾长期无人清理，联系电话13987654321。",
                    category="环境保护",
                    region_code="511102",
                    complainant=common_pb2.Person(name=NAME, phone=PHONE),
                ),
                timeout=10,
            )
            .case.case_id
        )
        stub = routing_grpc.RoutingServiceStub(channel)
        found: list[str] = []

        def placed() -> bool:
            orders = stub.ListWorkOrders(routing_pb2.ListWorkOrdersRequest(case_id=case_id), metadata=admin, timeout=10)
            found[:] = [o.work_order_id for o in orders.work_orders if o.unit_id]
            return bool(found)

        _eventually("the case placed with a unit", placed)
        wo = found[0]
        stub.AcceptWorkOrder(routing_pb2.AcceptWorkOrderRequest(work_order_id=wo, actor="admin"), metadata=admin)
        stub.ReplyWorkOrder(
            routing_pb2.ReplyWorkOrderRequest(work_order_id=wo, actor="admin", text="已清理河道。"), metadata=admin
        )
        stub.CloseWorkOrder(routing_pb2.CloseWorkOrderRequest(work_order_id=wo, actor="admin"), metadata=admin)

    supervisor = visit()
    _sign_in(supervisor, county, "supervisor-511102", web_federation.passwords["supervisor-511102"])
    supervisor.goto(f"{county}/console/evaluation")
    supervisor.page.wait_for_selector("#form-draw")
    supervisor.check("console-evaluation-draw")
    supervisor.page.fill("#draw-seed", "种子")
    supervisor.page.click("#form-draw button[type=submit]")
    assert "随机种子只能包含字母" in supervisor.page.inner_text("#form-draw .error")
    supervisor.page.fill("#draw-seed", "web-2026")
    supervisor.page.fill("#draw-percent", "100")
    supervisor.page.click("#form-draw button[type=submit]")
    supervisor.page.wait_for_selector("#sample-record")
    assert "web-2026" in supervisor.page.inner_text("#sample-record")
    assert supervisor.page.locator("#form-draw").count() == 0  # once a month
    assert supervisor.page.locator(f"#rate-{case_id}").count() == 0  # the office does not rate

    evaluator = visit()
    evaluator.goto(f"{county}/console/login")
    evaluator.page.fill("#username", "evaluator-511102")
    evaluator.page.fill("#password", web_federation.passwords["evaluator-511102"])
    evaluator.page.click("form[action='/console/login'] >> nth=0 >> button[type=submit]")
    evaluator.page.wait_for_url(re.compile(r"/console/evaluation$"))
    nav = evaluator.page.inner_text("nav.nav")
    assert "第三方评价" in nav and "待办工单" not in nav and "统计督办" not in nav
    card = evaluator.page.inner_text(f"#item-{case_id}")
    assert "13987654321" not in card and "*******4321" in card and "已清理河道" in card
    evaluator.check("console-evaluation-sample")
    evaluator.page.check(f"#rating-{case_id}-unsatisfied")
    evaluator.page.click(f"#rate-{case_id} button[type=submit]")  # unsatisfied without a reason
    assert evaluator.page.inner_text(f"#rate-{case_id} .error").strip() == "评价为不满意时须说明理由"
    evaluator.page.check(f"#rating-{case_id}-basically")
    evaluator.page.fill(f"#comment-{case_id}", "答复及时，但未说明后续巡查安排")
    evaluator.page.click(f"#rate-{case_id} button[type=submit]")
    evaluator.page.wait_for_selector(f"#rate-{case_id}", state="detached")
    assert "基本满意" in evaluator.page.inner_text(f"#item-{case_id} .rated")
    evaluator.check("console-evaluation-rated")
    response = evaluator.goto(f"{county}/console/case/{case_id}")  # nothing beyond the sample
    assert response.status == 403
    evaluator.check("console-evaluation-forbidden", allow_console=("403",))
