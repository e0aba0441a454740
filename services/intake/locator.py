"""Location resolution: which region of the node's subtree an address or free text is about.

Names come from the region tree: full names (乐山市, 凉山彝族自治州), short names (乐山, 凉山州,
北川县) and former names of renamed units (郫县 → 郫都区). The text is scanned for mentions,
longest name first; city context then picks among same-named counties (市中区 exists in 乐山 and
内江), and the node's subtree settles what context leaves open. A result is always inside the
node's subtree or None: a clerk decides rather than the case going to the wrong county.

Guarding against words that merely contain a name (提高县城 holds 高县, 城市中区域 holds 市中区):
- a name ending in 市/区/县 is refused when the next character turns that suffix into a word
  (县城, 区域, 市场, 市民, 市中…); the scan then tries the shorter names at the same place, so
  乐山市民 still finds 乐山 and 内江市中区 finds 内江 + 市中区;
- short names and two-character full names (高县, 东区) must start on a word boundary and end on
  one (or before a 人/市/区/县/州 glued to them), as segmented by jieba's dictionary without
  new-word guessing; short names that are everyday words (南部, 前锋, 白玉, 名山…) are not used.
"""

from __future__ import annotations

import functools
import logging
import re
import warnings
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from services.common.regions import RegionTree

# Renamed or upgraded units whose old name citizens still write; only changes we are sure of.
FORMER_NAMES: dict[str, str] = {
    "郫县": "510117",  # → 郫都区 2016
    "双流县": "510116",  # → 双流区 2015
    "温江县": "510115",  # → 温江区 2002
    "新都县": "510114",  # → 新都区 2001
    "新津县": "510132",  # → 新津区 2020
    "安县": "510705",  # → 安州区 2016
    "罗江县": "510604",  # → 罗江区 2017
    "元坝区": "510811",  # → 昭化区 2013
    "射洪县": "510981",  # → 射洪市 2019
    "隆昌县": "511083",  # → 隆昌市 2017
    "彭山县": "511403",  # → 彭山区 2014
    "宜宾县": "511504",  # → 叙州区 2018
    "南溪县": "511503",  # → 南溪区 2011
    "达县": "511703",  # → 达川区 2013
    "名山县": "511803",  # → 名山区 2012
    "马尔康县": "513201",  # → 马尔康市 2015
    "康定县": "513301",  # → 康定市 2015
    "会理县": "513425",  # → 会理市 2021
}

# Short forms that are everyday words, so a mention says nothing about a place.
COMMON_WORD_SHORT_NAMES: frozenset[str] = frozenset(
    [
        "市中",
        "南部",
        "前锋",
        "白玉",
        "石棉",
        "东坡",
        "朝天",
        "大英",
        "名山",
        "黑水",
        "九龙",
        "三台",
        "安居",
        "大安",
        "仁和",
        "长宁",
        "宝兴",
        "金牛",
        "新龙",
        "天全",
        "红原",
        "得荣",
        "喜德",
        "武胜",
        "威远",
        "东兴",
        "兴文",
    ]
)

# After these suffix characters, the listed next characters make a common word (县城, 区域, 市场…).
_WORD_AFTER_SUFFIX: dict[str, str] = {
    "市": "场民长委级区内面值容中政况价貌郊县",
    "区": "域别分间块段位",
    "县": "城委长级里域",
    "州": "长",
}
_GLUED_AFTER_SHORT = "人市区县州"
_ETHNIC_AUTONOMY = re.compile(r"(?:[\u4e00-\u9fff]族)*自治([州县])$")


@dataclass(frozen=True)
class Location:
    """Where a text is about: ``code`` inside the node's subtree, or None (``ambiguous`` if several fit).

    ``candidates`` are the codes the text points to: the options when ambiguous, or the region
    outside the node when that is what the text names (a clerk may forward the case there).
    """

    code: str | None
    ambiguous: bool = False
    candidates: list[str] = field(default_factory=list)
    matched: str = ""


@dataclass(frozen=True)
class _Name:
    form: str
    codes: frozenset[str]
    needs_boundary: bool  # short forms and two-character names: checked against word segmentation


@dataclass(frozen=True)
class _Mention:
    start: int
    end: int
    codes: frozenset[str]


def _short_forms(name: str) -> list[str]:
    """Colloquial forms of an official name: 凉山彝族自治州 → 凉山, 凉山州; 峨眉山市 → 峨眉山."""
    autonomy = _ETHNIC_AUTONOMY.search(name)
    if autonomy:
        root = name[: autonomy.start()]
        forms = [root, root + autonomy.group(1)]
    elif len(name) >= 3 and name[-1] in "市区县":
        forms = [name[:-1]]
    else:
        forms = []
    return [f for f in forms if len(f) >= 2 and f not in COMMON_WORD_SHORT_NAMES and f != name]


