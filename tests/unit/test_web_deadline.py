"""A deadline shows as it did when a template macro wrote it: same text, same day, same markup."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from jinja2 import Environment
from lianxin.common.v1 import common_pb2

from services.web.app import CHINA, local_time
from services.web.console.common import DeadlineView, deadline_view

# The macro the lists and the case page used before DeadlineView.__html__ (services/web/templates,
# console/_deadline.html until issue 17's eighth pass), kept here as the reference.
MACRO = (
    '{% macro deadline(d) %}{% if d %}<span class="deadline{% if d.overdue %} overdue{% endif %}">'
    '{{ d.kind }} {{ d.due|local_time("%m-%d") }}{% if d.overdue %}（已超期{% if d.workdays is not none %}'
    " {{ -d.workdays }} 个工作日{% endif %}）{% elif d.workdays is not none %}（剩 {{ d.workdays }} 个工作日）"
    "{% endif %}</span>{% else %}—{% endif %}{% endmacro %}"
)


def _env() -> Environment:
    env = Environment(autoescape=True)
    env.filters["local_time"] = local_time
    return env


def _ts(when: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(when)
    return ts


@pytest.mark.parametrize("overdue", [True, False])
@pytest.mark.parametrize("workdays", [None, 0, 3, -2])
@pytest.mark.parametrize("kind", ["办理时限", "<script>&"])
def test_a_deadline_renders_as_the_macro_did(overdue: bool, workdays: int | None, kind: str) -> None:
    view = DeadlineView(
        kind=kind, due=_ts(datetime(2026, 12, 20, 17, 30)), day="12-21", overdue=overdue, workdays=workdays
    )
    env = _env()
    old = env.from_string(MACRO + "{{ deadline(d) }}|{{ deadline(none) }}").render(d=view)
    new = env.from_string('{{ d }}|{{ none or "—" }}').render(d=view)
    assert new == old


@pytest.mark.parametrize(
    "when",
    [
        datetime(2026, 12, 20, 15, 59, 59, 999999, tzinfo=UTC),  # 23:59:59.999999 in China
        datetime(2026, 12, 20, 16, 0, tzinfo=UTC),  # midnight in China: the next day
        datetime(1969, 12, 31, 15, 59, 59, 500000, tzinfo=UTC),  # before 1970: negative seconds, positive nanos
        datetime(1970, 1, 1, tzinfo=UTC),  # unset: no day
        datetime(2100, 2, 28, 20, 0, tzinfo=UTC),
    ],
)
def test_the_due_day_and_working_days_are_those_of_the_time_in_china(when: datetime) -> None:
    asked: list[Any] = []

    def workdays_until(today: Any, due: Any) -> int:
        asked.append(due)
        return 1

    page: Any = SimpleNamespace(gateway=SimpleNamespace(workdays_until=workdays_until))
    deadline = common_pb2.Deadline(kind="settle", due_at=_ts(when), overdue=True)
    view = deadline_view(page, deadline)
    assert view.day == local_time(deadline.due_at, "%m-%d")
    assert asked == [deadline.due_at.ToDatetime(tzinfo=UTC).astimezone(CHINA).date()]
    assert (view.kind, view.overdue, view.workdays) == ("办理时限", True, 1)
