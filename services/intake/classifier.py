"""Category suggestion for a new submission: character n-gram TF-IDF + a linear classifier.

The seven categories are the top level of the TipDM 2020 taxonomy; a message the model is unsure
about gets 其他 (other) so that a clerk picks the category instead of the model guessing.

Model ``taxonomy`` (the default since issue 23): ``chars`` plus seven features of prior knowledge,
one per category, counting the category's terms of the TipDM 2020 taxonomy that the text mentions
(``taxonomy_prior``): on cross-validation better than ``chars`` in 14 of 15 paired runs, by about
half a point (docs/intake.md, issue 23).

Model ``chars``: TF-IDF of character 1–2-grams (sublinear tf, min_df 2) of the title
repeated three times plus the body (titles are short and dense), then SGD with the modified Huber
loss (alpha 3e-4), which gives probability estimates.

Model ``views``, measured against it for issue 23 and not chosen: two views of the cleaned text
(``clean_text``: no salutations, masks of personal data, anonymised place codes; figures as "0"),
each character 1–2-gram TF-IDF + the same SGD, and the mean of their probabilities: the title
repeated three times plus the body in one vocabulary, and the title and the body in vocabularies of
their own. Better in 5-fold cross-validation (0.881 ± 0.031 against 0.868 ± 0.031 on the
development rows; on each of three fold seeds), but worse on the hold-out that no choice had looked
at (0.846 against 0.890, on each of four training seeds): the gain does not carry to unseen
messages, so ``chars`` stayed then (docs/intake.md "Category model", issue 23).

Model ``ensemble``, measured against ``chars`` on 2026-12-06 and not chosen: character 1–2-grams and
jieba words and word pairs, the IDF over the labelled and the ~6,900 unlabelled messages of
messages.csv, the mean of SGD's and a Platt-calibrated linear SVM's probabilities (0.864 ± 0.037).
Self-training with the unlabelled messages did not help either (docs/intake.md).

The hold-out (``split_hold_out``) is set aside before any comparison; the confidence threshold is
chosen on it by ``choose_threshold`` (which does not change the hold-out accuracy reported, taken
over every row) and stored in the model file. The same data and seed give the same model.
"""

from __future__ import annotations

import csv
import fcntl
import json
import logging
import os
import re
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from itertools import pairwise
from pathlib import Path
from typing import Any

import joblib
import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.calibration import CalibratedClassifierCV
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import SGDClassifier
from sklearn.metrics import accuracy_score, f1_score
from sklearn.model_selection import StratifiedGroupKFold, train_test_split
from sklearn.pipeline import FeatureUnion, Pipeline
from sklearn.svm import LinearSVC

from services.common.categories import OTHER_CATEGORY, SUBJECT_CATEGORIES
from services.intake.taxonomy_prior import TAXONOMY_FILE, TaxonomyPrior, WithPrior, read_taxonomy

log = logging.getLogger(__name__)
CATEGORIES = SUBJECT_CATEGORIES  # what the model learns; 其他 is its answer when unsure
OTHER = OTHER_CATEGORY
MODEL_FORMAT = 3  # 3: the taxonomy prior became the default (issue 23); older files are retrained
TITLE_REPEAT = 3
HELD_OUT = 0.2
FOLDS = 5
DEFAULT_SEED = 42
HOLD_OUT_SEED = 20261206  # see split_hold_out
VARIANTS = ("taxonomy", "chars", "views", "ensemble")
DEFAULT_VARIANT = "taxonomy"  # chosen by cross-validation, see the module docstring


def model_text(title: str, body: str) -> str:
    """The classifier's input for one submission: title, line break, body."""
    return f"{title}\n{body}"


# Parts of a message that say nothing about its subject and vary from writer to writer: the
# salutation and thanks (尊敬的李书记：, 您好！, 此致敬礼), the platform's masks of personal data
# (*****), the letter codes of anonymised places (E12市, K8县: the same matter is filed from every
# city) and the figures (dates, amounts, house numbers), kept as one "0".
_SALUTATION = re.compile(
    r"尊敬的[^：:，,。！!\n]{0,12}[：:，,]?|[您你]好[！!，,。：:]?|领导们?[：:，,]|谢谢[！!。]?|此致敬礼|此致|敬礼"
)
_MASK = re.compile(r"\*{2,}")
_PLACE_CODE = re.compile(r"[A-Z]\d{0,2}(?=[市县区])")
_FIGURES = re.compile(r"\d+(?:\.\d+)?")


def clean_text(text: str) -> str:
    """``text`` without salutations, masks, anonymised place codes, and with each figure as "0"."""
    text = _SALUTATION.sub(" ", text)
    text = _MASK.sub(" ", text)
    text = _PLACE_CODE.sub("", text)
    return _FIGURES.sub("0", text)


