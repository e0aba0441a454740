"""The citizen portal: submit a request, track it, rate it, ask for review or withdraw, and read replies.

Public pages: no sign-in. The tracking code and phone digits travel in POST bodies and a short
signed cookie, never in a URL, so they do not end up in logs, history or Referer headers.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from lianxin.common.v1 import common_pb2
from lianxin.intake.v1 import intake_service_pb2 as intake_pb2
from lianxin.stats.v1 import stats_service_pb2 as stats_pb2
from lianxin.video.v1 import video_service_pb2 as video_pb2
from starlette.responses import Response

from services.common.categories import CATEGORIES
from services.web import labels
from services.web.app import Page, local_time, today_month
from services.web.client import CallFailed

SUBMIT_FIELDS = ("title", "body", "category", "region_code", "address", "name", "phone", "id_number")
TRACK_TTL_S = 30 * 60


def _regions(page: Page) -> list[tuple[str, str]]:
    """The node's own region and the regions below it, for the place of the matter."""
    tree = page.gateway.regions
    codes = [page.gateway.node, *[c for c in tree.subtree(page.gateway.node) if c != page.gateway.node]]
    return [(code, tree.display_name(code)) for code in codes if code in tree]


def home(page: Page) -> Response:
    return page.render("portal/home.html")


def _submit_form(
    page: Page, values: dict[str, Any], errors: dict[str, str], status: int = 200, **extra: Any
) -> Response:
    return page.render(
        "portal/submit.html",
        status=status,
        values=values,
        errors=errors,
        categories=CATEGORIES,
        regions=_regions(page),
        field_labels=labels.FIELD_LABELS,
        **extra,
    )


def submit_form(page: Page) -> Response:
    return _submit_form(page, {"channel_ref": str(uuid.uuid4()), "region_code": page.gateway.node}, {})


def _suggest(page: Page, text: str) -> tuple[str, float]:
    if not text.strip():
        return "", 0.0
    try:
        reply = page.client.call(
            page.client.intake.ClassifyText, intake_pb2.ClassifyTextRequest(text=text), page.gateway.portal_token()
        )
    except CallFailed:
        return "", 0.0
    return reply.category, reply.confidence


def submit(page: Page) -> Response:
    values: dict[str, Any] = {name: page.field(name) for name in SUBMIT_FIELDS}
    values["anonymous"] = page.field("anonymous") == "on"
    values["publish"] = page.field("publish") == "on"
    values["channel_ref"] = page.field("channel_ref") or str(uuid.uuid4())
    if page.field("action") == "suggest":
        category, confidence = _suggest(page, f"{values['title']}\n{values['body']}")
        if category:
            values["category"] = category
        note = f"系统推荐分类：{category}（可修改）" if category else "暂时无法推荐分类，请自行选择或留空由系统识别。"
        return _submit_form(page, values, {}, suggestion=note, confidence=confidence)
    request = intake_pb2.SubmitCaseRequest(
        channel=common_pb2.CHANNEL_WEB,
        channel_ref=values["channel_ref"],
        title=values["title"],
        body=values["body"],
        category=values["category"],
        region_code=values["region_code"],
        address=values["address"],
        anonymous=values["anonymous"],
        publish_consent=values["publish"],
        complainant=common_pb2.Person(name=values["name"], phone=values["phone"], id_number=values["id_number"]),
    )
    try:
        reply = page.public(page.client.public_intake.SubmitCase, request)
    except CallFailed as failure:
        if failure.status != 400:
            raise
        field = labels.form_field(failure.field) or "form"
        errors = {field: labels.field_error(failure.message.split(": ", 1)[-1])}
        return _submit_form(page, values, errors)
    done = page.gateway.signer.dumps(
        "submitted", {"code": reply.tracking_code, "case": reply.case.case_id}, ttl_s=TRACK_TTL_S
    )
    page.cookies.append((page.gateway.cookie("submitted"), done, TRACK_TTL_S))
    return page.redirect("/submit/done")


def submit_done(page: Page) -> Response:
    data = page.gateway.signer.loads("submitted", page.request.cookies.get(page.gateway.cookie("submitted")))
    if data is None:
        return page.redirect("/submit")
    return page.render("portal/submitted.html", tracking_code=data["code"], case_id=data["case"])


def classify(page: Page) -> Response:
    """htmx: the category select with the classifier's suggestion chosen (the form works without it)."""
    category, _confidence = _suggest(page, f"{page.field('title')}\n{page.field('body')}")
    return page.render(
        "portal/_category.html", values={"category": category or page.field("category")}, categories=CATEGORIES
    )


