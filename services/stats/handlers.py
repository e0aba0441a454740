"""The warehouse's use cases as plain functions: ingest an event, answer metrics, rankings and hotspots.

Ingestion is source-agnostic: the node's own events (intake, routing) and replicated events from
the subtree (exchange) go through ``ingest`` alike. Events are kept by (case_id, version, type) and
the fact is refolded from all of them, so a duplicate is a no-op and an older version arriving late
lands in its place.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime

from services.common.calendar import WorkingCalendar
from services.common.clock import to_utc
from services.common.errors import InvalidArgument
from services.common.regions import RegionTree, Tier
from services.stats.domain import (
    NUMERATOR_PREDICATE,
    Aggregates,
    CaseEvent,
    MetricValue,
    RankRow,
    StatsConfig,
    case_snapshot,
    check_metric_names,
    compute,
    fact_from_registration,
    fold_case,
    rank,
    receiving_node,
    shift_month,
    year_months,
)
from services.stats.hotspot import Hotspot, HotspotRules, judge
from services.stats.ports import Slice, StatsUnitOfWork
from services.stats.topics import TopicCase, find_topics

__all__ = [
    "get_metrics",
    "hotspots",
    "ingest",
    "make_slice",
    "rank_regions",
    "rank_units",
    "received",
]


def ingest(
    uow: StatsUnitOfWork,
    body_events: Sequence[CaseEvent],
    *,
    source: str,
    body: bytes,
    text: str,
    tree: RegionTree,
    config: StatsConfig,
    calendar: WorkingCalendar,
) -> bool:
    """Fold one event's body into the warehouse; False for a duplicate (nothing changes).

    ``body_events`` are what the body says (``translate.case_events_of``): one event, or a placement
    folded into its creation as the creation and its steps, kept as one body."""
    if not uow.record_event(body_events, source=source, body=body):
        return False
    event = body_events[0]
    if event.kind == "case_registered" and text:
        uow.save_text(event.case_id, text)
    events = uow.events_of(event.case_id)
    snapshot = case_snapshot(events)
    if snapshot is None:
        return True  # kept; the fact appears when the registration (or a hand-off with the case) arrives
    received_by = receiving_node(events, snapshot.registering_node)
    handed_away = {e.from_node for e in events if e.kind == "case_handed_off" and e.from_node}
    base = fact_from_registration(snapshot, tree, config, received_by=received_by, handed_away=handed_away)
    others = [e for e in events if e.kind != "case_registered"]
    fact = fold_case(others, base=base, config=config, calendar=calendar)
    if fact is not None:
        uow.save_fact(replace(fact, version=max(e.version for e in events)))
    return True


def _check_region(tree: RegionTree, node: str, region: str, field_name: str) -> Tier:
    if region not in tree:
        raise InvalidArgument(field_name, f"unknown region code {region}")
    if not tree.contains(node, region):
        raise InvalidArgument(field_name, f"{region} is outside this node's subtree ({node})")
    return tree.get(region).tier


def make_slice(
    tree: RegionTree,
    node: str,
    *,
    region_code: str,
    unit_id: str = "",
    category: str = "",
    channel: str = "",
    months: Sequence[str] = (),
    start: datetime | None = None,
    end: datetime | None = None,
) -> Slice:
    region = region_code or node
    tier = _check_region(tree, node, region, "region_code")
    if start is not None and end is not None and end <= start:
        raise InvalidArgument("period_end", "must be after period_start")
    return Slice(region, tier, unit_id, category, channel, tuple(months), start, end)


def get_metrics(
    uow: StatsUnitOfWork,
    where: Slice,
    *,
    names: Sequence[str],
    as_of: datetime,
    with_ids: bool,
    id_limit: int = 10_000,
) -> list[MetricValue]:
    chosen = check_metric_names(names)
    agg = uow.aggregate(where, as_of=as_of, group_by=None).get("", Aggregates())
    out: list[MetricValue] = []
    for name in chosen:
        value = compute(name, agg)
        if with_ids:
            ids = uow.case_ids(where, predicate=NUMERATOR_PREDICATE[name], as_of=as_of, limit=id_limit)
            value = replace(value, case_ids=ids)
        out.append(value)
    return out


def received(
    uow: StatsUnitOfWork,
    tree: RegionTree,
    *,
    region_code: str,
    start: datetime | None,
    end: datetime | None,
    with_ids: bool,
    as_of: datetime,
) -> MetricValue:
    where = Slice(region_code, tree.get(region_code).tier, start=start, end=end)
    return get_metrics(uow, where, names=["received"], as_of=as_of, with_ids=with_ids)[0]


def _periods(month: str, year: str) -> tuple[list[str], list[str], list[str]]:
    """(this period, previous period, the one before) as lists of statistical months."""
    if year:
        months = year_months(year)
        return months, year_months(str(int(year) - 1)), year_months(str(int(year) - 2))
    if not month:
        raise InvalidArgument("month", "give a month YYYY-MM or a year YYYY")
    shift_month(month, 0)  # validates
    return [month], [shift_month(month, -1)], [shift_month(month, -2)]


def rank_regions(
    uow: StatsUnitOfWork,
    tree: RegionTree,
    node: str,
    *,
    parent_region_code: str,
    metric: str,
    month: str,
    year: str,
    min_cases: int,
    as_of: datetime,
) -> list[RankRow]:
    """Child regions of ``parent_region_code`` ranked by ``metric`` (see ``domain.rank``)."""
    parent = parent_region_code or node
    tier = _check_region(tree, node, parent, "parent_region_code")
    if tier is Tier.COUNTY:
        raise InvalidArgument("parent_region_code", f"{parent} is a county and has no child regions to rank")
    check_metric_names([metric], "metric")
    if min_cases < 0:
        raise InvalidArgument("min_cases", "must not be negative")
    now, before, _ = _periods(month, year)

    def by_child(months: Sequence[str]) -> dict[str, Aggregates]:
        got = uow.aggregate(Slice(parent, tier, months=tuple(months)), as_of=as_of, group_by="child", metrics=[metric])
        # Every child appears, also one without cases (it is then "not ranked", which a reader expects to see).
        return {child: got.get(child, Aggregates()) for child in tree.children.get(parent, [])}

    return rank(metric, by_child(now), by_child(before), min_cases=min_cases)


def rank_units(
    uow: StatsUnitOfWork,
    tree: RegionTree,
    node: str,
    *,
    region_code: str,
    metric: str,
    month: str,
    year: str,
    min_cases: int,
    as_of: datetime,
) -> list[RankRow]:
    """Handling units of the region ranked by ``metric``; a unit in the bottom two twice running is flagged."""
    region = region_code or node
    tier = _check_region(tree, node, region, "region_code")
    check_metric_names([metric], "metric")
    if min_cases < 0:
        raise InvalidArgument("min_cases", "must not be negative")
    now, before, _ = _periods(month, year)

    def by_unit(months: Sequence[str]) -> dict[str, Aggregates]:
        got = uow.aggregate(Slice(region, tier, months=tuple(months)), as_of=as_of, group_by="unit", metrics=[metric])
        return {unit: agg for unit, agg in got.items() if unit}

    return rank(metric, by_unit(now), by_unit(before), min_cases=min_cases)


def hotspots(
    uow: StatsUnitOfWork,
    tree: RegionTree,
    node: str,
    *,
    region_code: str,
    as_of: datetime,
    rules: HotspotRules,
) -> list[Hotspot]:
    region = region_code or node
    tier = _check_region(tree, node, region, "region_code")
    end = to_utc(as_of)
    window_start = end - rules.window
    recent, before = uow.hotspot_counts(
        Slice(region, tier), baseline_start=window_start - rules.baseline, window_start=window_start, end=end
    )
    out: list[Hotspot] = []
    # Cases, texts, keywords and topics only for the few cells found.
    for spot in judge(recent, before, rules=rules):
        cell_tier = tree.get(spot.region_code).tier if spot.region_code in tree else tier
        cell = (spot.region_code, cell_tier, spot.category)
        cases = sorted(_cell_cases(uow, cell, window_start, end), key=lambda c: (c[1], c[0]), reverse=True)
        # The window before, of the same length, tells a topic's growth.
        earlier = _cell_cases(uow, cell, window_start - rules.window, window_start)
        texts = uow.texts([c[0] for c in cases] + [c[0] for c in earlier])
        now = [TopicCase(case_id, texts.get(case_id, ""), at, unit) for case_id, at, unit in cases]
        out.append(
            replace(
                spot,
                keywords=_keywords([c.text for c in now if c.text], rules.keywords),
                example_case_ids=[c[0] for c in cases[: rules.examples]],
                topics=find_topics(
                    now,
                    [TopicCase(case_id, texts.get(case_id, ""), at, unit) for case_id, at, unit in earlier],
                    rules=rules.topic,
                    terms=_keywords,
                ),
            )
        )
    return out


def _cell_cases(
    uow: StatsUnitOfWork, cell: tuple[str, Tier, str], start: datetime, end: datetime
) -> list[tuple[str, datetime, str]]:
    region_code, tier, category = cell
    return uow.window_cases(region_code=region_code, tier=tier, category=category, start=start, end=end)


def _keywords(texts: Sequence[str], top: int) -> list[str]:
    from services.stats.hotspot import keywords

    return keywords(texts, top)
