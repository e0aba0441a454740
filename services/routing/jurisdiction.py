"""Jurisdiction (属地管理、分级负责、归口办理): where a case goes from this node, by region and category.

A node's dispatch catalogue (派单目录) is a YAML file named after the node,
``services/routing/catalogues/<node>.yaml``::

    node: "511100"
    units:                                   # in priority order for a category
      - {id: lsj-zjj, name: 乐山市住房和城乡建设局, categories: [城乡建设]}
    default_unit: lsj-xfj                    # optional: anything no unit claims
    rules:                                   # optional, first match wins, before the units' categories
      - {category: 城乡建设, region_prefix: "511102", unit: lsj-zjj}

Nodes without a file (most of Sichuan's 183 counties at first) use ``catalogues/default.yaml``, a
template with ``{node}`` and ``{region}`` placeholders rendered with the node's code and region name
(one unit per category, e.g. 沙湾区住房和城乡建设局): every node can route on day one, and an
operator replaces the template by a real file when the county's unit list is agreed.

``decide`` applies 属地管理 first: a matter located below this node is handed down to the direct
child toward it (province → city → county), and only a matter of the node's own region is
assigned to one of its units.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from services.common.regions import RegionTree
from services.routing.domain.timelimits import CATEGORIES

__all__ = [
    "CATEGORIES",
    "AssignUnit",
    "CatalogueError",
    "Decision",
    "DispatchCatalogue",
    "DispatchRule",
    "HandOff",
    "ManualQueue",
    "Unit",
    "decide",
    "default_catalogue",
    "load_catalogue",
]


class CatalogueError(ValueError):
    """A dispatch catalogue is invalid; the message names the file and the key path."""

    def __init__(self, source: str, key: str, reason: str) -> None:
        super().__init__(f"{source}: {key}: {reason}")
        self.source = source
        self.key = key
        self.reason = reason


@dataclass(frozen=True)
class Unit:
    id: str
    name: str
    categories: tuple[str, ...]


@dataclass(frozen=True)
class DispatchRule:
    category: str
    unit: str
    region_prefix: str | None = None

    def matches(self, category: str, region_code: str) -> bool:
        return self.category == category and (self.region_prefix is None or region_code.startswith(self.region_prefix))


@dataclass(frozen=True)
class HandOff:
    """交办 down to the direct child node toward the case's region."""

    to_node: str


@dataclass(frozen=True)
class AssignUnit:
    unit_id: str


@dataclass(frozen=True)
class ManualQueue:
    """No rule decides: a clerk routes it by hand (人工分派)."""

    reason: str


Decision = HandOff | AssignUnit | ManualQueue


def _significant(node: str) -> str:
    # 510000 → "51", 511100 → "5111", 511102 → "511102": the digits every code below the node shares.
    code = node
    while code.endswith("00") and len(code) > 2:
        code = code[:-2]
    return code


