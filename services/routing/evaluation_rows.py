"""第三方评价's rows: the month's sample and its items, the closed cases it is drawn from, the ratings."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, or_, select

from services.common.db import bounded_count
from services.common.timeutil import to_utc
from services.routing.domain import State
from services.routing.evaluation import ClosedCase, EvaluationSample, SampleItem, SamplingRule, UnitCount
from services.routing.models import EvaluationItemRow, EvaluationSampleRow, WorkOrderHistoryRow, WorkOrderRow
from services.routing.work_order_rows import SessionBound


class EvaluationTables(SessionBound):
    """``evaluation_samples`` and ``evaluation_items``."""

    def closed_between(self, start: datetime, end: datetime) -> list[ClosedCase]:
        h = WorkOrderHistoryRow
        closed_at = func.max(h.at).label("closed_at")
        query = (
            select(
                WorkOrderRow.case_id,
                WorkOrderRow.work_order_id,
                WorkOrderRow.unit_id,
                WorkOrderRow.category,
                WorkOrderRow.region_code,
                closed_at,
            )
            .join(h, h.work_order_id == WorkOrderRow.work_order_id)
            .where(WorkOrderRow.state == State.CLOSED.value, WorkOrderRow.node == self._node, h.action == "close")
            .group_by(
                WorkOrderRow.case_id,
                WorkOrderRow.work_order_id,
                WorkOrderRow.unit_id,
                WorkOrderRow.category,
                WorkOrderRow.region_code,
            )
            .having(and_(closed_at >= to_utc(start), closed_at < to_utc(end)))
        )
        return [
            ClosedCase(r.case_id, r.work_order_id, r.unit_id, to_utc(r.closed_at), r.category, r.region_code)
            for r in self.session.execute(query)
        ]

    def evaluation_sample(self, month: str) -> EvaluationSample | None:
        row = self.session.get(EvaluationSampleRow, month)
        if row is None:
            return None
        units = [UnitCount(u, closed, sampled) for u, closed, sampled in json.loads(row.units)]
        return EvaluationSample(
            row.month,
            row.node,
            row.seed,
            SamplingRule(row.percent, row.minimum),
            to_utc(row.drawn_at),
            row.drawn_by,
            units,
        )

    def save_evaluation_sample(self, sample: EvaluationSample, items: Sequence[SampleItem]) -> None:
        self.session.add(
            EvaluationSampleRow(
                month=sample.month,
                node=sample.node,
                seed=sample.seed,
                percent=sample.rule.percent,
                minimum=sample.rule.minimum,
                drawn_at=to_utc(sample.drawn_at),
                drawn_by=sample.drawn_by,
                units=json.dumps([[u.unit_id, u.closed, u.sampled] for u in sample.units]),
            )
        )
        self.session.add_all(
            EvaluationItemRow(
                month=i.month,
                case_id=i.case_id,
                work_order_id=i.work_order_id,
                unit_id=i.unit_id,
                rank=i.rank,
                closed_at=to_utc(i.closed_at),
                category=i.category,
                region_code=i.region_code,
                rating="",
                comment="",
                rated_by="",
            )
            for i in items
        )
        self.session.flush()

    def sample_items(
        self, month: str, *, unrated_only: bool, after: tuple[str, int] | None, limit: int
    ) -> tuple[list[SampleItem], int]:
        E = EvaluationItemRow
        conditions: list[Any] = [E.month == month]
        if unrated_only:
            conditions.append(E.rating == "")
        total = bounded_count(self.session, select(E.case_id).where(*conditions))
        if after is not None:
            unit, rank = after
            conditions.append(or_(E.unit_id > unit, and_(E.unit_id == unit, E.rank > rank)))
        rows = self.session.scalars(select(E).where(*conditions).order_by(E.unit_id, E.rank).limit(limit)).all()
        return [_sample_item(r) for r in rows], int(total)

    def sample_item(self, month: str, case_id: str) -> SampleItem | None:
        row = self.session.get(EvaluationItemRow, (month, case_id), with_for_update=True)
        return None if row is None else _sample_item(row)

    def save_rating(self, item: SampleItem) -> None:
        row = self.session.get(EvaluationItemRow, (item.month, item.case_id))
        assert row is not None
        row.rating, row.comment, row.rated_by = item.rating, item.comment, item.rated_by
        row.rated_at = None if item.rated_at is None else to_utc(item.rated_at)
        self.session.flush()

    def rated_by_unit(self, month: str) -> dict[str, int]:
        E = EvaluationItemRow
        rows = self.session.execute(
            select(E.unit_id, func.count()).where(E.month == month, E.rating != "").group_by(E.unit_id)
        )
        return {unit: int(n) for unit, n in rows}


def _sample_item(row: EvaluationItemRow) -> SampleItem:
    return SampleItem(
        month=row.month,
        case_id=row.case_id,
        work_order_id=row.work_order_id,
        unit_id=row.unit_id,
        closed_at=to_utc(row.closed_at),
        rank=row.rank,
        category=row.category,
        region_code=row.region_code,
        rating=row.rating,
        comment=row.comment,
        rated_by=row.rated_by,
        rated_at=None if row.rated_at is None else to_utc(row.rated_at),
    )
