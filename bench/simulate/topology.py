"""The national tree: 31 provinces by GB/T 2260 code, Sichuan's real cities and counties, synthetic ones elsewhere.

Populations are the 2020 census (millions, rounded); the numbers of prefecture-level and county-level
divisions are approximate (a municipality counts as one city with its districts as counties). Only
Sichuan's region list ships with Lianxin, so every other province gets synthetic codes below its own
real province code: city ``PPCC00``, county ``PPCCNN``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from services.common.regions import Region, RegionTree, Tier

SICHUAN = "510000"


@dataclass(frozen=True)
class Province:
    code: str
    name: str
    population_m: float
    cities: int
    counties: int


PROVINCES: tuple[Province, ...] = (
    Province("110000", "北京市", 21.89, 1, 16),
    Province("120000", "天津市", 13.87, 1, 16),
    Province("130000", "河北省", 74.61, 11, 167),
    Province("140000", "山西省", 34.92, 11, 117),
    Province("150000", "内蒙古自治区", 24.05, 12, 103),
    Province("210000", "辽宁省", 42.59, 14, 100),
    Province("220000", "吉林省", 24.07, 9, 60),
    Province("230000", "黑龙江省", 31.85, 13, 121),
    Province("310000", "上海市", 24.87, 1, 16),
    Province("320000", "江苏省", 84.75, 13, 95),
    Province("330000", "浙江省", 64.57, 11, 90),
    Province("340000", "安徽省", 61.03, 16, 104),
    Province("350000", "福建省", 41.54, 9, 84),
    Province("360000", "江西省", 45.19, 11, 100),
    Province("370000", "山东省", 101.53, 16, 136),
    Province("410000", "河南省", 99.37, 17, 157),
    Province("420000", "湖北省", 57.75, 17, 103),
    Province("430000", "湖南省", 66.44, 14, 122),
    Province("440000", "广东省", 126.01, 21, 122),
    Province("450000", "广西壮族自治区", 50.13, 14, 111),
    Province("460000", "海南省", 10.08, 5, 25),
    Province("500000", "重庆市", 32.05, 1, 38),
    Province(SICHUAN, "四川省", 83.67, 21, 183),
    Province("520000", "贵州省", 38.56, 9, 88),
    Province("530000", "云南省", 47.21, 16, 129),
    Province("540000", "西藏自治区", 3.65, 7, 74),
    Province("610000", "陕西省", 39.53, 10, 107),
    Province("620000", "甘肃省", 25.02, 14, 86),
    Province("630000", "青海省", 5.92, 8, 44),
    Province("640000", "宁夏回族自治区", 7.20, 5, 22),
    Province("650000", "新疆维吾尔自治区", 25.85, 14, 106),
)


@dataclass(frozen=True)
class Federation:
    """The simulated tree and each county's share of its province's residents."""

    regions: RegionTree
    provinces: tuple[Province, ...]
    county_weight: dict[str, float]  # county code -> share of its province's population (sums to 1 per province)

    def counties(self, province: str) -> list[str]:
        return [c for c in self.regions.subtree(province) if self.regions.get(c).tier is Tier.COUNTY]

    def count(self, tier: Tier) -> int:
        return sum(1 for r in self.regions.regions.values() if r.tier is tier)


def _synthetic(province: Province) -> list[Region]:
    rows = [Region(province.code, province.name, Tier.PROVINCE, None)]
    base, extra = divmod(province.counties, province.cities)
    prefix = province.code[:2]
    for c in range(province.cities):
        city = f"{prefix}{c + 1:02d}00"
        rows.append(Region(city, f"{province.name}市{c + 1}", Tier.CITY, province.code))
        for k in range(base + (1 if c < extra else 0)):
            rows.append(Region(f"{city[:4]}{k + 1:02d}", f"{province.name}市{c + 1}县{k + 1}", Tier.COUNTY, city))
    return rows


def federation(scope: str = "national", *, seed: int = 1) -> Federation:
    """``national`` (31 provinces) or ``sichuan`` (the shipped list: 1 + 21 + 183 real codes)."""
    sichuan = RegionTree.load()
    chosen = [p for p in PROVINCES if scope == "national" or p.code == SICHUAN]
    if not chosen:
        raise ValueError(f"scope: {scope!r} is not national or sichuan")
    rows: list[Region] = []
    for province in chosen:
        if province.code == SICHUAN:
            rows += [sichuan.regions[c] for c in sichuan.subtree(SICHUAN)]
        else:
            rows += _synthetic(province)
    regions = RegionTree.from_rows(rows)
    # Residents are not spread evenly: a lognormal weight per county (a city's core districts and the
    # plains are denser than the mountains), fixed by the seed.
    rng = random.Random(seed)
    weights: dict[str, float] = {}
    for province in chosen:
        counties = [c for c in regions.subtree(province.code) if regions.get(c).tier is Tier.COUNTY]
        raw = [rng.lognormvariate(0.0, 0.6) for _ in counties]
        total = sum(raw)
        weights.update({c: w / total for c, w in zip(counties, raw, strict=True)})
    return Federation(regions, tuple(chosen), weights)