def cleaned_emphasised(text: str) -> str:
    """TF-IDF preprocessor of ``views``' first view: ``emphasise_title`` of the cleaned title and body."""
    title, _, body = text.partition("\n")
    return emphasise_title(f"{clean_text(title)}\n{clean_text(body)}")


def cleaned_title(text: str) -> str:
    """TF-IDF preprocessor of the title view: the first line, cleaned and lower-cased."""
    return clean_text(text.partition("\n")[0]).lower()


def cleaned_body(text: str) -> str:
    """TF-IDF preprocessor of the body view: everything after the first line, cleaned and lower-cased."""
    return clean_text(text.partition("\n")[2]).lower()


def emphasise_title(text: str) -> str:
    """TF-IDF preprocessor: the first line (the title) repeated, then the rest, lower-cased.

    Inside the pipeline (and pickled by reference) so that callers pass plain ``title\nbody``.
    """
    title, _, body = text.partition("\n")
    return (f"{title}\n" * TITLE_REPEAT + body).lower()


@lru_cache(maxsize=32_768)
def _words(text: str) -> tuple[str, ...]:
    import jieba

    jieba.setLogLevel(logging.WARNING)  # jieba prints its dictionary loading to stderr otherwise
    return tuple(word for word in jieba.lcut(text) if word.strip())


def title_words(text: str) -> list[str]:
    """TF-IDF analyzer: jieba words of ``emphasise_title(text)`` and each pair of adjacent words.

    Cached: training reads every text once per fit, and a fold fits several times.
    """
    words = _words(emphasise_title(text))
    return [*words, *(f"{a} {b}" for a, b in pairwise(words))]


def build_features() -> FeatureUnion:
    return FeatureUnion(
        [
            ("chars", char_tfidf(emphasise_title)),
            ("words", TfidfVectorizer(analyzer=title_words, sublinear_tf=True, min_df=2)),
        ]
    )


class SoftVote(ClassifierMixin, BaseEstimator):  # type: ignore[misc]
    """The mean of the members' class probabilities (each member is fitted on the same rows)."""

    def __init__(self, members: Sequence[Any]) -> None:
        self.members = members

    def fit(self, x: Any, y: Any) -> SoftVote:
        self.fitted_ = [clone(member).fit(x, y) for member in self.members]
        self.classes_ = self.fitted_[0].classes_
        return self

    def predict_proba(self, x: Any) -> Any:
        return np.mean([member.predict_proba(x) for member in self.fitted_], axis=0)

    def predict(self, x: Any) -> Any:
        return self.classes_[self.predict_proba(x).argmax(axis=1)]


def build_estimator(seed: int = DEFAULT_SEED) -> SoftVote:
    return SoftVote(
        [
            SGDClassifier(loss="modified_huber", alpha=3e-4, random_state=seed),
            CalibratedClassifierCV(LinearSVC(C=0.5, random_state=seed), method="sigmoid", cv=3),
        ]
    )


def char_tfidf(preprocessor: Any) -> TfidfVectorizer:
    """Character 1–2-gram TF-IDF (sublinear tf, n-grams seen in at least two texts) of ``preprocessor(text)``."""
    return TfidfVectorizer(analyzer="char", ngram_range=(1, 2), sublinear_tf=True, min_df=2, preprocessor=preprocessor)


def char_model(features: Any, seed: int) -> Pipeline:
    """``features`` + SGD with the modified Huber loss (alpha 3e-4), which gives probability estimates."""
    return Pipeline([("tfidf", features), ("clf", SGDClassifier(loss="modified_huber", alpha=3e-4, random_state=seed))])


def fit_pipeline(
    texts: Sequence[str],
    labels: Sequence[str],
    unlabelled: Sequence[str] = (),
    *,
    seed: int = DEFAULT_SEED,
    variant: str = DEFAULT_VARIANT,
    taxonomy: Mapping[str, Collection[str]] | None = None,
) -> Pipeline:
    """The model ``variant`` fitted on ``texts``: ``chars`` (character 1–2-grams of the labelled
    texts, SGD), ``taxonomy`` (the same plus ``TaxonomyPrior(taxonomy)``, the default), ``views``
    or ``ensemble`` (character and word TF-IDF with the IDF over the labelled and ``unlabelled``
    texts, the mean of SGD's and a calibrated linear SVM's probabilities), which
    ``train_classifier --variant …`` keeps measurable."""
    if variant == "chars":
        return char_model(char_tfidf(emphasise_title), seed).fit(list(texts), list(labels))
    if variant == "taxonomy":
        features = WithPrior(char_tfidf(emphasise_title), TaxonomyPrior(taxonomy))
        return char_model(features, seed).fit(list(texts), list(labels))
    if variant == "views":
        whole = char_model(char_tfidf(cleaned_emphasised), seed)
        apart = char_model(
            FeatureUnion([("title", char_tfidf(cleaned_title)), ("body", char_tfidf(cleaned_body))]), seed
        )
        return Pipeline([("vote", SoftVote([whole, apart]))]).fit(list(texts), list(labels))
    if variant != "ensemble":
        raise ValueError(f"unknown model variant {variant!r} (known: {', '.join(VARIANTS)})")
    features = build_features().fit([*texts, *unlabelled])
    model = build_estimator(seed).fit(features.transform(list(texts)), list(labels))
    return Pipeline([("features", features), ("clf", model)])


