from __future__ import annotations

from pathlib import Path

import pytest

from bench.intake.eval_dedup import pairs_of_groups, read_rows, score
from services.intake.dedup import (
    DEFAULT_MAX_DISTANCE,
    MAX_SEARCH_DISTANCE,
    NearDuplicateIndex,
    fingerprint,
    hamming,
    simhash,
    submission_text,
)

NOISE = (
    "乐山市市中区嘉州大道某小区门口的工地每天晚上十点以后还在施工，搅拌机和渣土车的噪音非常大，"
    "严重影响周边居民休息，老人和孩子都睡不好觉。我们多次向物业和施工方反映，都没有任何改变。"
    "请有关部门尽快调查处理，督促施工单位遵守夜间施工的规定，还居民一个安静的环境。"
)
BUS = "12路公交车改线后取消了我们小区门口的站点，公交班次也少了，出行很不方便，希望恢复原来的线路和站点。"


def test_identical_texts_have_distance_zero_and_the_same_fingerprint() -> None:
    assert hamming(simhash(NOISE), simhash(NOISE)) == 0
    assert fingerprint(NOISE) == fingerprint(NOISE.replace("，", ", ") + "\n")


def test_one_word_edit_is_near_and_unrelated_text_is_far() -> None:
    edited = NOISE.replace("十点", "十一点")
    assert fingerprint(edited) != fingerprint(NOISE)
    assert hamming(simhash(NOISE), simhash(edited)) <= DEFAULT_MAX_DISTANCE
    assert hamming(simhash(NOISE), simhash(BUS)) > 16


def test_index_finds_near_neighbours_only() -> None:
    index = NearDuplicateIndex()
    index.add("511102-20261122-000001", NOISE)
    index.add("511102-20261122-000002", BUS)
    hits = index.query(NOISE.replace("十点", "十一点"))
    assert [case_id for case_id, _ in hits] == ["511102-20261122-000001"]
    assert index.query(NOISE, max_distance=0) == [("511102-20261122-000001", 0)]
    index.remove("511102-20261122-000001")
    assert index.query(NOISE) == []
    with pytest.raises(ValueError):
        index.query(NOISE, max_distance=MAX_SEARCH_DISTANCE + 1)


def test_index_agrees_with_brute_force_within_the_search_distance() -> None:
    base = simhash(NOISE)
    index = NearDuplicateIndex()
    for flips in range(12):
        index.add_hash(f"c{flips}", base ^ ((1 << flips) - 1) << (flips * 3 % 50))
    found = {case_id for case_id, _ in index.query_hash(base, MAX_SEARCH_DISTANCE)}
    expected = {f"c{flips}" for flips in range(12) if flips <= MAX_SEARCH_DISTANCE}
    assert found == expected


@pytest.mark.slow
def test_exact_fingerprint_matches_dup_group(messages_csv: Path) -> None:
    rows = read_rows(messages_csv)
    true = pairs_of_groups([row["dup_group"] for row in rows])
    exact = pairs_of_groups([fingerprint(submission_text(row["title"], row["body"])) for row in rows])
    result = score(exact, true)
    assert result.precision >= 0.95  # measured 0.971
    assert result.recall == 1.0
