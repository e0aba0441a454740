"""Personal data inside free text (a petition's title and body): find it and mask it, nothing else.

Citizens write "我是赵大海，身份证511102198805051231，电话13700137000" into the body of a request;
intake keeps that original sealed with the complainant's data and lets everything else (events,
replicas, warehouse, search, exports, the reply board, logs) see only ``mask(text).text``.

Kinds found:

* ``id_number``: 18-character resident ID numbers (GB 11643) whose birth date is a date and whose
  check character is right; 15-digit first-generation numbers with a valid date.
* ``mobile``: mainland mobile numbers (1[3-9] + 9 digits), with +86/0086 and 3-4-4 separators.
* ``landline``: an area code 0 + 2-3 digits and a 7-8 digit number, written with a separator
  (0833-2123456, (028)12345678), or unseparated right after a word for telephone.
* ``bank_card``: 13-19 digits (groups of four allowed) passing the Luhn check.
* ``name``: a self-introduced name (我是/我叫/本人/姓名 …) starting with a common surname.

A number touching a letter or another digit is part of an identifier (a case id, an order
number) and is left alone. Pure functions: no I/O, safe anywhere.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from datetime import date

KINDS: tuple[str, ...] = ("id_number", "mobile", "landline", "bank_card", "name")

# GB 11643-1999: weight of position i is 2^(17-i) mod 11; the check character indexes this string.
ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
ID_CHECK = "10X98765432"

_BEFORE = r"(?<![0-9A-Za-z])(?<![0-9A-Za-z]-)"
_AFTER = r"(?![0-9A-Za-z])(?!-[0-9A-Za-z])"
_ID18 = re.compile(_BEFORE + r"[1-9]\d{16}[0-9Xx]" + _AFTER)
_ID15 = re.compile(_BEFORE + r"[1-9]\d{14}" + _AFTER)
_MOBILE = re.compile(_BEFORE + r"(?:(?:\+|00)86[- ]?)?1[3-9]\d(?P<sep>[- ]?)\d{4}(?P=sep)\d{4}" + _AFTER)
_LANDLINE = re.compile(_BEFORE + r"(?:[(（]0\d{2,3}[)）]\s?|0\d{2,3}[-－—\s])\d{7,8}(?:[-－]\d{1,4})?" + _AFTER)
_PHONE_WORDS = r"(?:电话|座机|手机|联系方式|联系电话|号码|tel|Tel|TEL)[:：\s是为]{0,3}"
_LANDLINE_BARE = re.compile(_PHONE_WORDS + r"(?P<number>0\d{9,11})" + _AFTER)
_CARD = re.compile(_BEFORE + r"\d{4}(?:[ -]?\d{4}){2,3}(?:[ -]?\d{1,3})?" + _AFTER)

# Common surnames (single and compound), enough for self-introductions in petitions.
_COMPOUND_SURNAMES = ("欧阳", "司马", "上官", "诸葛", "东方", "皇甫", "尉迟", "公孙", "慕容", "令狐", "夏侯", "长孙")
_SURNAMES = frozenset(
    "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕丁任沈"
    "姚卢姜崔钟谭陆汪范金石廖贾夏韦付方白邹孟熊秦邱江尹薛闫段雷侯龙史陶黎贺顾毛郝龚邵万钱严覃武戴莫孔向汤"
    "常温康施文牛樊葛邢安齐易乔伍庞颜倪庄聂章鲁岳翟殷詹申欧耿关兰焦俞左柳甘祝包宁尚符舒阮柯纪梅童凌毕单季"
    "裴霍涂成苗谷盛曲翁冉骆蓝路游辛靳管柴蒙鲍华喻祁蒲房滕屈饶解牟艾尤阳时穆农司卓古吉缪简车项连芦麦褚娄窦"
    "戚岑景党宫费卜冷晏席卫米柏宗瞿桂全佟应臧闵苟邬边卞姬师和仇栾隋商刁沙荣巫寇桑郎甄丛仲虞敖巩明佘池查麻"
    "苑迟邝官封谈匡鞠惠荆乐冀郁胥南班储原栗燕楚鄢劳谌奚皮粟冼蔺楼盘满闻位厉伊仝区郜海阚花权强帅屠豆朴盖练"
    "廉禹井祖漆巴丰支卿国狄平计索宣晋相初门云容敬来扈晁芮都普阙浦戈伏鹿薄邸雍辜羊阿乌母裘亓修邰赫杭况那宿鲜印逯隆茹诸战慕危玉银亢嵇公哈湛宾戎勾茅利於呼居揭干但尉冶斯元束檀衣信展阴昝智幸奉植衡富尧闭由"
)
# Characters that end a name or show the words after 我是 are not a name (我是乐山市民, 我是业主).
_NOT_IN_NAME = frozenset(
    "是在的了和与及等一个名位市区县镇乡村街路省州人员民工师生者家户主住现男女今从因向于对被把将已曾也都就还又"
    "某些这那其所为以而且或但如若要想请求望希感谢您你我他她它们身电手联号码姓叫系来去到给说问反映投诉举报"
)
_INTRODUCTION = re.compile(
    r"(?:我是|我叫|我的名字是|我的名字叫|本人是|本人叫|本人|名叫|姓名|联系人|举报人|投诉人|反映人)[:：\s]{0,2}"
    r"(?P<name>[\u4e00-\u9fff]{2,4})"
)


@dataclass(frozen=True)
class Finding:
    """One piece of personal data: its kind and where it is (the text itself is not kept)."""

    kind: str
    start: int
    end: int


@dataclass(frozen=True)
class MaskedText:
    """The text with every finding masked, and what was found in the original."""

    text: str
    found: tuple[Finding, ...]

    @property
    def changed(self) -> bool:
        return bool(self.found)

    def kinds(self) -> Counter[str]:
        return Counter(f.kind for f in self.found)


def id_check_character(first17: str) -> str:
    """The GB 11643 check character of the first 17 digits of an ID number."""
    total = sum(int(digit) * weight for digit, weight in zip(first17, ID_WEIGHTS, strict=True))
    return ID_CHECK[total % 11]


def _is_date(year: int, month: int, day: int) -> bool:
    try:
        born = date(year, month, day)
    except ValueError:
        return False
    return date(1900, 1, 1) <= born <= date.today()


def is_id_number(value: str) -> bool:
    """True for an 18-character number with a real birth date and the right check character."""
    value = value.upper()
    if len(value) == 18:
        return (
            _is_date(int(value[6:10]), int(value[10:12]), int(value[12:14]))
            and id_check_character(value[:17]) == value[17]
        )
    if len(value) == 15 and value.isdigit():
        return _is_date(1900 + int(value[6:8]), int(value[8:10]), int(value[10:12]))
    return False


def luhn_valid(digits: str) -> bool:
    """The Luhn (mod 10) check every bank card number passes."""
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char)
        if index % 2 == 1:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def _digits(text: str) -> str:
    return re.sub(r"\D", "", text)


def _name_in(candidate: str) -> str | None:
    """The name at the start of ``candidate`` (2-4 CJK characters after an introduction), if any."""
    surname = next((s for s in _COMPOUND_SURNAMES if candidate.startswith(s)), candidate[0])
    if surname not in _SURNAMES and surname not in _COMPOUND_SURNAMES:
        return None
    given = ""
    for char in candidate[len(surname) :]:
        if char in _NOT_IN_NAME or len(given) == 2:
            break
        given += char
    if not given:
        return None
    name = surname + given
    after = candidate[len(name) : len(name) + 1]
    if after and after in "市区县镇乡村省州人":
        return None  # 我是乐山市民: a place, not a person
    return name


def find(text: str) -> tuple[Finding, ...]:
    """Every piece of personal data in ``text``, in order, never overlapping."""
    spans: list[Finding] = []
    if any(char.isdigit() for char in text):
        for match in _ID18.finditer(text):
            if is_id_number(match.group()):
                spans.append(Finding("id_number", match.start(), match.end()))
        for match in _ID15.finditer(text):
            if is_id_number(match.group()):
                spans.append(Finding("id_number", match.start(), match.end()))
        for match in _MOBILE.finditer(text):
            spans.append(Finding("mobile", match.start(), match.end()))
        for match in _LANDLINE.finditer(text):
            spans.append(Finding("landline", match.start(), match.end()))
        for match in _LANDLINE_BARE.finditer(text):
            spans.append(Finding("landline", match.start("number"), match.end("number")))
        for match in _CARD.finditer(text):
            digits = _digits(match.group())
            if 13 <= len(digits) <= 19 and luhn_valid(digits):
                spans.append(Finding("bank_card", match.start(), match.end()))
    names = set()
    for match in _INTRODUCTION.finditer(text):
        name = _name_in(match.group("name"))
        if name is not None:
            names.add(name)
    for name in names:
        # The name once introduced is the citizen's wherever else it appears (a signature at the end).
        spans.extend(Finding("name", m.start(), m.end()) for m in re.finditer(re.escape(name), text))
    priority = {kind: index for index, kind in enumerate(KINDS)}
    spans.sort(key=lambda f: (f.start, priority[f.kind], -f.end))
    chosen: list[Finding] = []
    for finding in spans:
        if chosen and finding.start < chosen[-1].end:
            continue  # an ID number also passes as a card number; the first, most specific kind wins
        chosen.append(finding)
    return tuple(chosen)


def _masked(kind: str, value: str) -> str:
    if kind == "name":
        return value[0] + "*" * (len(value) - 1)
    if kind == "id_number":
        return value[:6] + "*" * (len(value) - 10) + value[-4:]
    # Numbers keep their separators and their last four digits; every other digit becomes a star.
    keep_from = len(value) - 4
    return "".join(c if (not c.isdigit() or i >= keep_from) else "*" for i, c in enumerate(value))


def mask(text: str) -> MaskedText:
    """``text`` with every finding masked (ID 511102********1231, mobile *******7000, name 赵**)."""
    found = find(text)
    if not found:
        return MaskedText(text, ())
    parts: list[str] = []
    position = 0
    for finding in found:
        parts.append(text[position : finding.start])
        parts.append(_masked(finding.kind, text[finding.start : finding.end]))
        position = finding.end
    parts.append(text[position:])
    return MaskedText("".join(parts), found)