def _text(value: Any, source: str, key: str, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise CatalogueError(source, key, f"{what} must be a non-empty string, got {value!r}")
    return value.strip()


def _code(value: Any, source: str, key: str) -> str:
    # YAML reads an unquoted 510000 as an int; a region code is still what was meant.
    if isinstance(value, int) and not isinstance(value, bool):
        value = f"{value:06d}"
    if not isinstance(value, str) or not value.isdigit():
        raise CatalogueError(source, key, f"expected a region code of digits, got {value!r}")
    return value


def _category(value: Any, source: str, key: str) -> str:
    if value not in CATEGORIES:
        raise CatalogueError(source, key, f"unknown category {value!r} (known: {', '.join(CATEGORIES)})")
    return str(value)


@dataclass(frozen=True)
class DispatchCatalogue:
    """A node's units and routing rules, validated when loaded."""

    node: str
    units: Mapping[str, Unit]
    rules: tuple[DispatchRule, ...] = ()
    default_unit: str | None = None
    source: str = "catalogue"
    by_category: Mapping[str, tuple[str, ...]] = field(default_factory=dict, compare=False)

    @property
    def label(self) -> str:
        """The catalogue as a case's history names it: which node's, never the server's file path
        (``source`` is for the operator starting the service)."""
        return f"{self.node} ({'default' if 'rendered for' in self.source else 'own'} catalogue)"

    @classmethod
    def from_dict(cls, raw: Any, *, source: str = "catalogue", node: str | None = None) -> DispatchCatalogue:
        """Validate and build; ``node`` (from the file name) must agree with the file's ``node``."""
        if not isinstance(raw, Mapping):
            raise CatalogueError(source, "(top level)", "expected a mapping with node, units, rules")
        unknown = set(raw) - {"node", "units", "rules", "default_unit"}
        if unknown:
            raise CatalogueError(source, sorted(map(str, unknown))[0], "unknown key")
        own = _code(raw.get("node"), source, "node")
        if len(own) != 6:
            raise CatalogueError(source, "node", f"expected a 6-digit region code, got {own!r}")
        if node is not None and own != node:
            raise CatalogueError(source, "node", f"file is for node {node} but says {own}")

        raw_units = raw.get("units")
        if not isinstance(raw_units, list) or not raw_units:
            raise CatalogueError(source, "units", "expected a non-empty list of units")
        units: dict[str, Unit] = {}
        for i, item in enumerate(raw_units):
            key = f"units[{i}]"
            if not isinstance(item, Mapping):
                raise CatalogueError(source, key, "expected {id, name, categories}")
            extra = set(item) - {"id", "name", "categories"}
            if extra:
                raise CatalogueError(source, f"{key}.{sorted(map(str, extra))[0]}", "unknown key")
            unit_id = _text(item.get("id"), source, f"{key}.id", "a unit id")
            if unit_id in units:
                raise CatalogueError(source, f"{key}.id", f"duplicate unit id {unit_id!r}")
            name = _text(item.get("name"), source, f"{key}.name", "a unit name")
            raw_cats = item.get("categories", [])
            if not isinstance(raw_cats, list):
                raise CatalogueError(source, f"{key}.categories", "expected a list of categories")
            cats = tuple(_category(c, source, f"{key}.categories[{j}]") for j, c in enumerate(raw_cats))
            if len(set(cats)) != len(cats):
                raise CatalogueError(source, f"{key}.categories", "a category is listed twice")
            units[unit_id] = Unit(unit_id, name, cats)

        def known_unit(value: Any, key: str) -> str:
            unit_id = _text(value, source, key, "a unit id")
            if unit_id not in units:
                raise CatalogueError(source, key, f"unknown unit {unit_id!r} (not in units)")
            return unit_id

        default_unit = raw.get("default_unit")
        if default_unit is not None:
            default_unit = known_unit(default_unit, "default_unit")

        raw_rules = raw.get("rules") or []
        if not isinstance(raw_rules, list):
            raise CatalogueError(source, "rules", "expected a list of rules")
        rules: list[DispatchRule] = []
        for i, item in enumerate(raw_rules):
            key = f"rules[{i}]"
            if not isinstance(item, Mapping):
                raise CatalogueError(source, key, "expected {category, unit, region_prefix?}")
            extra = set(item) - {"category", "unit", "region_prefix"}
            if extra:
                raise CatalogueError(source, f"{key}.{sorted(map(str, extra))[0]}", "unknown key")
            category = _category(item.get("category"), source, f"{key}.category")
            unit_id = known_unit(item.get("unit"), f"{key}.unit")
            prefix = item.get("region_prefix")
            if prefix is not None:
                prefix = _code(prefix, source, f"{key}.region_prefix")
                if not prefix.startswith(_significant(own)):
                    raise CatalogueError(source, f"{key}.region_prefix", f"{prefix} is not inside node {own}'s region")
            rules.append(DispatchRule(category, unit_id, prefix))

        by_category: dict[str, list[str]] = {}
        for unit in units.values():
            for cat in unit.categories:
                by_category.setdefault(cat, []).append(unit.id)
        return cls(
            node=own,
            units=units,
            rules=tuple(rules),
            default_unit=default_unit,
            source=source,
            by_category={k: tuple(v) for k, v in by_category.items()},
        )

    @classmethod
    def load(cls, path: str | Path) -> DispatchCatalogue:
        path = Path(path)
        source = str(path)
        try:
            raw = yaml.safe_load(path.read_text("utf-8"))
        except yaml.YAMLError as exc:
            raise CatalogueError(source, "(file)", f"cannot parse YAML: {exc}") from None
        node = path.stem if path.stem.isdigit() else None
        return cls.from_dict(raw, source=source, node=node)

    def unit_for(self, category: str, region_code: str) -> str | None:
        """Rules in file order, then the first unit claiming the category, then the default unit."""
        for rule in self.rules:
            if rule.matches(category, region_code):
                return rule.unit
        claimed = self.by_category.get(category)
        if claimed:
            return claimed[0]
        return self.default_unit

    def uncovered_categories(self) -> list[str]:
        """Categories that would land in the manual queue at this node (for a start-up warning)."""
        if self.default_unit is not None:
            return []
        covered = set(self.by_category) | {r.category for r in self.rules if r.region_prefix is None}
        return [c for c in CATEGORIES if c not in covered]


def _county_code(case_region: str) -> str:
    # Township (9-digit) and village (12-digit) codes lie inside the county named by their first 6 digits.
    if len(case_region) > 6 and case_region.isdigit():
        return case_region[:6]
    return case_region


def decide(
    case_region: str | None,
    category: str | None,
    node: str,
    tree: RegionTree,
    catalogue: DispatchCatalogue,
) -> Decision:
    """Hand the case down toward its region, assign it to a unit of this node, or queue it for a clerk."""
    if catalogue.node != node:
        raise ValueError(f"catalogue {catalogue.source} is for node {catalogue.node}, not {node}")
    region = (case_region or "").strip()
    if not region:
        return ManualQueue("the case has no region: a clerk must locate it")
    code = _county_code(region)
    if code not in tree:
        return ManualQueue(f"unknown region code {region}")
    if not tree.contains(node, code):
        return ManualQueue(
            f"region {region} ({tree.display_name(code)}) is outside node {node}'s area: "
            "forward it (转送) or escalate it (上报) by hand"
        )
    child = tree.child_toward(node, code)
    if child is not None:
        return HandOff(child)
    if not category:
        return ManualQueue("the case has no category: a clerk must classify it")
    if category not in CATEGORIES:
        return ManualQueue(f"unknown category {category!r}")
    unit = catalogue.unit_for(category, region)
    if unit is None:
        return ManualQueue(f"no unit for category {category} in {catalogue.label}")
    return AssignUnit(unit)


def _render(value: Any, names: Mapping[str, str]) -> Any:
    if isinstance(value, str):
        for placeholder, text in names.items():
            value = value.replace("{" + placeholder + "}", text)
        return value
    if isinstance(value, list):
        return [_render(v, names) for v in value]
    if isinstance(value, Mapping):
        return {k: _render(v, names) for k, v in value.items()}
    return value


def _catalogue_dir() -> Path:
    return Path(str(resources.files("services.routing") / "catalogues"))


def default_catalogue(node: str, tree: RegionTree, template: str | Path | None = None) -> DispatchCatalogue:
    """The fallback catalogue for a node without its own file, rendered from ``default.yaml``."""
    path = Path(template) if template is not None else _catalogue_dir() / "default.yaml"
    source = f"{path} (rendered for {node})"
    try:
        raw = yaml.safe_load(path.read_text("utf-8"))
    except yaml.YAMLError as exc:
        raise CatalogueError(str(path), "(file)", f"cannot parse YAML: {exc}") from None
    rendered = _render(raw, {"node": node, "region": tree.get(node).name})
    return DispatchCatalogue.from_dict(rendered, source=source, node=node)


def load_catalogue(node: str, tree: RegionTree, directory: str | Path | None = None) -> DispatchCatalogue:
    """``<directory>/<node>.yaml`` if there is one, else the default template rendered for the node."""
    folder = Path(directory) if directory is not None else _catalogue_dir()
    path = folder / f"{node}.yaml"
    if path.exists():
        return DispatchCatalogue.load(path)
    template = folder / "default.yaml"
    return default_catalogue(node, tree, template if template.exists() else None)
