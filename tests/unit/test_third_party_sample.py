"""第三方评价: the month's sample is reproducible from its seed, month and closed cases; the rule and
the ratings are checked field by field (services/routing/evaluation.py)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import pytest

from services.common.errors import FailedPrecondition, InvalidArgument
from services.routing.evaluation import (
    ClosedCase,
    SamplingRule,
    check_month,
    check_month_begun,
    check_rating,
    check_rule,
    check_seed,
    draw,
    month_bounds,
    new_sample,
)

AT = datetime(2026, 11, 20, 8, tzinfo=UTC)


def _closed(unit: str, n: int, start: int = 0) -> list[ClosedCase]:
    return [ClosedCase(f"511102-20261101-{start + i:06d}", f"WO-{start + i}", unit, AT) for i in range(n)]


POPULATION = _closed("lszq-sthjj", 40) + _closed("lszq-jtj", 5, 100) + _closed("lszq-zjj", 2, 200)


def test_each_unit_gives_its_percent_with_a_minimum_and_all_when_it_closed_fewer() -> None:
    _, counts = draw(POPULATION, seed="audit-2026-11", month="2026-11", rule=SamplingRule(10, 3))
    assert [(c.unit_id, c.closed, c.sampled) for c in counts] == [
        ("lszq-jtj", 5, 3),  # 10 % is 1, the minimum is 3
        ("lszq-sthjj", 40, 4),  # 10 % of 40
        ("lszq-zjj", 2, 2),  # fewer than the minimum: every one
    ]
    assert SamplingRule(25, 1).size(9) == 3  # ceil(2.25)
    assert SamplingRule(10, 3).size(0) == 0


def test_the_same_seed_month_and_closed_cases_give_the_same_sample_in_any_order() -> None:
    first, _ = draw(POPULATION, seed="audit-2026-11", month="2026-11", rule=SamplingRule())
    again, _ = draw(list(reversed(POPULATION)), seed="audit-2026-11", month="2026-11", rule=SamplingRule())
    assert [c.case_id for c in first] == [c.case_id for c in again]
    other_seed, _ = draw(POPULATION, seed="audit-2026-11b", month="2026-11", rule=SamplingRule())
    other_month, _ = draw(POPULATION, seed="audit-2026-11", month="2026-12", rule=SamplingRule())
    assert {c.case_id for c in first} != {c.case_id for c in other_seed}
    assert {c.case_id for c in first} != {c.case_id for c in other_month}


def test_an_auditor_recomputes_a_unit_s_sample_with_sha256_alone() -> None:
    """The documented rule (docs/routing.md): order by sha256("seed|month|unit|case"), take the first."""
    chosen, _ = draw(POPULATION, seed="s1", month="2026-11", rule=SamplingRule(10, 3))
    unit = "lszq-sthjj"
    ids = [c.case_id for c in POPULATION if c.unit_id == unit]
    by_hand = sorted(ids, key=lambda i: hashlib.sha256(f"s1|2026-11|{unit}|{i}".encode()).hexdigest())[:4]
    assert [c.case_id for c in chosen if c.unit_id == unit] == by_hand


def test_a_drawn_sample_ranks_each_unit_and_emits_one_event_per_case() -> None:
    sample, items, events = new_sample(
        POPULATION, month="2026-11", node="511102", seed="s1", rule=SamplingRule(), actor="sup", at=AT
    )
    assert sample.seed == "s1" and sample.drawn_by == "sup" and len(items) == 9
    assert [i.rank for i in items if i.unit_id == "lszq-jtj"] == [1, 2, 3]
    assert [e.case_id for e in events] == [i.case_id for i in items]
    assert {e.month for e in events} == {"2026-11"}


def test_a_sampled_case_takes_one_rating() -> None:
    _, items, _ = new_sample(
        _closed("u", 1), month="2026-11", node="511102", seed="s", rule=SamplingRule(), actor="a", at=AT
    )
    event = items[0].rate("BASICALLY_SATISFIED", "答复及时", evaluator="eval-1", at=AT)
    assert (event.rating, event.evaluator, event.unit_id) == ("BASICALLY_SATISFIED", "eval-1", "u")
    with pytest.raises(FailedPrecondition, match="already rated by eval-1"):
        items[0].rate("SATISFIED", "", evaluator="eval-2", at=AT)


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda: check_rule(101, 3), "percent"),
        (lambda: check_rule(-1, 3), "percent"),
        (lambda: check_rule(10, 1001), "minimum"),
        (lambda: check_rule(10, -2), "minimum"),
        (lambda: check_month("2026-13"), "month"),
        (lambda: check_month("2026/11"), "month"),
        (lambda: check_month(""), "month"),
        (lambda: check_seed("含中文"), "seed"),
        (lambda: check_seed("x" * 65), "seed"),
        (lambda: check_rating("", ""), "rating"),
        (lambda: check_rating("UNSATISFIED", "  "), "comment"),
        (lambda: check_rating("SATISFIED", "很" * 501), "comment"),
        (lambda: check_month_begun("2027-01", AT), "month"),
    ],
)
def test_bad_input_names_its_field(call: object, field: str) -> None:
    with pytest.raises(InvalidArgument) as refused:
        call()  # type: ignore[operator]
    assert refused.value.field == field


def test_defaults_and_a_random_seed_when_none_is_given() -> None:
    assert check_rule(0, 0) == SamplingRule(10, 3)
    seed = check_seed("")
    assert len(seed) == 16 and seed != check_seed("")
    assert check_rating("UNSATISFIED", " 答复未解决问题 ") == ("UNSATISFIED", "答复未解决问题")


def test_statistical_months_are_shanghai_months_like_the_warehouse_s() -> None:
    start, end = month_bounds("2026-11")
    assert (start.isoformat(), end.isoformat()) == ("2026-10-31T16:00:00+00:00", "2026-11-30T16:00:00+00:00")
    start, end = month_bounds("2026-01", start_day=21)  # 2025-12-21 .. 2026-01-21
    assert (start.isoformat(), end.isoformat()) == ("2025-12-20T16:00:00+00:00", "2026-01-20T16:00:00+00:00")


def test_the_warehouse_counts_the_group_s_ratings_apart_from_the_citizen_s() -> None:
    """stats: case_sampled and third_party_rated fold into the fact; the two rates never mix."""
    from services.common.calendar import ChineseWorkingCalendar
    from services.stats.domain import (
        COUNTERS,
        Aggregates,
        CaseEvent,
        CaseFact,
        StatsConfig,
        compute,
        counters,
        fold_case,
    )

    base = CaseFact(
        case_id="c1", region_code="511102", province_code="510000", city_code="511100", county_code="511102",
        registering_node="511102", channel="web", category="环境保护", state="CLOSED", version=1,
        submitted_at=AT, updated_at=AT, satisfaction="satisfied",
    )  # fmt: skip
    events = [
        CaseEvent("c1", 7, "case_sampled", AT, sample_month="2026-11"),
        CaseEvent("c1", 8, "third_party_rated", AT, sample_month="2026-11", third_party_rating="unsatisfied"),
    ]
    fact = fold_case(events, base=base, config=StatsConfig(), calendar=ChineseWorkingCalendar())
    assert fact is not None and (fact.tp_month, fact.tp_rating) == ("2026-11", "unsatisfied")
    agg = Aggregates()
    for name, hit in zip(COUNTERS, counters(fact, AT), strict=True):
        setattr(agg, name, hit)
    assert (agg.tp_sampled, agg.tp_rated, agg.tp_satisfied) == (1, 1, 0)
    assert compute("third_party_satisfaction_rate", agg).value == 0.0
    assert compute("satisfaction_rate", agg).value == 1.0  # the citizen's own rating stands
    assert compute("third_party_sampled", agg).numerator == 1
