"""Measure hotspot topics on messages.csv: clusters against ``dup_group``, and the top clusters to read.

    python -m bench.stats.eval_topics --data ../shared/data/messages.csv [--similarity 0.3] [--days 30]

The messages are cut into windows of ``--days`` by time and, within a window, by the pseudonymised
city of the first place the text names (A市, B市, …; the data's place names are replaced, so that stands in for
a region), and each (city, window) is clustered as ``topics.find_topics`` clusters a region's
window. Against ``dup_group`` (identical title and body) it reports pairwise precision and recall,
the adjusted Rand index, and the precision counting ≥ 80 % alike texts too; topics are meant to be
wider than duplicates, so precision against ``dup_group`` is low by design and recall is what it
checks. Among labelled rows it reports category purity (share of same-cluster pairs with the same
category). Then the largest clusters with their label, top terms and a few titles, to be read.
"""

from __future__ import annotations

import argparse
import re
import time
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path

from sklearn.metrics import adjusted_rand_score

from bench.intake.eval_dedup import pairs_of_groups, read_rows, score, textual_precision
from services.stats.hotspot import keywords
from services.stats.topics import TopicRules, cluster, vectorise

_PLACE = re.compile(r"([A-Z])\d{0,2}[市县区]")


def city_of(text: str) -> str:
    """The pseudonymised city of the first place the text names: A市, A5区 and A7县 are all in A市
    ("" when it names none)."""
    found = _PLACE.search(text)
    return f"{found.group(1)}市" if found else ""


def windows(rows: Sequence[dict[str, str]], days: int) -> dict[tuple[str, int], list[int]]:
    """Row indices per (city, window number), windows of ``days`` counted from the first message."""
    times = [datetime.strptime(r["time"], "%Y-%m-%d %H:%M:%S") for r in rows]
    start = min(times)
    out: dict[tuple[str, int], list[int]] = defaultdict(list)
    for index, (row, at) in enumerate(zip(rows, times, strict=True)):
        out[(city_of(f"{row['title']}\n{row['body']}"), (at - start) // timedelta(days=days))].append(index)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="path to messages.csv")
    parser.add_argument("--similarity", type=float, default=TopicRules().similarity, help="cut of the clustering")
    parser.add_argument("--days", type=int, default=30, help="window length in days")
    parser.add_argument("--top", type=int, default=15, help="largest clusters to print")
    args = parser.parse_args(argv)
    if not args.data.exists():
        parser.error(f"{args.data} does not exist (messages.csv is not shipped with the repository)")

    rows = read_rows(args.data)
    texts = [f"{row['title']}\n{row['body']}" for row in rows]
    started = time.perf_counter()
    label = [-1] * len(rows)
    clusters: list[tuple[tuple[str, int], list[int]]] = []
    for key, members in sorted(windows(rows, args.days).items()):
        for group in cluster(vectorise([texts[i] for i in members])[0], args.similarity):
            for i in group:
                label[members[i]] = len(clusters)
            clusters.append((key, [members[i] for i in group]))
    elapsed = time.perf_counter() - started

    true = pairs_of_groups([row["dup_group"] for row in rows])
    predicted = pairs_of_groups([str(n) for n in label])
    reference = [row["dup_group"] or f"row{i}" for i, row in enumerate(rows)]
    sizes = sorted((len(m) for _, m in clusters), reverse=True)
    in_topics = sum(s for s in sizes if s >= TopicRules().min_cases)
    print(
        f"rows {len(rows)}, {len(windows(rows, args.days))} (city, {args.days}-day window) groups, "
        f"similarity {args.similarity}, clustered in {elapsed:.1f} s"
    )
    print(
        f"clusters {len(clusters)}, of ≥ {TopicRules().min_cases} cases {sum(1 for s in sizes if s >= 3)} "
        f"holding {in_topics} rows ({in_topics / len(rows):.1%}); largest {sizes[:10]}"
    )
    textual = textual_precision(predicted, true, texts)
    print(score(predicted, true).line("clusters vs dup_group"), f"textual {textual:.4f}")
    print(f"adjusted Rand index vs dup_group {adjusted_rand_score(reference, label):.4f}")
    labelled = [(i, j) for i, j in predicted if rows[i]["category"] and rows[j]["category"]]
    same = sum(1 for i, j in labelled if rows[i]["category"] == rows[j]["category"])
    print(
        f"category purity: {same} of {len(labelled)} same-cluster labelled pairs share the category "
        f"({same / len(labelled) if labelled else 1.0:.4f})"
    )
    print(f"top {args.top} clusters:")
    for (city, _window), members in sorted(clusters, key=lambda c: -len(c[1]))[: args.top]:
        first = min(rows[i]["time"] for i in members)[:10]
        last = max(rows[i]["time"] for i in members)[:10]
        words = " ".join(keywords([texts[i] for i in members], 5))
        print(f"  {len(members):>3} cases  {city or '?'} {first}…{last}  [{words}]")
        for i in members[:3]:
            print(f"        {rows[i]['title'][:50]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