@dataclass(frozen=True)
class LabelledMessage:
    title: str
    body: str
    category: str


def read_messages(path: Path) -> tuple[list[LabelledMessage], list[str]]:
    """The rows of messages.csv that carry one of the seven categories, and the texts of the others
    (read with a CSV parser: bodies contain line breaks)."""
    labelled: list[LabelledMessage] = []
    unlabelled: list[str] = []
    with path.open(encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle):
            if row["category"] in CATEGORIES:
                labelled.append(LabelledMessage(row["title"], row["body"], row["category"]))
            elif not row["category"]:
                unlabelled.append(model_text(row["title"], row["body"]))
    return labelled, unlabelled


def read_labelled(path: Path) -> list[LabelledMessage]:
    return read_messages(path)[0]


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
    variant: str
    unlabelled_rows: int
    seed: int
    # 5-fold stratified cross-validation on the development rows (the labelled rows less the hold-out;
    # rows with the same text in one fold); empty when not asked for.
    cv_accuracy: list[float]
    cv_macro_f1: list[float]
    # The hold-out: never used to choose the model, its features or settings.
    held_out_rows: int
    accuracy: float
    macro_f1: float
    per_class_f1: dict[str, float]
    threshold: float
    held_out_below_threshold: float
    accuracy_above_threshold: float
    train_seconds: float
    taxonomy_terms: int = 0  # the taxonomy prior's terms (variant taxonomy; 0 without the taxonomy file)
    model_format: int = MODEL_FORMAT
    categories: list[str] = field(default_factory=lambda: list(CATEGORIES))


def text_key(text: str) -> str:
    """Rows with the same key are the same message (messages.csv repeats some, labelled and not)."""
    return "".join(text.split())


def split_hold_out(messages: Sequence[LabelledMessage]) -> tuple[list[int], list[int]]:
    """(development rows, hold-out rows): a stratified 20 % drawn with ``HOLD_OUT_SEED``, less the
    rows whose text is also a development row's (they move to development: one message is on one side).

    The seed is fixed, not the training seed: these rows were set aside before any model was
    compared (2026-12-06), so their figures are the honest estimate on messages the team never saw.
    """
    labels = [m.category for m in messages]
    develop, hold = train_test_split(
        list(range(len(messages))), test_size=HELD_OUT, stratify=labels, random_state=HOLD_OUT_SEED
    )
    seen = {text_key(model_text(messages[i].title, messages[i].body)) for i in develop}
    moved = [i for i in hold if text_key(model_text(messages[i].title, messages[i].body)) in seen]
    return sorted([*develop, *moved]), sorted(set(hold) - set(moved))


def cross_validate(
    texts: Sequence[str],
    labels: Sequence[str],
    unlabelled: Sequence[str],
    *,
    seed: int,
    variant: str,
    taxonomy: Mapping[str, Collection[str]] | None = None,
) -> tuple[list[float], list[float]]:
    """Accuracy and macro-F1 of each of ``FOLDS`` stratified folds, the same message in one fold."""
    folds = StratifiedGroupKFold(n_splits=FOLDS, shuffle=True, random_state=seed)
    accuracy: list[float] = []
    macro_f1: list[float] = []
    for train_rows, test_rows in folds.split(texts, labels, groups=[text_key(t) for t in texts]):
        train_x, train_y = [texts[i] for i in train_rows], [labels[i] for i in train_rows]
        model = fit_pipeline(train_x, train_y, unlabelled, seed=seed, variant=variant, taxonomy=taxonomy)
        truth = [labels[i] for i in test_rows]
        predicted = list(model.predict([texts[i] for i in test_rows]))
        accuracy.append(round(float(accuracy_score(truth, predicted)), 4))
        macro_f1.append(round(float(f1_score(truth, predicted, average="macro")), 4))
    return accuracy, macro_f1


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


