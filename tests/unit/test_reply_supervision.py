"""The reply-supervision bench: which replies name a decisive department, and that pseudo-labelled
messages never train a fold that scores their twin (issue 23, docs/intake.md)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from bench.intake.reply_supervision import Data, department_category, read_data, score_run
from services.intake.classifier import CATEGORIES, model_text

_COLUMNS = ["id", "title", "body", "category", "reply", "dup_group"]


def test_a_reply_labels_its_message_only_when_its_departments_are_decisive() -> None:
    assert department_category("市住建局高度重视……经市住建局调查核实") == "城乡建设"
    assert department_category("经市住建局调查") is None  # one mention is not enough
    assert department_category("教育局会同人社局、住建局调查") is None  # no category has 80 % of the mentions
    # The labels' convention, not the department's letterhead: bus lines under 城乡建设, 医保 under 劳动和社会保障.
    assert department_category("市公交集团答复：该公交线路将调整") == "城乡建设"
    assert department_category("市医保局答复：医保报销比例……") == "劳动和社会保障"


def _write(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=_COLUMNS)
        writer.writeheader()
        writer.writerows({column: row.get(column, "") for column in _COLUMNS} for row in rows)
    return path


def test_an_answered_message_with_a_labelled_twin_never_joins_the_pool(tmp_path: Path) -> None:
    reply = "市环保局答复：市环保局已派员查处"
    data = read_data(
        _write(
            tmp_path / "messages.csv",
            [
                {"id": "1", "title": "工厂排污", "body": "河水发黑", "category": "环境保护"},
                {"id": "2", "title": "工厂排污", "body": "河水 发黑", "reply": reply, "dup_group": "1"},
                {"id": "3", "title": "工厂排污", "body": "又改了几个字", "reply": reply},  # same title
                {"id": "4", "title": "夜间噪音", "body": "工地通宵施工"},  # not answered
                {"id": "5", "title": "夜间噪音扰民", "body": "工地通宵施工", "reply": reply},
            ],
        )
    )
    assert data.labels == ["环境保护"]
    assert data.pool == [(model_text("夜间噪音扰民", "工地通宵施工"), reply)]


def test_only_real_labelled_rows_are_scored_and_a_scored_row_never_trains_its_fold() -> None:
    texts = [model_text(f"{category}{i}", f"正文{i}") for category in CATEGORIES for i in range(5)]
    labels = [category for category in CATEGORIES for _ in range(5)]
    seen: list[list[str]] = []

    class Oracle:
        def predict(self, rows: list[str]) -> list[str]:
            return [labels[texts.index(row)] for row in rows]

    def spy(train_texts: list[str], train_labels: list[str], seed: int) -> Any:
        seen.append(train_texts)
        return Oracle()

    accuracy, macro_f1 = score_run(Data(texts, labels, pool=[]), spy, fold_seed=42, seed=0)
    assert (accuracy, macro_f1) == (1.0, 1.0) and len(seen) == 5
    # Each row is left out of exactly one fold's training rows: the fold that scores it.
    assert all(sum(text not in rows for rows in seen) == 1 for text in texts)
