"""第三方评价 (third-party sampled evaluation): the month's sample, its rule and the group's ratings.

Plain domain code (no gRPC, database or broker). Each statistical month a node draws, per handling
unit, a sample of the cases it closed in that month for an evaluation group (experts, cadres, public
representatives: the operator role ``evaluator``), who rate each sampled case once.

The draw is reproducible and auditable without this code: every closed case of a unit gets the key
``sha256("<seed>|<month>|<unit>|<case_id>")`` (hex), the unit's cases are ordered by that key, and
the first ``size(closed)`` are the sample, where ``size(n) = min(n, max(minimum, ceil(n × percent /
100)))``. The same seed, month and closed cases give the same sample, in any language; the seed and
the rule are recorded with the sample (docs/routing.md "第三方评价").
"""

from __future__ import annotations

import hashlib
import math
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, timezone

from services.common.errors import FailedPrecondition, InvalidArgument

CHINA = timezone(timedelta(hours=8))
DEFAULT_PERCENT = 10
DEFAULT_MINIMUM = 3
MAX_MINIMUM = 1000
COMMENT_MAX = 500
# Ratings as the proto ``Satisfaction`` names them without the prefix.
RATINGS = ("SATISFIED", "BASICALLY_SATISFIED", "UNSATISFIED")
_SEED = re.compile(r"[0-9A-Za-z_-]{1,64}")
_MONTH = re.compile(r"(\d{4})-(\d{2})")


@dataclass(frozen=True)
class SamplingRule:
    """How many of a unit's closed cases are sampled: ``percent`` of them, at least ``minimum``
    (every one when the unit closed fewer)."""

    percent: int = DEFAULT_PERCENT
    minimum: int = DEFAULT_MINIMUM

    def size(self, closed: int) -> int:
        if closed <= 0:
            return 0
        return min(closed, max(self.minimum, math.ceil(closed * self.percent / 100)))


def check_rule(percent: int, minimum: int) -> SamplingRule:
    """The rule of a request; 0 takes each default. Out of range → INVALID_ARGUMENT naming the field."""
    if percent == 0:
        percent = DEFAULT_PERCENT
    if not 1 <= percent <= 100:
        raise InvalidArgument("percent", f"must be 1..100 (0 takes {DEFAULT_PERCENT}), got {percent}")
    if minimum == 0:
        minimum = DEFAULT_MINIMUM
    if not 1 <= minimum <= MAX_MINIMUM:
        raise InvalidArgument("minimum", f"must be 1..{MAX_MINIMUM} (0 takes {DEFAULT_MINIMUM}), got {minimum}")
    return SamplingRule(percent, minimum)


def check_month(text: str) -> str:
    """``YYYY-MM``; anything else → INVALID_ARGUMENT on ``month``."""
    value = (text or "").strip()
    match = _MONTH.fullmatch(value)
    if match is None or not (1900 < int(match.group(1)) < 2200 and 1 <= int(match.group(2)) <= 12):
        raise InvalidArgument("month", f"expected YYYY-MM, got {text!r}")
    return value


def check_seed(text: str) -> str:
    """The seed as given, or a fresh random one when empty (it is recorded either way)."""
    value = (text or "").strip()
    if not value:
        return secrets.token_hex(8)
    if _SEED.fullmatch(value) is None:
        raise InvalidArgument("seed", "letters, digits, '-' or '_' only, at most 64")
    return value


