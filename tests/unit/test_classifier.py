from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.intake.classifier import (
    CATEGORIES,
    OTHER,
    Classifier,
    choose_threshold,
    default_model_path,
    ensure_model,
    metrics_path,
    model_text,
    train_to_file,
)


def test_threshold_is_where_the_model_is_more_often_wrong_than_right() -> None:
    confidences = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
    correct = [False, False, True, False, True, True, True, True]
    # below 0.5: 1 of 4 right; below 0.6: 2 of 5 right; below 0.7: 3 of 6 right (not less than half)
    assert choose_threshold(confidences, correct) == 0.6
    assert choose_threshold([0.5, 0.9], [True, True]) == 0.0


def test_without_model_or_data_there_is_no_classifier(tmp_path: Path) -> None:
    assert ensure_model(tmp_path, None) is None
    assert ensure_model(tmp_path, tmp_path / "absent") is None


@pytest.mark.slow
def test_trained_model_reaches_held_out_accuracy(messages_csv: Path, tmp_path: Path) -> None:
    out = default_model_path(tmp_path)
    report = train_to_file(messages_csv, out, seed=42)
    assert report.rows == 1498
    assert report.accuracy >= 0.80  # measured 0.883 (macro-F1 0.882) on 2026-11-22
    assert set(report.per_class_f1) == set(CATEGORIES)
    assert 0.0 <= report.threshold < 1.0
    assert json.loads(metrics_path(out).read_text("utf-8"))["accuracy"] == report.accuracy

    model = ensure_model(tmp_path, messages_csv.parent)
    assert isinstance(model, Classifier)
    # A coach (客运班车) complaint: in messages.csv city-bus complaints are mostly labelled 城乡建设
    # (11 of 15 labelled titles with 公交), so the model follows the data there, not intuition.
    bus = model_text(
        "汽车站客运班车超载",
        "从县汽车站发往市里的客运班车经常超载，站外揽客，存在安全隐患，请交通部门管一管。",
    )
    taxi = model_text("出租车司机不打表乱收费", "昨晚在火车站打出租车，司机不打表，坐地起价，请运管部门整顿。")
    assert [category for category, _ in model.predict([bus, taxi])] == ["交通运输", "交通运输"]
    for category, confidence in model.predict([bus, "你好", "abc"]):
        assert 0.0 <= confidence <= 1.0
        assert category in (*CATEGORIES, OTHER)
