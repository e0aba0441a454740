"""The region tree (GB/T 2260): which regions a node covers and how tiers nest."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from importlib import resources
from pathlib import Path


class Tier(str, Enum):
    NATIONAL = "national"
    PROVINCE = "province"
    CITY = "city"
    COUNTY = "county"


@dataclass(frozen=True)
class Region:
    code: str
    name: str
    tier: Tier
    parent_code: str | None


@dataclass
class RegionTree:
    """All known regions, indexed by code, with children lists for subtree walks."""

    regions: dict[str, Region]
    children: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def from_rows(cls, rows: Iterable[Region]) -> RegionTree:
        regions = {r.code: r for r in rows}
        children: dict[str, list[str]] = {code: [] for code in regions}
        for region in regions.values():
            if region.parent_code:
                if region.parent_code not in regions:
                    raise ValueError(f"region {region.code} names unknown parent {region.parent_code}")
                children[region.parent_code].append(region.code)
        for kids in children.values():
            kids.sort()
        return cls(regions=regions, children=children)

    @classmethod
    def load(cls, path: Path | None = None) -> RegionTree:
        """Load the CSV (code,name,level,parent_code); the bundled Sichuan list by default."""
        if path is None:
            text = (resources.files("services.common") / "data" / "regions_sichuan.csv").read_text("utf-8")
        else:
            text = Path(path).read_text("utf-8")
        rows = [
            Region(
                code=row["code"],
                name=row["name"],
                tier=Tier(row["level"]),
                parent_code=row["parent_code"] or None,
            )
            for row in csv.DictReader(text.splitlines())
        ]
        return cls.from_rows(rows)

    def __contains__(self, code: object) -> bool:
        return code in self.regions

    def get(self, code: str) -> Region:
        try:
            return self.regions[code]
        except KeyError:
            raise KeyError(f"unknown region code {code}") from None

    def parent(self, code: str) -> str | None:
        return self.get(code).parent_code

    def ancestors(self, code: str) -> list[str]:
        """From the parent up to the root, nearest first."""
        out: list[str] = []
        parent = self.get(code).parent_code
        while parent:
            out.append(parent)
            parent = self.regions[parent].parent_code
        return out

    def path(self, code: str) -> list[str]:
        """From the root down to ``code`` inclusive."""
        return [*reversed(self.ancestors(code)), code]

    def contains(self, ancestor: str, code: str) -> bool:
        """True when ``code`` is ``ancestor`` itself or lies below it."""
        if code not in self.regions:
            return False
        return code == ancestor or ancestor in self.ancestors(code)

    def subtree(self, code: str) -> Iterator[str]:
        """``code`` and every region below it, depth first."""
        stack = [code]
        while stack:
            current = stack.pop()
            yield current
            stack.extend(reversed(self.children.get(current, [])))

    def child_toward(self, node: str, code: str) -> str | None:
        """The direct child of ``node`` on the way down to ``code`` (None if code is node or outside)."""
        if code == node or not self.contains(node, code):
            return None
        path = self.path(code)
        return path[path.index(node) + 1]

    def display_name(self, code: str) -> str:
        """Full name along the path, for example 四川省乐山市市中区 (市中区 exists in several cities)."""
        return "".join(self.regions[c].name for c in self.path(code))


# The embedded federation's nodes (`lianxin up`, DESIGN §9): 四川省; 乐山市 with 市中区 and 沙湾区;
# 成都市 with 锦江区. Parents come first.
DEFAULT_TOPOLOGY: tuple[tuple[str, str | None], ...] = (
    ("510000", None),
    ("511100", "510000"),
    ("511102", "511100"),
    ("511111", "511100"),
    ("510100", "510000"),
    ("510104", "510100"),
)