# --------------------------------------------------------------------------- tracking


def track_form(page: Page) -> Response:
    return page.render("portal/track.html", values={}, errors={})


def _proof(page: Page) -> tuple[str, str] | None:
    data = page.gateway.signer.loads("track", page.request.cookies.get(page.gateway.cookie("track")))
    if data is None:
        return None
    return str(data["c"]), str(data["p"])


def track(page: Page) -> Response:
    code, last4 = page.field("tracking_code").upper(), page.field("phone_last4")
    values = {"tracking_code": code, "phone_last4": last4}
    try:
        page.public(
            page.client.public_intake.TrackCase, intake_pb2.TrackCaseRequest(tracking_code=code, phone_last4=last4)
        )
    except CallFailed as failure:
        if failure.status not in (400, 404):
            raise
        field = labels.form_field(failure.field) if failure.field else "tracking_code"
        reason = "查询码或手机号后四位不正确，请核对后重试。" if failure.status == 404 else failure.message
        errors = {field: labels.field_error(reason.split(": ", 1)[-1])}
        return page.render("portal/track.html", values=values, errors=errors)
    proof = page.gateway.signer.dumps("track", {"c": code, "p": last4}, ttl_s=TRACK_TTL_S)
    page.cookies.append((page.gateway.cookie("track"), proof, TRACK_TTL_S))
    return page.redirect("/track/case")


def tracked_case(page: Page, errors: dict[str, str] | None = None, status: int = 200, **extra: Any) -> Response:
    tracked = _case_pass(page)
    if tracked is None:
        return page.redirect("/track")
    reply, case_pass = tracked
    state = labels.state_name(reply.state)
    return page.render(
        "portal/tracked.html",
        status=status,
        case=reply,
        state=state,
        visits=_citizen_visits(page, case_pass),
        errors=errors or {},
        values=extra.pop("values", {}),
        **extra,
    )


def _citizen_action(page: Page, call: Any, request: Any, done: str) -> Response:
    try:
        page.public(call, request)
    except CallFailed as failure:
        if failure.status not in (400, 409):
            raise
        field = labels.form_field(failure.field) if failure.field else "action"
        errors = {field: labels.field_error(failure.message.split(": ", 1)[-1])}
        return tracked_case(page, errors, values=dict(page.form))
    page.flash(done)
    return page.redirect("/track/case")


SATISFACTION = {
    "satisfied": common_pb2.SATISFACTION_SATISFIED,
    "basically": common_pb2.SATISFACTION_BASICALLY_SATISFIED,
    "unsatisfied": common_pb2.SATISFACTION_UNSATISFIED,
}


def _as_citizen(page: Page, act: Callable[[str, str], tuple[Any, Any]], done: str) -> Response:
    """Run a citizen action with the tracking proof from the signed cookie (sent back to /track without it)."""
    proof = _proof(page)
    if proof is None:
        return page.redirect("/track")
    call, request = act(*proof)
    return _citizen_action(page, call, request, done)


def evaluate(page: Page) -> Response:
    satisfaction = SATISFACTION.get(page.field("satisfaction"), common_pb2.SATISFACTION_UNSPECIFIED)
    return _as_citizen(
        page,
        lambda code, last4: (
            page.client.public_intake.EvaluateCase,
            intake_pb2.EvaluateCaseRequest(
                tracking_code=code, phone_last4=last4, satisfaction=satisfaction, comment=page.field("comment")
            ),
        ),
        "感谢您的评价，已记录。",
    )


def request_review(page: Page) -> Response:
    return _as_citizen(
        page,
        lambda code, last4: (
            page.client.public_intake.RequestReview,
            intake_pb2.RequestReviewRequest(tracking_code=code, phone_last4=last4, reason=page.field("reason")),
        ),
        "复查申请已提交。",
    )


def withdraw(page: Page) -> Response:
    return _as_citizen(
        page,
        lambda code, last4: (
            page.client.public_intake.WithdrawCase,
            intake_pb2.WithdrawCaseRequest(tracking_code=code, phone_last4=last4, reason=page.field("reason")),
        ),
        "您的诉求已撤回。",
    )


def progress_notices(page: Page) -> Response:
    """办事进度推送: the citizen turns the case's SMS/WeChat progress notices off or on again."""
    enabled = page.field("enabled") == "1"
    return _as_citizen(
        page,
        lambda code, last4: (
            page.client.public_intake.SetProgressNotices,
            intake_pb2.SetProgressNoticesRequest(tracking_code=code, phone_last4=last4, enabled=enabled),
        ),
        "已恢复办理进度通知。" if enabled else "已关闭办理进度通知。",
    )


