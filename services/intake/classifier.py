"""Category suggestion for a new submission: character n-gram TF-IDF + a linear classifier.

The seven categories are the top level of the TipDM 2020 taxonomy; a message the model is unsure
about gets 其他 (other) so that a clerk picks the category instead of the model guessing.

Model, chosen with 5-fold cross-validation on the 1,498 labelled rows of messages.csv
(2026-11-22): TF-IDF of character 1–2-grams (sublinear tf, min_df 2) of the title repeated three
times plus the body (titles are short and dense, so they get more weight), then SGD with the
modified Huber loss (alpha 3e-4), which gives probability estimates. Cross-validated accuracy
0.89; LinearSVC 0.89 (no probabilities), LogisticRegression 0.875, char_wb 1–3 0.84–0.85.

The confidence threshold is chosen on the held-out split by ``choose_threshold`` and stored in
the model file; see there for the rule.
"""

from __future__ import annotations

import csv
import fcntl
import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import joblib
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import SGDClassifier
from sklearn.metrics import accuracy_score, f1_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline

from services.common.categories import OTHER_CATEGORY, SUBJECT_CATEGORIES

CATEGORIES = SUBJECT_CATEGORIES  # what the model learns; 其他 is its answer when unsure
OTHER = OTHER_CATEGORY
MODEL_FORMAT = 1
TITLE_REPEAT = 3
HELD_OUT = 0.2
DEFAULT_SEED = 42


def model_text(title: str, body: str) -> str:
    """The classifier's input for one submission: title, line break, body."""
    return f"{title}\n{body}"


def emphasise_title(text: str) -> str:
    """TF-IDF preprocessor: the first line (the title) repeated, then the rest, lower-cased.

    Inside the pipeline (and pickled by reference) so that callers pass plain ``title\nbody``.
    """
    title, _, body = text.partition("\n")
    return (f"{title}\n" * TITLE_REPEAT + body).lower()


def build_pipeline(seed: int = DEFAULT_SEED) -> Pipeline:
    return Pipeline(
        [
            (
                "tfidf",
                TfidfVectorizer(
                    analyzer="char",
                    ngram_range=(1, 2),
                    sublinear_tf=True,
                    min_df=2,
                    preprocessor=emphasise_title,
                ),
            ),
            ("clf", SGDClassifier(loss="modified_huber", alpha=3e-4, random_state=seed)),
        ]
    )


@dataclass(frozen=True)
class LabelledMessage:
    title: str
    body: str
    category: str


def read_labelled(path: Path) -> list[LabelledMessage]:
    """Rows of messages.csv that carry one of the seven categories (read with a CSV parser:
    bodies contain line breaks)."""
    with path.open(encoding="utf-8", newline="") as handle:
        return [
            LabelledMessage(row["title"], row["body"], row["category"])
            for row in csv.DictReader(handle)
            if row["category"] in CATEGORIES
        ]


def choose_threshold(confidences: Sequence[float], correct: Sequence[bool]) -> float:
    """The confidence below which the model is more often wrong than right.

    Returns the largest t such that held-out predictions with confidence < t are correct less
    than half of the time: below t, answering 其他 and letting a clerk choose costs less than a
    wrong category (a misrouted case loses days). 0.0 when no such t exists.
    """
    ranked = sorted(zip(confidences, correct, strict=True))
    best = 0.0
    right = 0
    for index, (confidence, is_correct) in enumerate(ranked):
        # Everything before index has confidence ≤ this one; ties move together.
        if index and confidence > ranked[index - 1][0] and right * 2 < index:
            best = confidence
        right += is_correct
    return best


@dataclass
class TrainingReport:
    rows: int
    held_out_rows: int
    seed: int
    accuracy: float
    macro_f1: float
    per_class_f1: dict[str, float]
    threshold: float
    held_out_below_threshold: float
    accuracy_above_threshold: float
    train_seconds: float
    model_format: int = MODEL_FORMAT
    categories: list[str] = field(default_factory=lambda: list(CATEGORIES))