def month_bounds(month: str, start_day: int = 1) -> tuple[datetime, datetime]:
    """[start, end) in UTC of statistical month ``month`` (Shanghai midnights), as the warehouse
    counts it: with ``start_day`` d > 1 the month that ends on the (d-1)-th names the period."""
    year, number = (int(p) for p in check_month(month).split("-"))
    index = year * 12 + number - 1
    if start_day == 1:
        first = date(year, number, 1)
        last = date((index + 1) // 12, (index + 1) % 12 + 1, 1)
    else:
        first = date((index - 1) // 12, (index - 1) % 12 + 1, start_day)
        last = date(year, number, start_day)
    start = datetime.combine(first, time.min, tzinfo=CHINA).astimezone(UTC)
    end = datetime.combine(last, time.min, tzinfo=CHINA).astimezone(UTC)
    return start, end


def check_month_begun(month: str, now: datetime, start_day: int = 1) -> tuple[datetime, datetime]:
    """The month's bounds; a month that has not begun has closed no case → INVALID_ARGUMENT."""
    start, end = month_bounds(month, start_day)
    if start > now:
        raise InvalidArgument("month", f"{month} has not begun: no case was closed in it yet")
    return start, end


@dataclass(frozen=True)
class ClosedCase:
    """A case this node closed: the population a month's sample is drawn from."""

    case_id: str
    work_order_id: str
    unit_id: str
    closed_at: datetime
    category: str = ""
    region_code: str = ""


def sample_key(seed: str, month: str, unit_id: str, case_id: str) -> str:
    """The case's place in its unit's draw (smaller first): hex SHA-256 of ``seed|month|unit|case``."""
    return hashlib.sha256(f"{seed}|{month}|{unit_id}|{case_id}".encode()).hexdigest()


@dataclass(frozen=True)
class UnitCount:
    unit_id: str
    closed: int
    sampled: int
    rated: int = 0


def draw(
    closed: Iterable[ClosedCase], *, seed: str, month: str, rule: SamplingRule
) -> tuple[list[ClosedCase], list[UnitCount]]:
    """The sample (by unit, then by key) and each unit's counts. Cases without a unit are not drawn."""
    by_unit: dict[str, dict[str, ClosedCase]] = {}
    for case in closed:
        if case.unit_id:
            by_unit.setdefault(case.unit_id, {})[case.case_id] = case
    chosen: list[ClosedCase] = []
    counts: list[UnitCount] = []
    for unit in sorted(by_unit):
        cases = by_unit[unit]
        ranked = sorted(cases, key=lambda c: sample_key(seed, month, unit, c))
        size = rule.size(len(ranked))
        chosen.extend(cases[c] for c in ranked[:size])
        counts.append(UnitCount(unit, len(ranked), size))
    return chosen, counts


@dataclass
class SampleItem:
    """One sampled case and, once given, the group's rating."""

    month: str
    case_id: str
    work_order_id: str
    unit_id: str
    closed_at: datetime
    rank: int
    category: str = ""
    region_code: str = ""
    rating: str = ""  # one of RATINGS once rated
    comment: str = ""
    rated_by: str = ""
    rated_at: datetime | None = None

    def rate(self, rating: str, comment: str, *, evaluator: str, at: datetime) -> ThirdPartyRated:
        """The one rating of this case; a second one is refused (it would replace what was counted)."""
        if self.rating:
            raise FailedPrecondition(
                f"case {self.case_id} of the {self.month} sample was already rated by {self.rated_by}"
            )
        self.rating, self.comment, self.rated_by, self.rated_at = rating, comment, evaluator, at
        return ThirdPartyRated(
            case_id=self.case_id,
            month=self.month,
            rating=rating,
            comment=comment,
            work_order_id=self.work_order_id,
            unit_id=self.unit_id,
            evaluator=evaluator,
            at=at,
        )


@dataclass
class EvaluationSample:
    """A month's drawn sample at this node, with what an auditor needs to draw it again."""

    month: str
    node: str
    seed: str
    rule: SamplingRule
    drawn_at: datetime
    drawn_by: str
    units: list[UnitCount] = field(default_factory=list)


def check_rating(rating: str, comment: str) -> tuple[str, str]:
    """满意/基本满意/不满意 and a comment (required with 不满意, at most 500 characters)."""
    if rating not in RATINGS:
        raise InvalidArgument("rating", "must be satisfied, basically satisfied or unsatisfied")
    text = (comment or "").strip()
    if len(text) > COMMENT_MAX:
        raise InvalidArgument("comment", f"at most {COMMENT_MAX} characters, got {len(text)}")
    if rating == "UNSATISFIED" and not text:
        raise InvalidArgument("comment", "say why the handling is unsatisfactory (不满意须说明理由)")
    return rating, text


@dataclass(frozen=True)
class CaseSampled:
    """Event (proto ``CaseSampled``): the case is in the month's sample."""

    case_id: str
    month: str
    seed: str
    work_order_id: str
    unit_id: str
    at: datetime


@dataclass(frozen=True)
class ThirdPartyRated:
    """Event (proto ``ThirdPartyRated``): the evaluation group rated the sampled case."""

    case_id: str
    month: str
    rating: str
    comment: str
    work_order_id: str
    unit_id: str
    evaluator: str
    at: datetime


def new_sample(
    closed: Sequence[ClosedCase],
    *,
    month: str,
    node: str,
    seed: str,
    rule: SamplingRule,
    actor: str,
    at: datetime,
) -> tuple[EvaluationSample, list[SampleItem], list[CaseSampled]]:
    """Draw the month's sample: its record, its items and one ``CaseSampled`` per case."""
    chosen, counts = draw(closed, seed=seed, month=month, rule=rule)
    items: list[SampleItem] = []
    rank_in_unit: dict[str, int] = {}
    for case in chosen:
        rank_in_unit[case.unit_id] = rank_in_unit.get(case.unit_id, 0) + 1
        items.append(
            SampleItem(
                month=month,
                case_id=case.case_id,
                work_order_id=case.work_order_id,
                unit_id=case.unit_id,
                closed_at=case.closed_at,
                rank=rank_in_unit[case.unit_id],
                category=case.category,
                region_code=case.region_code,
            )
        )
    sample = EvaluationSample(month, node, seed, rule, at, actor, counts)
    events = [CaseSampled(i.case_id, month, seed, i.work_order_id, i.unit_id, at) for i in items]
    return sample, items, events