# --------------------------------------------------------------------------- public reply board

UNIT_METRICS = ("reply_rate", "avg_reply_workdays", "satisfaction_rate")


UNIT_FIGURES_TTL_S = 60.0
_unit_figures_cache: dict[tuple[str, str], tuple[float, tuple[list[dict[str, Any]], dict[str, str]]]] = {}


def _unit_figures(page: Page, month: str) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """The month's unit figures, kept a minute: the public board is read far more often than they change.

    Only a cache (each replica its own): nothing a request needs is kept between requests. A month
    without figures is kept too: it was asked again on every board page (four stats calls, 2.4 of the
    node's 5.2 ms a page; 185–188 board pages/s under 50 clients, 326–333 with the month kept); a
    failed call is not, so the next page asks again.
    """
    key = (page.gateway.node, month)
    now = time.monotonic()
    cached = _unit_figures_cache.get(key)
    if cached is not None and now - cached[0] < UNIT_FIGURES_TTL_S:
        return cached[1]
    figures = _ask_unit_figures(page, month)
    if figures is None:
        return [], {}
    if len(_unit_figures_cache) > 64:
        _unit_figures_cache.clear()
    _unit_figures_cache[key] = (now, figures)
    return figures


def _ask_unit_figures(page: Page, month: str) -> tuple[list[dict[str, Any]], dict[str, str]] | None:
    """Each unit's figures of the month (张榜公布) with the definitions of docs/stats.md, asked all at
    once; None when stats did not answer."""
    token = page.gateway.portal_token()
    node = page.gateway.node
    stats = page.client.stats
    ranks = {
        metric: page.client.start(
            stats.RankUnits, stats_pb2.RankUnitsRequest(region_code=node, metric=metric, month=month), token
        )
        for metric in UNIT_METRICS
    }
    definitions = page.client.start(
        stats.GetMetrics, stats_pb2.GetMetricsRequest(region_code=node, month=month, metrics=list(UNIT_METRICS)), token
    )
    units: dict[str, dict[str, Any]] = {}
    try:
        for metric, future in ranks.items():
            for row in page.client.result(future).rows:
                unit = units.setdefault(row.unit_id, {"name": _unit_label(page, row), "cases": row.cases})
                unit[metric] = row.value
        # The Chinese definitions (a node not yet serving them gives the English ones).
        meanings = {m.name: _meaning(m) for m in page.client.result(definitions).metrics}
    except CallFailed:
        return None
    return sorted(units.values(), key=lambda u: (-u["cases"], u["name"])), meanings


def _meaning(metric: stats_pb2.Metric) -> str:
    """A rate's definition under its term: the Chinese one says the term first ("回复率：…"), which the
    board already shows as the heading (perhaps with its unit: "平均答复时长（工作日）"), so it is said once."""
    text = metric.definition_zh or metric.definition
    term = labels.METRIC_LABELS.get(metric.name, "")
    said, colon, rest = text.partition("：")
    return rest if colon and said and term.startswith(said) else text


def _unit_label(page: Page, row: stats_pb2.Ranking) -> str:
    """The unit's name from routing's ListUnits (stats names a unit by its code); the code when unknown."""
    named = page.gateway.unit_name(row.unit_id)
    if named != row.unit_id:
        return named
    return row.name or row.unit_id


def board(page: Page) -> Response:
    month = page.query("month")
    if month and not re.fullmatch(r"\d{4}-\d{2}", month):
        month = ""
    request = intake_pb2.ListPublishedRepliesRequest(
        text=page.query("q")[:50],
        category=page.query("category") if page.query("category") in CATEGORIES else "",
        region_code=page.query("region") if page.query("region") in dict(_regions(page)) else "",
        month=month,
        page=common_pb2.PageRequest(page_size=10, page_token=page.query("page")[:256]),
    )
    reply = page.public(page.client.public_intake.ListPublishedReplies, request)
    units, meanings = _unit_figures(page, month or today_month())
    return page.render(
        "portal/board.html",
        replies=reply.replies,
        next_page=reply.page.next_page_token,
        total=reply.page.total_size,
        filters={"q": request.text, "category": request.category, "region": request.region_code, "month": month},
        categories=CATEGORIES,
        regions=_regions(page),
        region_names=dict(_regions(page)),
        units=units,
        meanings=meanings,
        figures_month=month or today_month(),
    )


