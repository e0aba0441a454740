"""Jurisdiction: hand-off down the tiers (属地管理), assignment by category (归口办理), the manual queue."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from services.common.regions import RegionTree
from services.routing.jurisdiction import (
    CATEGORIES,
    AssignUnit,
    CatalogueError,
    DispatchCatalogue,
    HandOff,
    ManualQueue,
    decide,
    default_catalogue,
    load_catalogue,
)

TREE = RegionTree.load()
SHIPPED = ["510000", "511100", "511102", "511111", "510100", "510104"]


def catalogue(node: str) -> DispatchCatalogue:
    return load_catalogue(node, TREE)


def test_province_hands_a_county_matter_down_to_its_city() -> None:
    assert decide("511102", "城乡建设", "510000", TREE, catalogue("510000")) == HandOff("511100")
    assert decide("510104", "交通运输", "510000", TREE, catalogue("510000")) == HandOff("510100")


def test_city_hands_it_down_to_the_county() -> None:
    assert decide("511102", "城乡建设", "511100", TREE, catalogue("511100")) == HandOff("511102")
    assert decide("511111", None, "511100", TREE, catalogue("511100")) == HandOff("511111")  # category later


def test_the_county_assigns_to_the_unit_for_the_category() -> None:
    cat = catalogue("511102")
    assert decide("511102", "城乡建设", "511102", TREE, cat) == AssignUnit("lszq-zjj")
    assert decide("511102", "环境保护", "511102", TREE, cat) == AssignUnit("lszq-sthjj")
    # A township code lies inside its county: still assigned here.
    assert decide("511102003", "交通运输", "511102", TREE, cat) == AssignUnit("lszq-jtj")


def test_every_shipped_catalogue_covers_all_eight_categories() -> None:
    for node in SHIPPED:
        cat = catalogue(node)
        assert cat.source.endswith(f"{node}.yaml")
        for category in CATEGORIES:
            covered = [u for u in cat.units.values() if category in u.categories]
            assert covered, f"{node} has no unit for {category}"
            assert isinstance(decide(node, category, node, TREE, cat), AssignUnit)


def test_city_level_matters_are_assigned_at_the_city_with_rules_first() -> None:
    cat = catalogue("511100")
    assert decide("511100", "商贸旅游", "511100", TREE, cat) == AssignUnit("lsj-wglj")  # rule beats unit order
    assert decide("511100", "卫生计生", "511100", TREE, cat) == AssignUnit("lsj-wjw")


def test_manual_queue_when_region_or_category_cannot_decide() -> None:
    county = catalogue("511102")
    no_region = decide(None, "城乡建设", "511102", TREE, county)
    assert isinstance(no_region, ManualQueue) and "no region" in no_region.reason
    outside = decide("510104", "城乡建设", "511102", TREE, county)  # 锦江区 is not in 市中区
    assert isinstance(outside, ManualQueue) and "outside node 511102" in outside.reason
    assert "四川省成都市锦江区" in outside.reason
    above = decide("511100", "城乡建设", "511102", TREE, county)  # a city matter reaching a county
    assert isinstance(above, ManualQueue) and "outside" in above.reason
    unknown = decide("999999", "城乡建设", "511102", TREE, county)
    assert isinstance(unknown, ManualQueue) and "unknown region" in unknown.reason
    no_category = decide("511102", None, "511102", TREE, county)
    assert isinstance(no_category, ManualQueue) and "no category" in no_category.reason
    bad_category = decide("511102", "天气", "511102", TREE, county)
    assert isinstance(bad_category, ManualQueue) and "unknown category" in bad_category.reason


def test_manual_queue_when_no_unit_takes_the_category() -> None:
    cat = DispatchCatalogue.from_dict(
        {
            "node": "511102",
            "units": [{"id": "zjj", "name": "市中区住房和城乡建设局", "categories": ["城乡建设"]}],
        }
    )
    assert decide("511102", "城乡建设", "511102", TREE, cat) == AssignUnit("zjj")
    missing = decide("511102", "教育文体", "511102", TREE, cat)
    assert isinstance(missing, ManualQueue) and "no unit for category 教育文体" in missing.reason
    assert len(cat.uncovered_categories()) == 7


def test_region_prefix_rules_route_townships_and_the_default_unit_catches_the_rest() -> None:
    cat = DispatchCatalogue.from_dict(
        {
            "node": "511102",
            "units": [
                {"id": "zjj", "name": "市中区住房和城乡建设局", "categories": ["城乡建设"]},
                {"id": "town", "name": "某镇人民政府", "categories": []},
                {"id": "xfj", "name": "市中区信访局", "categories": ["其他"]},
            ],
            "default_unit": "xfj",
            "rules": [{"category": "城乡建设", "region_prefix": "511102101", "unit": "town"}],
        }
    )
    assert decide("511102101203", "城乡建设", "511102", TREE, cat) == AssignUnit("town")
    assert decide("511102003", "城乡建设", "511102", TREE, cat) == AssignUnit("zjj")
    assert decide("511102", "卫生计生", "511102", TREE, cat) == AssignUnit("xfj")
    assert cat.uncovered_categories() == []


def test_nodes_without_a_file_get_one_unit_per_category_named_after_the_region() -> None:
    cat = catalogue("511112")  # 五通桥区 has no file
    assert cat.node == "511112" and "default.yaml" in cat.source
    names = {u.name for u in cat.units.values()}
    assert "五通桥区住房和城乡建设局" in names
    for category in CATEGORIES:
        assert isinstance(decide("511112", category, "511112", TREE, cat), AssignUnit)
    assert decide("511112", "城乡建设", "511112", TREE, cat) == AssignUnit("511112-zjj")
    assert default_catalogue("510000", TREE).units["510000-xfj"].name == "四川省信访局"


def test_a_catalogue_for_another_node_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="is for node 511102"):
        decide("511102", "城乡建设", "511100", TREE, catalogue("511102"))


UNIT = {"id": "zjj", "name": "市中区住房和城乡建设局", "categories": ["城乡建设"]}


@pytest.mark.parametrize(
    ("raw", "key", "reason"),
    [
        ({"node": "511102", "units": [UNIT, {**UNIT, "name": "重复"}]}, "units[1].id", "duplicate unit id"),
        (
            {"node": "511102", "units": [UNIT], "rules": [{"category": "城乡建设", "unit": "jtj"}]},
            "rules[0].unit",
            "unknown unit 'jtj'",
        ),
        (
            {"node": "511102", "units": [{**UNIT, "categories": ["城建"]}]},
            "units[0].categories[0]",
            "unknown category '城建'",
        ),
        (
            {"node": "511102", "units": [UNIT], "rules": [{"category": "环保", "unit": "zjj"}]},
            "rules[0].category",
            "unknown category",
        ),
        ({"node": "511102", "units": [UNIT], "default_unit": "nobody"}, "default_unit", "unknown unit"),
        ({"node": "511102", "units": [{**UNIT, "name": ""}]}, "units[0].name", "non-empty"),
        ({"node": "511102", "units": []}, "units", "non-empty list"),
        ({"node": "5111", "units": [UNIT]}, "node", "6-digit"),
        (
            {
                "node": "511102",
                "units": [UNIT],
                "rules": [{"category": "城乡建设", "unit": "zjj", "region_prefix": "511111"}],
            },
            "rules[0].region_prefix",
            "not inside node 511102",
        ),
        ({"node": "511102", "units": [{**UNIT, "phone": "x"}]}, "units[0].phone", "unknown key"),
        ({"node": "511102", "unit": [UNIT]}, "unit", "unknown key"),
    ],
)
def test_catalogue_validation_names_the_file_and_key_path(raw: dict[str, Any], key: str, reason: str) -> None:
    with pytest.raises(CatalogueError) as caught:
        DispatchCatalogue.from_dict(raw, source="catalogues/511102.yaml")
    assert caught.value.key == key
    assert str(caught.value).startswith(f"catalogues/511102.yaml: {key}: ")
    assert reason in str(caught.value)


def test_a_file_for_the_wrong_node_and_bad_yaml_are_caught_at_load(tmp_path: Path) -> None:
    wrong = tmp_path / "511111.yaml"
    wrong.write_text('node: "511102"\nunits: [{id: a, name: b, categories: [其他]}]\n', "utf-8")
    with pytest.raises(CatalogueError, match=r"511111\.yaml: node: file is for node 511111 but says 511102"):
        DispatchCatalogue.load(wrong)
    broken = tmp_path / "511102.yaml"
    broken.write_text("node: [unclosed\n", "utf-8")
    with pytest.raises(CatalogueError, match=r"511102\.yaml: \(file\): cannot parse YAML"):
        DispatchCatalogue.load(broken)
    # An unquoted code is read by YAML as an int; it still means the region.
    plain = tmp_path / "510104.yaml"
    plain.write_text("node: 510104\nunits: [{id: a, name: b, categories: [其他]}]\n", "utf-8")
    assert DispatchCatalogue.load(plain).node == "510104"
