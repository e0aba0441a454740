"""The warehouse's business rules: statistical months, folding case events into a fact, metric definitions.

Plain code (no gRPC, SQLAlchemy or broker): every definition printed in ``docs/stats.md`` lives here
as ``DEFINITIONS`` and as the functions that compute the figure from ``Aggregates``. Read in this order:
``months`` (the statistical month, ``StatsConfig``), ``facts`` (``CaseEvent`` → ``CaseFact``: folding a
case's events, where a case counts), ``metrics`` (definitions, per-case counters, figures),
``ranking`` (一月一通报). This package gathers their names so callers import from one place.

Cohort rule. Every metric of a period is computed over the *cases submitted in that period*
(by statistical month, or by ``submitted_at`` for a free period), looked at as of a moment
(``as_of``, normally now). "Due" means the relevant deadline has passed by ``as_of`` or the duty
was done before it; so the figures of a month settle as its deadlines pass.
"""

from __future__ import annotations

from services.stats.domain.facts import (
    ACCEPT_KINDS,
    FOLLOW_MAIN,
    HANDLING_KINDS,
    NOT_OWED_STATES,
    ONLINE_CHANNELS,
    SATISFIED_RATINGS,
    SUPERVISION_LEVELS,
    TERMINAL_STATES,
    CachedCalendar,
    CaseEvent,
    CaseFact,
    add_workdays,
    case_snapshot,
    fact_from_registration,
    fold_case,
    receiving_node,
    region_columns,
    workdays_between,
)
from services.stats.domain.metrics import (
    COUNT_METRICS,
    COUNTERS,
    DEFINITIONS,
    DEFINITIONS_ZH,
    LOWER_IS_BETTER,
    METRIC_COUNTERS,
    NOTICE_COUNTERS,
    NUMERATOR_PREDICATE,
    REGISTERING_NODE_METRICS,
    REPLY_DAY_METRICS,
    Aggregates,
    MetricValue,
    check_metric_names,
    compute,
    counters,
    next_window,
    p90,
)
from services.stats.domain.months import (
    StatsConfig,
    month_bounds,
    month_name,
    parse_month,
    shift_month,
    stat_month_of,
    stat_month_of_date,
    year_months,
)
from services.stats.domain.ranking import (
    RankRow,
    bottom_keys,
    rank,
)

__all__ = [
    "ACCEPT_KINDS",
    "COUNTERS",
    "COUNT_METRICS",
    "DEFINITIONS",
    "DEFINITIONS_ZH",
    "FOLLOW_MAIN",
    "HANDLING_KINDS",
    "LOWER_IS_BETTER",
    "METRIC_COUNTERS",
    "NOTICE_COUNTERS",
    "NOT_OWED_STATES",
    "NUMERATOR_PREDICATE",
    "ONLINE_CHANNELS",
    "REGISTERING_NODE_METRICS",
    "REPLY_DAY_METRICS",
    "SATISFIED_RATINGS",
    "SUPERVISION_LEVELS",
    "TERMINAL_STATES",
    "Aggregates",
    "CachedCalendar",
    "CaseEvent",
    "CaseFact",
    "MetricValue",
    "RankRow",
    "StatsConfig",
    "add_workdays",
    "bottom_keys",
    "case_snapshot",
    "check_metric_names",
    "compute",
    "counters",
    "fact_from_registration",
    "fold_case",
    "month_bounds",
    "month_name",
    "next_window",
    "p90",
    "parse_month",
    "rank",
    "receiving_node",
    "region_columns",
    "shift_month",
    "stat_month_of",
    "stat_month_of_date",
    "workdays_between",
    "year_months",
]
