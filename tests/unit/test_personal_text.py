"""Personal data inside free text: what is found, what is masked, and what is left alone."""

from __future__ import annotations

import pytest

from services.common.personal_text import find, is_id_number, luhn_valid, mask

PETITION = "我是赵大海，身份证511102198805051231，电话13700137000，请尽快处理。"


def kinds(text: str) -> list[str]:
    return [f.kind for f in find(text)]


def test_a_self_introduction_with_id_number_and_mobile_is_masked_and_the_rest_kept() -> None:
    masked = mask(PETITION)
    assert masked.text == "我是赵**，身份证511102********1231，电话*******7000，请尽快处理。"
    assert [f.kind for f in masked.found] == ["name", "id_number", "mobile"]
    for secret in ("赵大海", "511102198805051231", "13700137000"):
        assert secret not in masked.text


def test_an_id_number_needs_a_real_birth_date_and_the_right_check_character() -> None:
    assert is_id_number("511102198805051231")
    assert is_id_number("11010519491231002x")
    assert not is_id_number("511102198805051232")  # check character wrong
    assert not is_id_number("511102198813051231")  # month 13
    assert kinds("订单号511102198805051232已付款") == []


@pytest.mark.parametrize(
    "text",
    [
        "手机13700137000",
        "手机 137-0013-7000",
        "手机+86 137 0013 7000",
        "tel:008613700137000",
    ],
)
def test_mobile_numbers_are_found_in_their_usual_spellings(text: str) -> None:
    assert kinds(text) == ["mobile"]
    assert "0013" not in mask(text).text


@pytest.mark.parametrize("text", ["座机0833-2123456", "电话(028)12345678", "联系电话：08332123456", "028-12345678-801"])
def test_landline_numbers_with_an_area_code_are_found(text: str) -> None:
    assert kinds(text) == ["landline"]


def test_bank_card_numbers_are_found_only_when_the_luhn_check_passes() -> None:
    assert luhn_valid("6222021001123456789")
    assert kinds("工资卡6222021001123456789被冻结") == ["bank_card"]
    assert kinds("卡号 4111 1111 1111 1111") == ["bank_card"]
    assert mask("卡号 4111 1111 1111 1111").text == "卡号 **** **** **** 1111"
    assert kinds("工资卡6222021001123456788被冻结") == []


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("我叫曹正科，电话已提供", "曹正科"),
        ("本人李四，男，45岁", "李四"),
        ("姓名：欧阳明，住址不详", "欧阳明"),
        ("我的名字是王芳", "王芳"),
    ],
)
def test_self_introduced_names_are_found(text: str, name: str) -> None:
    found = find(text)
    assert [(f.kind, text[f.start : f.end]) for f in found] == [("name", name)]
    assert name not in mask(text).text


@pytest.mark.parametrize(
    "text",
    [
        "我是一名退休教师",
        "我是乐山市民",
        "本人于2019年购买了住房",
        "案件511102-20261206-000001已办结",
        "2019年12月23日征收社会抚养费94256元",
        "我是A7县的居民",
    ],
)
def test_ordinary_text_is_left_alone(text: str) -> None:
    assert mask(text).text == text and not mask(text).changed
