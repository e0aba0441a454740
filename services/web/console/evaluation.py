"""第三方评价: the month's sample, one rating form per case, and the drawing of the sample."""

from __future__ import annotations

from lianxin.common.v1 import common_pb2
from lianxin.routing.v1 import routing_service_pb2 as routing_pb2
from starlette.responses import Response

from services.web import labels
from services.web.app import Page, today_month
from services.web.client import CallFailed
from services.web.console.common import ROUTING, require, to_int

RATING_VALUES: dict[str, common_pb2.Satisfaction.ValueType] = {
    "satisfied": common_pb2.SATISFACTION_SATISFIED,
    "basically": common_pb2.SATISFACTION_BASICALLY_SATISFIED,
    "unsatisfied": common_pb2.SATISFACTION_UNSATISFIED,
}


# The fields each form of the page shows an error beside; any other error goes above the form.
EVALUATION_FIELDS: dict[str, tuple[str, ...]] = {"rate": ("rating", "comment"), "draw": ("seed", "percent", "minimum")}


def evaluation(page: Page, *, errors: dict[str, dict[str, str]] | None = None, month: str = "") -> Response:
    """第三方评价: the month's sample as the evaluation group sees it (masked), a rating form per case
    not rated yet; the office's supervisor draws the month's sample here."""
    if (redirect := require(page)) is not None:
        return redirect
    month = month or page.query("month") or today_month()
    sample: routing_pb2.ListEvaluationSampleResponse | None = None
    try:
        sample = page.call(
            page.client.routing.ListEvaluationSample,
            routing_pb2.ListEvaluationSampleRequest(
                month=month, page=common_pb2.PageRequest(page_size=100, page_token=page.query("page"))
            ),
        )
    except CallFailed as failure:
        if failure.status not in (400, 404):
            raise
        if failure.status == 400:  # a month typed wrong in the address
            errors = {**(errors or {}), "month": {"month": labels.field_error(failure.message)}}
    return page.render(
        "console/evaluation.html",
        month=month,
        sample=sample.sample if sample is not None and sample.sample.month else None,
        items=list(sample.items) if sample is not None else [],
        next_page=sample.page.next_page_token if sample is not None else "",
        may_rate=page.may(f"{ROUTING}/RecordThirdPartyRating"),
        may_draw=page.may(f"{ROUTING}/DrawEvaluationSample"),
        errors=errors or {},
        values=dict(page.form),
    )


def evaluation_act(page: Page) -> Response:
    """Record one rating (action "rate") or draw the month's sample (action "draw")."""
    if (redirect := require(page)) is not None:
        return redirect
    assert page.operator is not None
    month = page.field("month")
    action = page.field("action")
    key = page.field("case_id") if action == "rate" else "draw"
    try:
        if action == "rate":
            page.call(
                page.client.routing.RecordThirdPartyRating,
                routing_pb2.RecordThirdPartyRatingRequest(
                    month=month,
                    case_id=page.field("case_id"),
                    actor=page.operator.principal.subject,
                    rating=RATING_VALUES.get(page.field("rating"), common_pb2.SATISFACTION_UNSPECIFIED),
                    comment=page.field("comment"),
                ),
            )
            page.flash("评价已记录。")
        elif action == "draw":
            page.call(
                page.client.routing.DrawEvaluationSample,
                routing_pb2.DrawEvaluationSampleRequest(
                    month=month,
                    seed=page.field("seed"),
                    percent=to_int(page.field("percent")),
                    minimum=to_int(page.field("minimum")),
                    actor=page.operator.principal.subject,
                ),
            )
            page.flash(f"{month} 样本已抽取。")
        else:
            return page.redirect("/console/evaluation")
    except CallFailed as failure:
        if failure.status in (400, 404, 409):
            field = labels.form_field(failure.field) if failure.status == 400 and failure.field else "form"
            if field not in EVALUATION_FIELDS.get(action, ()):
                field = "form"  # shown above the form's fields
            message = labels.field_error(failure.message.split(": ", 1)[-1])
            # 200 with the error beside its field: browsers log a 4xx page load as a console error.
            return evaluation(page, errors={key: {field: message}}, month=month)
        raise
    return page.redirect(f"/console/evaluation?month={month}")
