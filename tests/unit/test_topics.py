"""Hotspot topics: similar texts of a window form a named topic with its cases, growth and units."""

from __future__ import annotations

from datetime import datetime, timedelta

from services.common.timeutil import CHINA
from services.stats.topics import TopicCase, TopicRules, find_topics, topic_text

NOW = datetime(2026, 11, 20, 12, tzinfo=CHINA)

NOISE = [
    ("锦绣花园小区旁工地夜间施工噪音扰民", "锦绣花园小区旁边的工地每天晚上十一点以后还在打桩施工，噪音太大。"),
    ("锦绣花园工地夜间施工噪音大", "锦绣花园小区附近工地夜间施工，打桩声音太大，老人小孩晚上睡不着，请管一管。"),
    ("投诉锦绣花园小区旁工地夜里施工", "锦绣花园小区旁工地夜里施工到凌晨，噪音扰民严重，多次反映无果。"),
    ("锦绣花园附近工地夜间打桩扰民", "锦绣花园小区旁的工地夜间打桩施工噪音扰民，希望相关部门查处。"),
]
OTHERS = [
    ("学校乱收补课费", "某中学老师在校外办补课班，强制学生参加并收取高额费用。"),
    ("医院收费不合理", "在县医院看病，检查费用明显高于标准，要求退还多收的费用。"),
    ("公交车班次太少", "城西到火车站的公交车一小时才一班，上下班高峰等不到车。"),
    ("拖欠农民工工资", "某建筑公司拖欠我们二十多名农民工半年工资，至今未付。"),
]


def _cases(
    pairs: list[tuple[str, str]], prefix: str, start: datetime, units: list[str] | None = None
) -> list[TopicCase]:
    return [
        TopicCase(f"{prefix}{i}", f"{title}\n{body}", start + timedelta(hours=i), (units or [""] * len(pairs))[i])
        for i, (title, body) in enumerate(pairs)
    ]


def test_alike_texts_become_one_topic_named_by_its_most_central_case() -> None:
    window = _cases(NOISE, "n", NOW - timedelta(hours=20), units=["住建局", "城管局", "住建局", ""])
    window += _cases(OTHERS, "o", NOW - timedelta(hours=20))
    topics = find_topics(window, rules=TopicRules())
    assert len(topics) == 1
    topic = topics[0]
    assert topic.count == 4 and topic.case_ids == ["n3", "n2", "n1", "n0"]  # newest first, only the noise cases
    assert topic.label in [title for title, _ in NOISE]
    assert topic.units == ["住建局", "城管局"]  # most cases first; an unassigned case names none
    assert topic.previous_count == 0 and topic.growth == 4
    assert topic.top_terms  # without a terms function: the heaviest character n-grams
    assert any("锦绣" in term or "施工" in term or "工地" in term for term in topic.top_terms)


def test_growth_counts_the_alike_cases_of_the_window_before() -> None:
    window = _cases(NOISE, "n", NOW - timedelta(hours=20))
    earlier = _cases(NOISE[:1], "e", NOW - timedelta(hours=40)) + _cases(OTHERS, "p", NOW - timedelta(hours=40))
    [topic] = find_topics(window, earlier, rules=TopicRules())
    assert (topic.count, topic.previous_count, topic.growth) == (4, 1, 3)


def test_fewer_alike_cases_than_the_minimum_are_no_topic() -> None:
    window = _cases(NOISE[:2], "n", NOW) + _cases(OTHERS, "o", NOW)
    assert find_topics(window, rules=TopicRules(min_cases=3)) == []
    assert find_topics(window[:2], rules=TopicRules()) == []  # too few cases to look at all


def test_numbers_and_masked_data_do_not_make_texts_alike() -> None:
    # Same phone, same date, same amount, different matters: not a topic.
    shared = "电话13912345678，2026年11月20日，金额10000元。"
    window = [TopicCase(f"c{i}", f"{title}\n{shared}{body}", NOW, "") for i, (title, body) in enumerate(OTHERS)]
    assert find_topics(window, rules=TopicRules(min_cases=2)) == []
    assert "1391" not in topic_text(f"标题\n{shared}")


def test_empty_texts_and_a_terms_function() -> None:
    assert find_topics([TopicCase(f"c{i}", "", NOW, "") for i in range(5)]) == []
    window = _cases(NOISE, "n", NOW)
    [topic] = find_topics(window, terms=lambda texts, n: [f"{len(texts)} texts", str(n)])
    assert topic.top_terms == ["4 texts", "5"]


def test_the_newest_cases_up_to_the_cap_are_clustered() -> None:
    window = _cases(NOISE, "n", NOW - timedelta(hours=20)) + _cases(OTHERS, "o", NOW)
    # The cap keeps the four newest (the other matters): no topic among them.
    assert find_topics(window, rules=TopicRules(max_cases=4)) == []


def test_the_bulletin_gives_a_topic_one_line_with_its_growth_and_units() -> None:
    from services.stats.bulletin_markdown import topic_line

    window = _cases(NOISE, "n", NOW, units=["住建局", "住建局", "城管局", ""])
    [topic] = find_topics(window, terms=lambda texts, n: ["噪音"])
    assert topic_line(topic) == f"{topic.label}（4 件，前一时段 0 件，变化 +4；承办单位 住建局、城管局；关键词 噪音）"