class Classifier:
    """A trained category model; ``predict`` gives (category, confidence), 其他 below the threshold."""

    def __init__(self, pipeline: Pipeline, threshold: float) -> None:
        self.pipeline = pipeline
        self.threshold = threshold

    @classmethod
    def load(cls, path: Path) -> Classifier:
        # joblib unpickles: only load files this service wrote itself (var/models), never uploads.
        payload: dict[str, Any] = joblib.load(path)
        if payload.get("format") != MODEL_FORMAT:
            raise ValueError(f"{path} has model format {payload.get('format')}, expected {MODEL_FORMAT}")
        return cls(payload["pipeline"], float(payload["threshold"]))

    def save(self, path: Path) -> None:
        """Write atomically: a reader (another node process sharing the folder) never sees half a file."""
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
        joblib.dump({"format": MODEL_FORMAT, "pipeline": self.pipeline, "threshold": self.threshold}, partial)
        os.replace(partial, path)

    def scores(self, texts: Sequence[str]) -> list[tuple[str, float]]:
        """The model's best category and its probability, without the 其他 cut-off."""
        if not texts:
            return []
        probabilities = self.pipeline.predict_proba(list(texts))
        labels = self.pipeline.classes_
        best = probabilities.argmax(axis=1)
        return [(str(labels[i]), float(row[i])) for i, row in zip(best, probabilities, strict=True)]

    def predict(self, texts: Sequence[str]) -> list[tuple[str, float]]:
        """(category, confidence in [0, 1]) per ``title\nbody`` text (see ``model_text``)."""
        return [
            (category if confidence >= self.threshold else OTHER, confidence)
            for category, confidence in self.scores(texts)
        ]

    def predict_submission(self, title: str, body: str) -> tuple[str, float]:
        return self.predict([model_text(title, body)])[0]


def train(messages: Sequence[LabelledMessage], *, seed: int = DEFAULT_SEED) -> tuple[Classifier, TrainingReport]:
    """Evaluate on a stratified 20 % held-out split, choose the threshold there, refit on all rows."""
    started = time.perf_counter()
    texts = [model_text(m.title, m.body) for m in messages]
    labels = [m.category for m in messages]
    train_x, test_x, train_y, test_y = train_test_split(
        texts, labels, test_size=HELD_OUT, stratify=labels, random_state=seed
    )
    held_out_model = Classifier(build_pipeline(seed).fit(train_x, train_y), threshold=0.0)
    scored = held_out_model.scores(test_x)
    predicted = [category for category, _ in scored]
    correct = [p == t for p, t in zip(predicted, test_y, strict=True)]
    threshold = choose_threshold([confidence for _, confidence in scored], correct)
    kept = [ok for (_, confidence), ok in zip(scored, correct, strict=True) if confidence >= threshold]
    per_class = f1_score(test_y, predicted, labels=list(CATEGORIES), average=None)

    final = Classifier(build_pipeline(seed).fit(texts, labels), threshold=threshold)
    report = TrainingReport(
        rows=len(messages),
        held_out_rows=len(test_x),
        seed=seed,
        accuracy=float(accuracy_score(test_y, predicted)),
        macro_f1=float(f1_score(test_y, predicted, average="macro")),
        per_class_f1={c: round(float(f), 4) for c, f in zip(CATEGORIES, per_class, strict=True)},
        threshold=threshold,
        held_out_below_threshold=1 - len(kept) / len(correct),
        accuracy_above_threshold=sum(kept) / len(kept) if kept else 0.0,
        train_seconds=round(time.perf_counter() - started, 2),
    )
    return final, report


def metrics_path(model_path: Path) -> Path:
    return model_path.with_suffix(".metrics.json")


def train_to_file(data: Path, out: Path, *, seed: int = DEFAULT_SEED) -> TrainingReport:
    """Train from messages.csv and write the model plus ``<name>.metrics.json`` beside it."""
    classifier, report = train(read_labelled(data), seed=seed)
    classifier.save(out)
    metrics_path(out).write_text(json.dumps(asdict(report), ensure_ascii=False, indent=2) + "\n", "utf-8")
    return report


def default_model_path(data_dir: Path) -> Path:
    return Path(data_dir) / "models" / "category.joblib"


def ensure_model(data_dir: Path, shared_data: Path | None) -> Classifier | None:
    """The node's category model, trained on first use from ``shared_data/messages.csv``.

    None when there is no model and no training data (the data cannot be shipped): intake then
    leaves the category empty and flags the case for a clerk.
    """
    path = default_model_path(data_dir)
    if not path.exists():
        messages = Path(shared_data) / "messages.csv" if shared_data is not None else None
        if messages is None or not messages.exists():
            return None
        path.parent.mkdir(parents=True, exist_ok=True)
        # The nodes of `lianxin up` share one data folder and start together: one trains, the
        # others wait on the lock and then load what it wrote.
        with open(path.with_name(f".{path.name}.lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not path.exists():
                train_to_file(messages, path)
    return Classifier.load(path)
