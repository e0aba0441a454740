"""Distant supervision from the official replies: does it lift the category model? (issue 23)

    python -m bench.intake.reply_supervision --data ../shared/data/messages.csv [--quick]

2,816 messages of messages.csv (attachment 4) carry the office's reply, which usually names the
answering department (市住建局, 人社局, 教育局, 交警…). ``DEPARTMENTS`` maps department names to
the seven categories the way the labelled rows file their matters (公交 and 地铁 under 城乡建设
as the taxonomy does; 医保 and 社保 under 劳动和社会保障; 电梯 and 质监 under 商贸旅游); a reply is
decisive when it names departments at least twice and ≥ 80 % of the mentions are one category's.

Compared, paired over 15 runs (fold seeds 42, 7, 2026 × training seeds 0–4; ``--quick``: three of
them), 5-fold ``StratifiedGroupKFold`` of the 1,498 labelled rows (one text in one fold):

- ``taxonomy``: the default model, on the labelled training rows only;
- ``departments``: plus every decisively answered unlabelled message with its department's category;
- ``teacher``: a model fitted on the fold's training rows reads message + reply; the messages it
  labels with probability ≥ 0.5 *and* the same category as the department join, at most 30 per class.

Strict: pseudo-labelled rows join the training folds only (every scored row is a real label), and an
unlabelled message whose text or title is a labelled row's is never used (it would train the fold
that scores its twin). Measured 2026-12-06 (docs/intake.md): ``taxonomy`` 0.8832 (macro-F1 0.8772),
``departments`` 0.8752 (worse in 14 runs of 15), ``teacher`` 0.8840 (better in 9, worse in 6: level).
"""

from __future__ import annotations

import argparse
import csv
import re
import statistics
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, f1_score
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.pipeline import Pipeline

from services.intake.classifier import CATEGORIES, FOLDS, char_model, char_tfidf, emphasise_title, model_text, text_key
from services.intake.taxonomy_prior import TAXONOMY_FILE, TaxonomyPrior, WithPrior, read_taxonomy

# Department (or office) names a 信访局 reads in a reply, by the category of the matters it answers.
DEPARTMENTS: dict[str, tuple[str, ...]] = {
    "城乡建设": (
        "住建局", "住房和城乡建设", "住房城乡建设", "城乡建设局", "建设局", "建委", "城管局", "城市管理",
        "城管执法", "行政执法局", "规划局", "城乡规划", "自然资源", "国土资源", "国土局", "房产局", "房地产",
        "房屋交易", "住房保障", "不动产登记", "物业办", "物管办", "市政", "园林", "水务局", "住房公积金",
        "公积金", "公交", "地铁", "轨道交通", "拆迁", "征收办", "棚改",
    ),
    "劳动和社会保障": (
        "人社局", "人力资源和社会保障", "人力资源社会保障", "社保局", "社保中心", "社会保险", "劳动监察",
        "劳动保障", "劳动仲裁", "就业服务", "民政局", "养老保险", "医保", "医疗保障", "医疗保险",
    ),
    "教育文体": (
        "教育局", "教育厅", "教育部", "教体局", "教育和体育", "文体局", "文化局", "文广", "体育局", "文旅",
        "招生考试", "招考",
    ),
    "商贸旅游": (
        "市场监督管理", "市场监管", "工商局", "工商分局", "工商行政", "商务局", "旅游局", "旅游发展", "质监",
        "质量技术监督", "食品药品监督", "物价局", "价格监督", "价格主管", "发展和改革", "发改委", "发改局",
        "消费者协会", "消协", "电梯",
    ),
    "卫生计生": (
        "卫健委", "卫健局", "卫生健康", "卫生计生", "卫计局", "卫计委", "卫生和计划生育", "卫生局", "疾控",
        "卫生院", "计生", "人口和计划生育",
    ),
    "环境保护": ("环保局", "环境保护局", "生态环境", "环境保护", "环境监察", "环境监测", "环保"),
    "交通运输": (
        "交通运输局", "交通局", "交通运输厅", "交警", "交通警察", "交管", "运管", "运输管理", "道路运输",
        "出租车", "车管所", "公路局", "公路管理", "邮政", "快递",
    ),
}  # fmt: skip
_PATTERNS = {category: re.compile("|".join(names)) for category, names in DEPARTMENTS.items()}
MIN_MENTIONS = 2
MIN_SHARE = 0.8
PSEUDO_WEIGHT = 0.3
TEACHER_THRESHOLD = 0.5
TEACHER_CAP = 30
FOLD_SEEDS = (42, 7, 2026)
TRAINING_SEEDS = (0, 1, 2, 3, 4)
QUICK = ((42, 0), (7, 1), (2026, 2))


def department_category(reply: str) -> str | None:
    """The category of the departments a reply names, when it is decisive (see the module docstring)."""
    mentions = Counter({category: len(pattern.findall(reply)) for category, pattern in _PATTERNS.items()})
    total = sum(mentions.values())
    if total < MIN_MENTIONS:
        return None
    category, count = mentions.most_common(1)[0]
    return category if count / total >= MIN_SHARE else None


@dataclass(frozen=True)
class Data:
    texts: list[str]  # the labelled rows, ``model_text``
    labels: list[str]
    pool: list[tuple[str, str]]  # (message text, reply) of unlabelled answered messages, no labelled twin


