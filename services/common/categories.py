"""The category vocabulary of a case, defined once for every service.

The seven subject categories are the top level of the TipDM 2020 complaint taxonomy (the labels of
messages.csv, which the intake model learns); 其他 (other) is the eighth category a case can carry:
a clerk's choice, or the model's answer when it is unsure. Routing catalogues, time-limit
policies, statistics and the web pages all accept exactly ``CATEGORIES``.
"""

from __future__ import annotations

SUBJECT_CATEGORIES: tuple[str, ...] = (
    "城乡建设",
    "劳动和社会保障",
    "教育文体",
    "商贸旅游",
    "卫生计生",
    "环境保护",
    "交通运输",
)
OTHER_CATEGORY = "其他"
CATEGORIES: tuple[str, ...] = (*SUBJECT_CATEGORIES, OTHER_CATEGORY)
