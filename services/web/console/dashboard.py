"""The supervisor dashboard (统计督办), the drill-down behind a figure and the monthly bulletin."""

from __future__ import annotations

import io
import zipfile
from typing import Any

from lianxin.common.v1 import common_pb2
from lianxin.routing.v1 import routing_service_pb2 as routing_pb2
from lianxin.stats.v1 import stats_service_pb2 as stats_pb2
from starlette.responses import Response

from services.web.app import Page, today_month
from services.web.charts import bar_chart
from services.web.console.common import require, settled

DASHBOARD_METRICS = (
    "received",
    "on_time_acceptance_rate",
    "reply_rate",
    "on_time_completion_rate",
    "avg_reply_workdays",
    "satisfaction_rate",
    "third_party_satisfaction_rate",
    "overdue",
    "supervised",
)
RATE_METRICS = frozenset(
    {
        "on_time_acceptance_rate",
        "reply_rate",
        "on_time_completion_rate",
        "satisfaction_rate",
        "third_party_satisfaction_rate",
        "online_share",
        "completion_rate",
        "repeat_rate",
    }
)


def _metrics_request(
    region: str, month: str, *, drill: bool = False, metrics: tuple[str, ...] = DASHBOARD_METRICS
) -> Any:
    return stats_pb2.GetMetricsRequest(region_code=region, month=month, metrics=list(metrics), include_case_ids=drill)


def _region_param(page: Page) -> str:
    region = page.query("region") or (page.operator.principal.node if page.operator else page.gateway.node)
    return region if region in page.gateway.regions else page.gateway.node


def dashboard(page: Page) -> Response:
    if (redirect := require(page)) is not None:
        return redirect
    region = _region_param(page)
    month = page.query("month") or today_month()
    tree = page.gateway.regions
    children = list(tree.children.get(region, []))
    # Only the children this node's warehouse covers: the node's own subtree.
    children = [c for c in children if tree.contains(page.gateway.node, c)]
    futures = {
        code: page.client.start(page.client.stats.GetMetrics, _metrics_request(code, month), page.token)
        for code in [region, *children]
    }
    figures: dict[str, dict[str, stats_pb2.Metric]] = {}
    for code, future in futures.items():
        reply = page.client.result(future)
        figures[code] = {m.name: m for m in reply.metrics}
    hotspots = page.client.start(
        page.client.stats.ListHotspots, stats_pb2.ListHotspotsRequest(region_code=region), page.token
    )
    ranking = (
        page.client.start(
            page.client.stats.RankRegions,
            stats_pb2.RankRegionsRequest(parent_region_code=region, metric="satisfaction_rate", month=month),
            page.token,
        )
        if children
        else None
    )
    supervisions = page.client.start(
        page.client.routing.ListSupervisions,
        routing_pb2.ListSupervisionsRequest(region_code=region, page=common_pb2.PageRequest(page_size=10)),
        page.token,
    )
    overdue = page.client.start(
        page.client.routing.ListWorkOrders,
        routing_pb2.ListWorkOrdersRequest(overdue_only=True, page=common_pb2.PageRequest(page_size=10)),
        page.token,
    )

    chart = (
        bar_chart(
            [(tree.get(c).name, figures[c]["received"].value if "received" in figures[c] else 0.0) for c in children],
            title="各下级地区受理量",
        )
        if children
        else ""
    )
    return page.render(
        "console/dashboard.html",
        region=region,
        region_name=tree.display_name(region),
        parent=tree.parent(region) if region != page.gateway.node and tree.parent(region) else "",
        month=month,
        children=children,
        names={c: tree.get(c).name for c in [region, *children]},
        figures=figures,
        metrics=DASHBOARD_METRICS,
        rates=RATE_METRICS,
        hotspots=settled(page, hotspots, "hotspots"),
        ranking=settled(page, ranking, "rows"),
        supervisions=settled(page, supervisions, "supervisions"),
        overdue=settled(page, overdue, "work_orders"),
        chart=chart,
    )


def drill(page: Page) -> Response:
    if (redirect := require(page)) is not None:
        return redirect
    region = _region_param(page)
    month = page.query("month") or today_month()
    metric = page.query("metric")
    if metric not in DASHBOARD_METRICS:
        metric = "received"
    reply = page.call(page.client.stats.GetMetrics, _metrics_request(region, month, drill=True, metrics=(metric,)))
    figure = reply.metrics[0] if reply.metrics else None
    return page.render(
        "console/drill.html",
        region=region,
        region_name=page.gateway.regions.display_name(region),
        month=month,
        metric=metric,
        figure=figure,
        rates=RATE_METRICS,
    )


BULLETIN_TIMEOUT_S = 30.0


def bulletin(page: Page) -> Response:
    if (redirect := require(page)) is not None:
        return redirect
    region = _region_param(page)
    month = page.query("month") or today_month()
    # The bulletin draws three charts and reads the month's warehouse: seconds even on a quiet node,
    # so it gets more than the pages' call deadline.
    request = stats_pb2.GetBulletinRequest(region_code=region, month=month)
    reply = page.call(page.client.stats.GetBulletin, request, timeout=BULLETIN_TIMEOUT_S)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("bulletin.md", reply.markdown)
        for file in reply.files:
            archive.writestr(file.name, file.content)
    name = f"bulletin-{region}-{month}.zip"
    return Response(
        buffer.getvalue(),
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )
