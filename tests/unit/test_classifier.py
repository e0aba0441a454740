from __future__ import annotations

import csv
import json
from pathlib import Path

import joblib
import pytest

from services.intake.classifier import (
    CATEGORIES,
    OTHER,
    Classifier,
    LabelledMessage,
    choose_threshold,
    clean_text,
    default_model_path,
    ensure_model,
    fit_pipeline,
    load_current,
    metrics_path,
    model_text,
    split_hold_out,
    text_key,
    train,
    train_to_file,
)
from services.intake.taxonomy_prior import TAXONOMY_FILE, TaxonomyPrior, taxonomy_terms


def test_threshold_is_where_the_model_is_more_often_wrong_than_right() -> None:
    confidences = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
    correct = [False, False, True, False, True, True, True, True]
    # below 0.5: 1 of 4 right; below 0.6: 2 of 5 right; below 0.7: 3 of 6 right (not less than half)
    assert choose_threshold(confidences, correct) == 0.6
    assert choose_threshold([0.5, 0.9], [True, True]) == 0.0


def test_the_model_reads_the_matter_not_the_salutation_the_masks_the_place_codes_or_the_figures() -> None:
    text = "尊敬的李书记：您好！我是E12市K8县居民，电话*****************，2018年11月27日起小区停水3天。谢谢！"
    assert clean_text(text) == "  我是市县居民，电话 ，0年0月0日起小区停水0天。 "


def _toy_messages() -> list[LabelledMessage]:
    words = {
        "交通运输": ["公交车", "出租车", "客运班车", "高速收费站"],
        "教育文体": ["学校", "幼儿园", "老师", "学生补课"],
        "卫生计生": ["医院", "医生", "药店", "计划生育"],
    }
    return [
        LabelledMessage(f"{name}的问题{i}", f"{i}号反映{name}存在问题，请有关部门处理。", category)
        for category, names in words.items()
        for name in names
        for i in range(6)
    ]


@pytest.mark.parametrize("variant", ["taxonomy", "chars", "views"])
def test_the_same_data_and_seed_build_the_same_model(variant: str) -> None:
    messages = _toy_messages()
    texts = [model_text(m.title, m.body) for m in messages]
    labels = [m.category for m in messages]
    probe = [model_text("出租车拒载", "晚上出租车拒载"), model_text("学校乱收费", "学校向学生收取资料费")]
    first = fit_pipeline(texts, labels, variant=variant)
    again = fit_pipeline(texts, labels, variant=variant)
    # bit for bit: a node that rebuilds its model suggests exactly what the old one did
    assert (first.predict_proba(probe) == again.predict_proba(probe)).all()
    assert list(first.predict(probe)) == ["交通运输", "教育文体"]


_TAXONOMY = [
    {"level1": "城乡建设", "level2": "城市建设和市政管理", "level3": "公共汽车"},
    {"level1": "交通运输", "level2": "出租车管理", "level3": "网约车问题"},
    {"level1": "政法", "level2": "治安", "level3": "盗窃"},  # a category the model does not learn
]


def test_the_taxonomy_prior_scores_the_categories_whose_terms_a_message_names() -> None:
    terms = taxonomy_terms(_TAXONOMY)
    assert terms["公共汽车"] == {"城乡建设"} and terms["出租车"] == {"交通运输"}
    assert "问题" not in terms and "管理" not in terms and "盗窃" not in terms
    prior = TaxonomyPrior(terms, weight=1.0).fit([])
    in_title, in_body, taxi, other = prior.transform(
        [
            model_text("公共汽车不按站停靠", "司机甩站。"),
            model_text("投诉", "公共汽车不按站停靠，司机甩站。"),
            model_text("出租车拒载", "晚上出租车拒载。"),
            model_text("小偷", "家里被盗窃了。"),
        ]
    ).toarray()
    city, transport = CATEGORIES.index("城乡建设"), CATEGORIES.index("交通运输")
    assert in_title[city] > in_body[city] > 0  # a term in the title counts twice
    assert in_title[transport] == 0 and taxi[transport] > 0 and taxi[city] == 0
    assert not other.any()


@pytest.mark.filterwarnings("ignore:F-score is ill-defined")  # the toy data has three of the seven categories
def test_the_taxonomy_beside_messages_csv_is_read_when_the_model_is_trained(tmp_path: Path) -> None:
    data = tmp_path / "messages.csv"
    with data.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["title", "body", "category"])
        writer.writeheader()
        writer.writerows({"title": m.title, "body": m.body, "category": m.category} for m in _toy_messages())
    assert train_to_file(data, tmp_path / "without.joblib").taxonomy_terms == 0  # still trains, without the prior
    with (tmp_path / TAXONOMY_FILE).open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["level1", "level2", "level3"])
        writer.writeheader()
        writer.writerows(_TAXONOMY)
    report = train_to_file(data, tmp_path / "with.joblib")
    assert report.variant == "taxonomy" and report.taxonomy_terms == len(taxonomy_terms(_TAXONOMY))
    model = Classifier.load(tmp_path / "with.joblib")
    assert model.predict_submission("出租车拒载", "晚上出租车拒载")[0] == "交通运输"


@pytest.mark.filterwarnings("ignore:F-score is ill-defined")  # the toy data has three of the seven categories
def test_a_model_is_rebuilt_the_same_from_messages() -> None:
    classifier, report = train(_toy_messages(), seed=7)
    again, report_again = train(_toy_messages(), seed=7)
    probe = [model_text("医院收费", "医院乱收费，看病贵")]
    assert classifier.scores(probe) == again.scores(probe)
    assert report.threshold == report_again.threshold and report.accuracy == report_again.accuracy


def test_without_model_or_data_there_is_no_classifier(tmp_path: Path) -> None:
    assert ensure_model(tmp_path, None) is None
    assert ensure_model(tmp_path, tmp_path / "absent") is None


def test_a_model_file_of_an_older_format_is_not_used(tmp_path: Path) -> None:
    path = default_model_path(tmp_path)
    path.parent.mkdir(parents=True)
    joblib.dump({"format": 1, "pipeline": None, "threshold": 0.5}, path)
    assert load_current(path) is None  # the node retrains it from messages.csv …
    assert ensure_model(tmp_path, None) is None  # … or, without data, leaves categories to a clerk
    assert load_current(tmp_path / "absent.joblib") is None


def test_the_hold_out_never_shares_a_message_with_the_development_rows() -> None:
    # messages.csv repeats some messages (a labelled row and its copy in another attachment): a copy
    # on both sides would score the model on a text it was trained on.
    messages = [LabelledMessage(f"标题{i % 100}", f"正文 {i % 100}", CATEGORIES[i % 7]) for i in range(140)]
    develop, hold = split_hold_out(messages)  # rows 100..139 repeat the texts of rows 0..39
    assert sorted(develop + hold) == list(range(140)) and len(hold) >= 10
    keys = {text_key(model_text(messages[i].title, messages[i].body)) for i in develop}
    assert not any(text_key(model_text(messages[i].title, messages[i].body)) in keys for i in hold)


@pytest.mark.slow
def test_trained_model_reaches_held_out_accuracy(messages_csv: Path, tmp_path: Path) -> None:
    out = default_model_path(tmp_path)
    report = train_to_file(messages_csv, out, seed=42)
    assert report.rows == 1498
    assert report.held_out_rows == 273  # 20 %, less the rows whose text is also a development row
    assert report.accuracy >= 0.85  # hold-out measured 0.897 (macro-F1 0.893) on 2026-12-06 (chars: 0.890)
    assert report.variant == "taxonomy" and report.taxonomy_terms > 400  # the taxonomy file beside messages.csv
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