def train(
    messages: Sequence[LabelledMessage],
    unlabelled: Sequence[str] = (),
    *,
    seed: int = DEFAULT_SEED,
    evaluate: bool = False,
    variant: str = DEFAULT_VARIANT,
    taxonomy: Mapping[str, Collection[str]] | None = None,
) -> tuple[Classifier, TrainingReport]:
    """Fit on the development rows, score the hold-out and choose the threshold there, refit on all rows.

    ``evaluate`` adds the 5-fold cross-validation of the development rows (five more fits). The
    unlabelled texts that are also a labelled message are left out: their label is known.
    """
    started = time.perf_counter()
    texts = [model_text(m.title, m.body) for m in messages]
    labels = [m.category for m in messages]
    known = {text_key(t) for t in texts}
    pool = sorted({text_key(t): t for t in unlabelled if text_key(t) not in known}.values())
    develop, hold = split_hold_out(messages)
    dev_x, dev_y = [texts[i] for i in develop], [labels[i] for i in develop]
    test_x, test_y = [texts[i] for i in hold], [labels[i] for i in hold]
    options: dict[str, Any] = {"seed": seed, "variant": variant, "taxonomy": taxonomy}
    cv_accuracy, cv_macro_f1 = cross_validate(dev_x, dev_y, pool, **options) if evaluate else ([], [])
    held_out_model = Classifier(fit_pipeline(dev_x, dev_y, pool, **options), threshold=0.0)
    scored = held_out_model.scores(test_x)
    predicted = [category for category, _ in scored]
    correct = [p == t for p, t in zip(predicted, test_y, strict=True)]
    threshold = choose_threshold([confidence for _, confidence in scored], correct)
    kept = [ok for (_, confidence), ok in zip(scored, correct, strict=True) if confidence >= threshold]
    per_class = f1_score(test_y, predicted, labels=list(CATEGORIES), average=None)

    final = Classifier(fit_pipeline(texts, labels, pool, **options), threshold=threshold)
    report = TrainingReport(
        rows=len(messages),
        variant=variant,
        unlabelled_rows=len(pool) if variant == "ensemble" else 0,
        taxonomy_terms=len(taxonomy or {}) if variant == "taxonomy" else 0,
        seed=seed,
        cv_accuracy=cv_accuracy,
        cv_macro_f1=cv_macro_f1,
        held_out_rows=len(test_x),
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


def train_to_file(
    data: Path, out: Path, *, seed: int = DEFAULT_SEED, evaluate: bool = False, variant: str = DEFAULT_VARIANT
) -> TrainingReport:
    """Train from messages.csv and write the model plus ``<name>.metrics.json`` beside it.

    The taxonomy prior's terms come from ``categories_tipdm2020.csv`` beside messages.csv; without
    that file the ``taxonomy`` model is ``chars`` with seven empty features (logged).
    """
    labelled, unlabelled = read_messages(data)
    taxonomy = read_taxonomy(data.parent / TAXONOMY_FILE)
    if variant == "taxonomy" and not taxonomy:
        log.warning("no %s beside %s: the category model is trained without the taxonomy prior", TAXONOMY_FILE, data)
    classifier, report = train(labelled, unlabelled, seed=seed, evaluate=evaluate, variant=variant, taxonomy=taxonomy)
    classifier.save(out)
    metrics_path(out).write_text(json.dumps(asdict(report), ensure_ascii=False, indent=2) + "\n", "utf-8")
    return report


def default_model_path(data_dir: Path) -> Path:
    return Path(data_dir) / "models" / "category.joblib"


def load_current(path: Path) -> Classifier | None:
    """The model in ``path``; None when there is none or it has an older format (it is then retrained)."""
    if not path.exists():
        return None
    try:
        return Classifier.load(path)
    except ValueError:
        return None


def ensure_model(data_dir: Path, shared_data: Path | None) -> Classifier | None:
    """The node's category model, trained on first use from ``shared_data/messages.csv``.

    None when there is no model and no training data (the data cannot be shipped): intake then
    leaves the category empty and flags the case for a clerk. A model file of an older format is
    replaced by a new one trained from the data (kept when there is no data to train from).
    """
    path = default_model_path(data_dir)
    model = load_current(path)
    if model is not None:
        return model
    messages = Path(shared_data) / "messages.csv" if shared_data is not None else None
    if messages is None or not messages.exists():
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    # The nodes of `lianxin up` share one data folder and start together: one trains, the
    # others wait on the lock and then load what it wrote.
    with open(path.with_name(f".{path.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if load_current(path) is None:
            train_to_file(messages, path)
    return Classifier.load(path)
