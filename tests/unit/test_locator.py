from __future__ import annotations

import pytest

from services.common.regions import RegionTree
from services.intake.locator import Location, Locator, locate, locate_lines


@pytest.fixture(scope="module")
def locator() -> Locator:
    return Locator(RegionTree.load())


@pytest.mark.parametrize("node", ["510000", "511100", "511102"])
def test_full_address_resolves_to_the_county(locator: Locator, node: str) -> None:
    found = locator.locate("乐山市市中区嘉州大道某小区门口噪音扰民", node)
    assert found == Location(code="511102", candidates=["511102"], matched="乐山市市中区")


@pytest.mark.parametrize("text", ["内江市市中区", "内江市中区"])
def test_city_context_picks_the_right_same_named_county(locator: Locator, text: str) -> None:
    assert locator.locate(text, "510000").code == "511002"


def test_lone_same_named_county_is_settled_by_the_node_subtree(locator: Locator) -> None:
    assert locator.locate("市中区", "511100").code == "511102"
    assert locator.locate("市中区", "511000").code == "511002"
    at_province = locator.locate("市中区", "510000")
    assert at_province.code is None
    assert at_province.ambiguous
    assert at_province.candidates == ["511002", "511102"]


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("郫县犀浦镇某小区", "510117"),
        ("宜宾县", "511504"),
        ("达县", "511703"),
        ("凉山州西昌市", "513401"),
        ("凉山州", "513400"),
        ("阿坝州", "513200"),
        ("甘孜州", "513300"),
        ("峨眉山景区门票太贵", "511181"),
        ("我是南充人", "511300"),
        ("宜宾市高县", "511525"),
        ("四川省乐山市沙湾区", "511111"),
    ],
)
def test_short_former_and_prefecture_names(locator: Locator, text: str, code: str) -> None:
    assert locator.locate(text, "510000").code == code


@pytest.mark.parametrize("text", ["提高县城的绿化", "城市中区域", "快乐山庄", "推广元素", "我在南部工作", "没有地名"])
def test_words_that_contain_names_are_not_places(locator: Locator, text: str) -> None:
    assert locator.locate(text, "510000") == Location(code=None)


def test_a_suffix_word_falls_back_to_the_short_name(locator: Locator) -> None:
    assert locator.locate("乐山市民反映", "510000").code == "511100"
    assert locator.locate("乐山市中医院", "510000").code == "511100"


def test_place_outside_the_node_subtree_gives_no_code(locator: Locator) -> None:
    outside = locator.locate("成都市锦江区春熙路", "511100")
    assert outside.code is None
    assert outside.candidates == ["510104"]
    assert locator.locate("成都市市中区", "511100").code is None


def test_locate_lines_gives_a_code_or_empty_string_per_line() -> None:
    tree = RegionTree.load()
    lines = ["乐山市市中区嘉州大道", "市中区", "提高县城的绿化"]
    assert locate_lines(lines, "510000", tree) == ["511102", "", ""]
    assert locate("沙湾区", "511100", tree).code == "511111"
