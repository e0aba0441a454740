"""Hotspot topics on real messages: one month of one city of messages.csv, as a hotspot's window.

The window (A市, 30 days from the 103rd after the first message: mid-August to mid-September 2019)
holds 370 messages, among them the 伊景园滨河苑 parking-space complaints, one of the hot topics the
TipDM 2020 task names, and 24 rows of identical-text duplicates (`dup_group`).
"""

from __future__ import annotations

import itertools
from datetime import datetime
from pathlib import Path

from bench.intake.eval_dedup import read_rows
from bench.stats.eval_topics import windows
from services.common.timeutil import CHINA
from services.stats.topics import TopicCase, TopicRules, cluster, find_topics, vectorise

WINDOW = ("A市", 103)


def test_a_month_of_one_city_yields_its_hot_topic_and_keeps_duplicates_together(messages_csv: Path) -> None:
    rows = read_rows(messages_csv)
    members = windows(rows, 30)[WINDOW]
    assert len(members) > 300
    texts = [f"{rows[i]['title']}\n{rows[i]['body']}" for i in members]

    # Every pair of identical messages of the window lands in one cluster.
    groups = cluster(vectorise(texts)[0], TopicRules().similarity)
    where = {index: n for n, group in enumerate(groups) for index in group}
    by_dup: dict[str, list[int]] = {}
    for index, row_index in enumerate(members):
        if rows[row_index]["dup_group"]:
            by_dup.setdefault(rows[row_index]["dup_group"], []).append(index)
    pairs = [pair for same in by_dup.values() for pair in itertools.combinations(same, 2)]
    assert len(pairs) >= 10
    assert all(where[a] == where[b] for a, b in pairs)

    # The largest topic is the parking spaces sold bundled at 伊景园滨河苑, named as such.
    cases = [
        TopicCase(rows[i]["id"], text, datetime.strptime(rows[i]["time"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=CHINA))
        for i, text in zip(members, texts, strict=True)
    ]
    topics = find_topics(cases)
    assert topics and topics[0].count >= 15
    top = topics[0]
    about = {rows[i]["id"] for i in members if "滨河苑" in rows[i]["title"] + rows[i]["body"]}
    assert len(set(top.case_ids) & about) >= 0.9 * top.count  # nearly all of it is that matter
    assert "车位" in top.label or "滨河苑" in top.label or "伊景园" in top.label
    assert "车位" in top.top_terms
    # The rest of the month is not swallowed: no topic holds a tenth of the window.
    assert all(t.count < len(members) / 10 for t in topics)