class Gazetteer:
    """Every name form of a region tree, for scanning texts (build once per tree)."""

    def __init__(self, tree: RegionTree) -> None:
        self.tree = tree
        codes: dict[str, set[str]] = defaultdict(set)
        full: set[str] = set()
        for region in tree.regions.values():
            codes[region.name].add(region.code)
            full.add(region.name)
            for form in _short_forms(region.name):
                codes[form].add(region.code)
        for form, code in FORMER_NAMES.items():
            if code in tree:
                codes[form].add(code)
                full.add(form)
        self.names: dict[str, _Name] = {
            form: _Name(form, frozenset(found), needs_boundary=form not in full or len(form) <= 2)
            for form, found in codes.items()
        }
        self.max_length = max(len(form) for form in self.names)

    def mentions(self, text: str) -> list[_Mention]:
        """Place mentions, left to right, longest acceptable name at each position."""
        found: list[_Mention] = []
        bounds: _Boundaries | None = None
        position = 0
        while position < len(text):
            end = 0
            for length in range(min(self.max_length, len(text) - position), 1, -1):
                name = self.names.get(text[position : position + length])
                if name is None or _suffix_makes_word(text, position + length):
                    continue
                if name.needs_boundary:
                    bounds = bounds or _Boundaries(text)
                    if not bounds.accepts(position, position + length):
                        continue
                found.append(_Mention(position, position + length, name.codes))
                end = position + length
                break
            position = end or position + 1
        return found


def _suffix_makes_word(text: str, end: int) -> bool:
    following = _WORD_AFTER_SUFFIX.get(text[end - 1], "")
    return end < len(text) and text[end] in following


@functools.cache
def _tokenizer() -> Any:
    # jieba is imported lazily (≈0.6 s to build its dictionary) and quietly: it logs to stderr and
    # imports the deprecated pkg_resources.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import jieba

    jieba.setLogLevel(logging.WARNING)
    tokenizer = jieba.Tokenizer()
    tokenizer.initialize()
    return tokenizer


class _Boundaries:
    """Word boundaries of a text from jieba's dictionary (HMM off: no guessed words)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.starts: set[int] = set()
        self.ends: dict[int, int] = {}  # offset inside a word → that word's end
        offset = 0
        for word in _tokenizer().lcut(text, HMM=False):
            self.starts.add(offset)
            for inside in range(offset + 1, offset + len(word) + 1):
                self.ends[inside] = offset + len(word)
            offset += len(word)
        self.starts.add(offset)

    def accepts(self, start: int, end: int) -> bool:
        if start not in self.starts:
            return False
        if end in self.starts:
            return True
        # 南充人, 乐山市民: jieba glues one character to the name; accept it when that character is
        # a demonym or an administrative suffix.
        return self.ends.get(end) == end + 1 and self.text[end] in _GLUED_AFTER_SHORT


class Locator:
    """Resolves texts to region codes inside a node's subtree."""

    def __init__(self, tree: RegionTree, gazetteer: Gazetteer | None = None) -> None:
        self.tree = tree
        self.gazetteer = gazetteer or Gazetteer(tree)

    def _collapse(self, codes: Iterable[str]) -> frozenset[str]:
        """Names shared by a region and one inside it (阿坝 = 州 and 县) mean the outer one."""
        codes = set(codes)
        return frozenset(c for c in codes if not any(o != c and self.tree.contains(o, c) for o in codes))

    def locate(self, text: str, node: str) -> Location:
        mentions = self.gazetteer.mentions(text)
        if not mentions:
            return Location(code=None)
        subtree = set(self.tree.subtree(node))
        all_codes = {code for m in mentions for code in m.codes}
        resolved: list[tuple[_Mention, frozenset[str]]] = []
        for mention in mentions:
            codes = self._collapse(mention.codes)
            # City context: keep the same-named regions that lie inside another mentioned region.
            others = all_codes - mention.codes
            within_context = frozenset(c for c in codes if any(self.tree.contains(o, c) for o in others))
            codes = within_context or codes
            if len(codes) > 1:
                # Only then the node's own area decides (a lone 市中区 at 乐山 is 乐山's).
                codes = frozenset(c for c in codes if c in subtree) or codes
            resolved.append((mention, codes))

        # Follow the first unambiguous mention down through mentions inside it (乐山市 → 市中区);
        # later mentions of unrelated places (a company's seat, a second town) do not move it.
        chain: list[tuple[_Mention, str]] = []
        for mention, codes in resolved:
            if len(codes) != 1:
                continue
            (code,) = codes
            if not chain or (code != chain[-1][1] and self.tree.contains(chain[-1][1], code)):
                chain.append((mention, code))
        if chain:
            code = chain[-1][1]
            matched = text[chain[0][0].start : chain[-1][0].end]
            if code in subtree:
                return Location(code=code, candidates=[code], matched=matched)
            return Location(code=None, candidates=[code], matched=matched)
        mention, codes = resolved[0]
        options = sorted(c for c in codes if c in subtree)
        return Location(
            code=None,
            ambiguous=len(options) > 1,
            candidates=options,
            matched=text[mention.start : mention.end],
        )


def locate(text: str, node: str, tree: RegionTree) -> Location:
    """Resolve one text for a node (building the gazetteer takes about a millisecond; keep a
    ``Locator`` for many texts)."""
    return Locator(tree).locate(text, node)


def locate_lines(lines: Sequence[str], node: str, tree: RegionTree) -> list[str]:
    """For ``lianxin locate``: one region code per input line, "" where none is certain."""
    locator = Locator(tree)
    return [locator.locate(line, node).code or "" for line in lines]