def _case_pass(page: Page) -> tuple[Any, str] | None:
    """TrackCase for the tracking proof in the cookie: the case and its fresh case pass (None: no proof)."""
    proof = _proof(page)
    if proof is None:
        return None
    request = intake_pb2.TrackCaseRequest(tracking_code=proof[0], phone_last4=proof[1])
    reply = page.public(page.client.public_intake.TrackCase, request)
    return reply, reply.case_pass


def _citizen_visits(page: Page, case_pass: str) -> list[Any]:
    if not case_pass:
        return []
    request = video_pb2.ListCitizenVisitsRequest(case_pass=case_pass)
    try:
        reply = page.public(page.client.public_video.ListCitizenVisits, request)
    except CallFailed:
        return []  # the video service not answering must not hide the case's progress
    return list(reply.visits)


def video(page: Page, errors: dict[str, str] | None = None) -> Response:
    """视频接访: the leaders who receive citizens, a leader's free slots, and booking one for one's own case."""
    leader = (page.query("leader") or page.field("leader_id"))[:64]
    slots: list[Any] = []
    notice = ""
    leaders: list[Any] = []
    try:
        listed = page.public(page.client.public_video.ListReceivingLeaders, video_pb2.ListReceivingLeadersRequest())
        leaders, notice = list(listed.leaders), listed.calendar_notice
    except CallFailed as failure:
        if failure.status not in (400, 404, 503):
            raise
    if leader:
        try:
            reply = page.client.call(
                page.client.video.ListSlots,
                video_pb2.ListSlotsRequest(leader_id=leader, max_items=8),
                page.gateway.portal_token(),
            )
            slots, notice = list(reply.slots), reply.calendar_notice or notice
        except CallFailed as failure:
            if failure.status not in (400, 404):
                raise
    names = {item.leader_id: item.leader_name for item in leaders}
    return page.render(
        "portal/video.html",
        leader=leader,
        leader_name=names.get(leader, leader),
        leaders=leaders,
        slots=slots,
        notice=notice,
        tracking=_proof(page) is not None,
        errors=errors or {},
    )


def book_visit(page: Page) -> Response:
    """The citizen books the chosen slot for their own case (the tracking proof in the cookie)."""
    tracked = _case_pass(page)
    if tracked is None:
        return page.redirect("/track")
    starts_at = Timestamp()
    try:
        starts_at.FromJsonString(page.field("starts_at"))
    except ValueError:
        starts_at = Timestamp()
    request = video_pb2.BookCitizenVisitRequest(
        case_pass=tracked[1], leader_id=page.field("leader_id"), starts_at=starts_at
    )
    try:
        booked = page.public(page.client.public_video.BookCitizenVisit, request).visit
    except CallFailed as failure:
        if failure.status not in (400, 404, 409):
            raise
        return video(page, {"book": labels.visit_error(failure.status, failure.message)})
    page.flash(f"已预约{booked.leader_name}的视频接访：{local_time(booked.starts_at)}。")
    return page.redirect("/track/case")


def cancel_visit(page: Page) -> Response:
    """The citizen cancels a visit of their own case (video says whether it is still early enough)."""
    tracked = _case_pass(page)
    if tracked is None:
        return page.redirect("/track")
    request = video_pb2.CancelCitizenVisitRequest(
        case_pass=tracked[1], visit_id=page.field("visit_id"), reason=page.field("reason")
    )
    try:
        page.public(page.client.public_video.CancelCitizenVisit, request)
    except CallFailed as failure:
        if failure.status not in (400, 404, 409):
            raise
        return tracked_case(page, {"visit": labels.visit_error(failure.status, failure.message)})
    page.flash("视频接访预约已取消。")
    return page.redirect("/track/case")


ROUTES: list[tuple[str, str, Any, list[str]]] = [
    ("/", "home", home, ["GET"]),
    ("/submit", "submit_form", submit_form, ["GET"]),
    ("/submit", "submit", submit, ["POST"]),
    ("/submit/done", "submit_done", submit_done, ["GET"]),
    ("/submit/classify", "classify", classify, ["POST"]),
    ("/track", "track_form", track_form, ["GET"]),
    ("/track", "track", track, ["POST"]),
    ("/track/case", "tracked_case", tracked_case, ["GET"]),
    ("/track/evaluate", "evaluate", evaluate, ["POST"]),
    ("/track/review", "request_review", request_review, ["POST"]),
    ("/track/withdraw", "withdraw", withdraw, ["POST"]),
    ("/track/notices", "progress_notices", progress_notices, ["POST"]),
    ("/board", "board", board, ["GET"]),
    ("/video", "video", video, ["GET"]),
    ("/video/book", "video_book", book_visit, ["POST"]),
    ("/video/cancel", "video_cancel", cancel_visit, ["POST"]),
]