def read_data(path: Path) -> Data:
    with path.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    labelled = [row for row in rows if row["category"] in CATEGORIES]
    texts = [model_text(row["title"], row["body"]) for row in labelled]
    # dup_group marks a row with the same title and body as its first row; the keys below cover it
    # and also a twin with the same title only (an edited re-post).
    twins = {text_key(text) for text in texts} | {text_key(row["title"]) for row in labelled}
    pool: dict[str, tuple[str, str]] = {}
    for row in rows:
        text = model_text(row["title"], row["body"])
        if not row["category"] and row["reply"] and not twins & {text_key(text), text_key(row["title"])}:
            pool.setdefault(text_key(text), (text, row["reply"]))
    return Data(texts, [row["category"] for row in labelled], list(pool.values()))


def taxonomy_model(seed: int, taxonomy: Any) -> Pipeline:
    return char_model(WithPrior(char_tfidf(emphasise_title), TaxonomyPrior(taxonomy)), seed)


def fit_weighted(texts: Sequence[str], labels: Sequence[str], extra: Sequence[tuple[str, str]], model: Pipeline) -> Any:
    """``model`` fitted on the labelled rows (weight 1) and the ``extra`` (text, category) rows (``PSEUDO_WEIGHT``)."""
    weights = np.r_[np.ones(len(texts)), np.full(len(extra), PSEUDO_WEIGHT)]
    return model.fit(
        [*texts, *(text for text, _ in extra)], [*labels, *(c for _, c in extra)], clf__sample_weight=weights
    )


Variant = Callable[[list[str], list[str], int], Any]


def variants(data: Data, taxonomy: Any) -> dict[str, Variant]:
    by_department = [(text, c) for text, reply in data.pool if (c := department_category(reply))]

    def teacher(texts: list[str], labels: list[str], seed: int) -> Any:
        model = taxonomy_model(seed, taxonomy).fit(texts, labels)
        probabilities = model.predict_proba([f"{text}\n{reply}" for text, reply in data.pool])
        chosen: dict[str, list[tuple[float, str]]] = defaultdict(list)
        for (text, reply), row in zip(data.pool, probabilities, strict=True):
            category = str(model.classes_[row.argmax()])
            if row.max() >= TEACHER_THRESHOLD and department_category(reply) == category:
                chosen[category].append((-float(row.max()), text))
        extra = [(text, c) for c, found in chosen.items() for _, text in sorted(found)[:TEACHER_CAP]]
        return fit_weighted(texts, labels, extra, taxonomy_model(seed, taxonomy))

    return {
        "taxonomy": lambda texts, labels, seed: taxonomy_model(seed, taxonomy).fit(texts, labels),
        "departments": lambda texts, labels, seed: fit_weighted(
            texts, labels, by_department, taxonomy_model(seed, taxonomy)
        ),
        "teacher": teacher,
    }


def score_run(data: Data, variant: Variant, fold_seed: int, seed: int) -> tuple[float, float]:
    """Mean accuracy and macro-F1 over the folds of ``fold_seed`` (only labelled rows are scored)."""
    folds = StratifiedGroupKFold(n_splits=FOLDS, shuffle=True, random_state=fold_seed)
    accuracy: list[float] = []
    macro_f1: list[float] = []
    groups = [text_key(text) for text in data.texts]
    for train_rows, test_rows in folds.split(data.texts, data.labels, groups=groups):
        model = variant([data.texts[i] for i in train_rows], [data.labels[i] for i in train_rows], seed)
        truth = [data.labels[i] for i in test_rows]
        predicted = list(model.predict([data.texts[i] for i in test_rows]))
        accuracy.append(float(accuracy_score(truth, predicted)))
        macro_f1.append(float(f1_score(truth, predicted, average="macro")))
    return statistics.fmean(accuracy), statistics.fmean(macro_f1)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Paired runs: the category model with and without reply labels.")
    parser.add_argument("--data", type=Path, required=True, help="path to messages.csv")
    parser.add_argument("--quick", action="store_true", help=f"three runs {QUICK} instead of 15")
    args = parser.parse_args(argv)
    data = read_data(args.data)
    taxonomy = read_taxonomy(args.data.parent / TAXONOMY_FILE)
    by_department = Counter(c for _, reply in data.pool if (c := department_category(reply)))
    print(f"labelled rows {len(data.texts)}, answered unlabelled messages {len(data.pool)}")
    print(f"decisive replies {sum(by_department.values())}: {dict(by_department.most_common())}")
    runs = QUICK if args.quick else tuple((f, t) for f in FOLD_SEEDS for t in TRAINING_SEEDS)
    scores: dict[str, list[tuple[float, float]]] = {}
    for name, variant in variants(data, taxonomy).items():
        scores[name] = [score_run(data, variant, fold_seed, seed) for fold_seed, seed in runs]
        accuracy = [a for a, _ in scores[name]]
        line = (
            f"{name:12} accuracy {statistics.fmean(accuracy):.4f} ± {statistics.pstdev(accuracy):.4f} "
            f"(runs {min(accuracy):.4f}–{max(accuracy):.4f}) "
            f"macro-F1 {statistics.fmean(f for _, f in scores[name]):.4f}"
        )
        if name != "taxonomy":
            gain = [a - b for a, (b, _) in zip(accuracy, scores["taxonomy"], strict=True)]
            better, worse = sum(g > 0 for g in gain), sum(g < 0 for g in gain)
            line += f"  paired {statistics.fmean(gain):+.4f}: better in {better}, worse in {worse}"
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
