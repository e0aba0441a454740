"""The warehouse's rules as plain functions: which fact a case event writes, and metric definitions."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from services.common.regions import RegionTree, Tier

DEFINITIONS = {
    "received": "受理量: cases registered in the region's subtree with submitted_at in [period_start, period_end).",
}


@dataclass(frozen=True)
class CaseFact:
    case_id: str
    region_code: str
    province_code: str
    city_code: str
    county_code: str
    registering_node: str
    channel: str
    category: str
    state: str
    version: int
    submitted_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class MetricValue:
    name: str
    definition: str
    value: float
    numerator: int
    denominator: int
    case_ids: list[str]


class WarehouseUnitOfWork(Protocol):
    def upsert_case_fact(self, fact: CaseFact) -> None:
        """Insert, or replace when ``fact.version`` is newer than what is stored (never older)."""

    def touch_case(self, case_id: str, *, state: str, version: int, at: datetime) -> None:
        """Move a known case's state forward if ``version`` is newer."""

    def count_received(
        self, *, tier: Tier, region_code: str, start: datetime | None, end: datetime | None, with_ids: bool
    ) -> tuple[int, list[str]]: ...


def region_columns(tree: RegionTree, region_code: str, fallback_node: str) -> tuple[str, str, str, str]:
    """(region, province, city, county) codes, so any tier's subtree is one indexed equality.

    A case whose place is unresolved is counted where it was registered.
    """
    code = region_code if region_code in tree else fallback_node
    province = city = county = ""
    for step in tree.path(code):
        tier = tree.get(step).tier
        if tier is Tier.PROVINCE:
            province = step
        elif tier is Tier.CITY:
            city = step
        elif tier is Tier.COUNTY:
            county = step
    return code, province, city, county


def received(
    uow: WarehouseUnitOfWork,
    tree: RegionTree,
    *,
    region_code: str,
    start: datetime | None,
    end: datetime | None,
    with_ids: bool,
) -> MetricValue:
    count, ids = uow.count_received(
        tier=tree.get(region_code).tier, region_code=region_code, start=start, end=end, with_ids=with_ids
    )
    return MetricValue("received", DEFINITIONS["received"], float(count), count, 0, ids)
