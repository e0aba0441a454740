"""Hotspot topics (热点话题): groups of similar texts among a region's recent cases.

Plain code (no database, no gRPC). A hotspot cell (county × category, ``hotspot.py``) says *that*
a region receives unusually many cases; a topic says *what* about: one residential compound's
night construction noise, one school's fees. The cases of a window are clustered by the
similarity of their texts, and each cluster of at least ``min_cases`` becomes a ``Topic`` with a
label (the title of its most central case), its top terms, its cases, its growth against the
window before and the units handling it.

Texts are compared as vectors of their jieba words (title twice, then the body; digits,
punctuation and Latin letters removed: dates, amounts and masked phones are not a topic), each
weighted by sublinear tf × jieba's IDF (a fixed general-corpus table, see ``vectorise``).
Clusters are formed by average-linkage agglomeration on cosine similarity, cut at
``similarity``: a text joins a group when it is, on average, that similar to every member, so a
chain of pairwise look-alikes does not drift into one giant cluster (as single linkage would).
Measured against messages.csv's ``dup_group`` and by reading the top
clusters: docs/stats.md "Hotspot topics".

The cases of the window before (same length) are counted for a topic when they are at least
``similarity`` alike to its centroid: ``previous_count``, and ``growth = count - previous_count``.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any

import numpy as np
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.sparse import csr_matrix, diags
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.preprocessing import normalize

# Digits, Latin letters of masked data, punctuation and spaces: none of them says what a matter is about.
_NOISE = re.compile(r"[^\u4e00-\u9fff]+")
TITLE_REPEAT = 2
LABEL_LENGTH = 40


@dataclass(frozen=True)
class TopicRules:
    similarity: float = 0.3  # average cosine similarity within a topic (chosen in docs/stats.md)
    min_cases: int = 3  # fewer alike cases are not a topic
    top_terms: int = 5
    topics: int = 5  # most topics named per hotspot, largest first
    max_cases: int = 2000  # the newest this many of a window are clustered (memory grows with the square)


@dataclass(frozen=True)
class TopicCase:
    """One case as the topic finder sees it: the title and start of the body, when, who handles it."""

    case_id: str
    text: str  # "title\nbody"
    submitted_at: datetime
    unit_id: str = ""


@dataclass(frozen=True)
class Topic:
    label: str  # the title of the topic's most central case
    top_terms: list[str]
    case_ids: list[str]  # newest first
    count: int
    previous_count: int  # cases of the window before as alike to the topic
    growth: int  # count - previous_count
    units: list[str]  # handling units, most cases first (cases not yet assigned have none)


def topic_text(text: str) -> str:
    """What is compared: the title repeated (short and dense) and the body, Chinese characters only."""
    title, _, body = text.partition("\n")
    return " ".join([_NOISE.sub(" ", title)] * TITLE_REPEAT + [_NOISE.sub(" ", body)])


def words(text: str) -> list[str]:
    """jieba's words of ``topic_text``: what is counted for a text."""
    return [word for word in _jieba().lcut(topic_text(text)) if word.strip()]


def vectorise(texts: Sequence[str]) -> tuple[csr_matrix, list[str]]:
    """L2-normalised rows of word weights, sublinear tf × jieba's IDF, and the words of the columns.

    The IDF is jieba's, from a large general corpus, not taken over the texts compared: among a
    hotspot's cases one topic may be most of the texts, and an IDF over them would weigh its own
    words down. A word jieba does not know (a compound's or company's name) gets its median IDF.
    """
    counter = CountVectorizer(analyzer=words)
    try:
        counts = counter.fit_transform(texts)
    except ValueError:  # no words at all
        return csr_matrix((len(texts), 0)), []
    columns = [str(word) for word in counter.get_feature_names_out()]
    idf_freq, median = _idf()
    weights = np.array([idf_freq.get(word, median) for word in columns])
    matrix = csr_matrix(counts, dtype=np.float64)
    matrix.data = 1.0 + np.log(matrix.data)
    return csr_matrix(normalize(matrix @ diags(weights))), columns


def _jieba() -> Any:
    import jieba

    jieba.setLogLevel(logging.WARNING)  # jieba prints its dictionary loading to stderr otherwise
    return jieba


@cache
def _idf() -> tuple[dict[str, float], float]:
    import jieba.analyse

    _jieba()
    table = jieba.analyse.default_tfidf
    return dict(table.idf_freq), float(table.median_idf)


def cluster(vectors: csr_matrix, similarity: float) -> list[list[int]]:
    """Row indices grouped by average-linkage agglomeration, cut at cosine ``similarity``; largest first."""
    n = vectors.shape[0]
    if n == 0:
        return []
    if n == 1:
        return [[0]]
    sims = (vectors @ vectors.T).toarray()
    distances = np.clip(1.0 - sims[np.triu_indices(n, k=1)], 0.0, 2.0)
    labels = fcluster(linkage(distances, method="average"), t=1.0 - similarity, criterion="distance")
    groups: dict[int, list[int]] = {}
    for index, label in enumerate(labels):
        groups.setdefault(int(label), []).append(index)
    return sorted(groups.values(), key=lambda g: (-len(g), g[0]))


def find_topics(
    cases: Sequence[TopicCase],
    previous: Sequence[TopicCase] = (),
    *,
    rules: TopicRules = TopicRules(),
    terms: Callable[[Sequence[str], int], list[str]] | None = None,
) -> list[Topic]:
    """Topics among ``cases`` (one region's window), largest first; ``previous`` is the window before.

    ``terms(texts, n)`` names a topic's top terms (the stats adapter passes jieba keywords); without
    it the top terms are the topic's heaviest character n-grams.
    """
    recent = sorted(cases, key=lambda c: (c.submitted_at, c.case_id), reverse=True)[: rules.max_cases]
    if len(recent) < rules.min_cases:
        return []
    earlier = list(previous)[: rules.max_cases]
    matrix, features = vectorise([c.text for c in recent] + [c.text for c in earlier])
    if not features:
        return []
    now_rows, before_rows = matrix[: len(recent)], matrix[len(recent) :]
    topics: list[Topic] = []
    for members in cluster(now_rows, rules.similarity):
        if len(members) < rules.min_cases:
            break  # largest first: the rest are smaller
        group = now_rows[members]
        centroid = np.asarray(group.mean(axis=0)).ravel()
        central = members[int(np.argmax(group @ centroid))]
        norm = float(np.linalg.norm(centroid)) or 1.0
        previous_count = int(np.sum(before_rows @ (centroid / norm) >= rules.similarity)) if earlier else 0
        texts = [recent[i].text for i in members]
        if terms is not None:
            named = terms(texts, rules.top_terms)
        else:
            named = [features[i] for i in np.argsort(-centroid)[: rules.top_terms]]
        units = Counter(recent[i].unit_id for i in members if recent[i].unit_id)
        topics.append(
            Topic(
                label=recent[central].text.partition("\n")[0].strip()[:LABEL_LENGTH],
                top_terms=named,
                case_ids=[recent[i].case_id for i in sorted(members)],  # recent is newest first
                count=len(members),
                previous_count=previous_count,
                growth=len(members) - previous_count,
                units=[unit for unit, _ in sorted(units.items(), key=lambda kv: (-kv[1], kv[0]))],
            )
        )
        if len(topics) == rules.topics:
            break
    return topics
