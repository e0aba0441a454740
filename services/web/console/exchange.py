"""The exchange desk (数据交换): link status, the quarantine and its replay."""

from __future__ import annotations

from lianxin.common.v1 import common_pb2
from lianxin.exchange.v1 import exchange_service_pb2 as exchange_pb2
from starlette.responses import Response

from services.web.app import Page
from services.web.console.common import EXCHANGE, require


def exchange_desk(page: Page) -> Response:
    if (redirect := require(page)) is not None:
        return redirect
    links = page.client.start(page.client.exchange.LinkStatus, exchange_pb2.LinkStatusRequest(), page.token)
    quarantine = page.client.start(
        page.client.exchange.ListQuarantine,
        exchange_pb2.ListQuarantineRequest(page=common_pb2.PageRequest(page_size=50)),
        page.token,
    )
    return page.render(
        "console/exchange.html",
        links=list(page.client.result(links).links),
        items=list(page.client.result(quarantine).items),
        may_replay=page.may(f"{EXCHANGE}/ReplayQuarantine"),
        direction=lambda v: exchange_pb2.LinkDirection.Name(v).removeprefix("LINK_DIRECTION_"),
        link_state=lambda v: exchange_pb2.LinkState.Name(v).removeprefix("LINK_STATE_"),
    )


def replay(page: Page) -> Response:
    if (redirect := require(page)) is not None:
        return redirect
    ids = [v for k, v in page.form.items() if k.startswith("id_")] or [page.field("id")]
    assert page.operator is not None
    reply = page.call(
        page.client.exchange.ReplayQuarantine,
        exchange_pb2.ReplayQuarantineRequest(ids=[i for i in ids if i], actor=page.operator.principal.subject),
    )
    applied = sum(1 for r in reply.results if r.applied)
    page.flash(f"已重放 {len(reply.results)} 条，其中 {applied} 条已应用。")
    return page.redirect("/console/exchange")
