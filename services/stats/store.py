"""The warehouse's SQLAlchemy adapter."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from services.common.regions import Tier
from services.stats.handlers import CaseFact
from services.stats.models import CaseFactRow

_TIER_COLUMN = {
    Tier.PROVINCE: CaseFactRow.province_code,
    Tier.CITY: CaseFactRow.city_code,
    Tier.COUNTY: CaseFactRow.county_code,
}


class SqlWarehouse:
    def __init__(self, session: Session) -> None:
        self.session = session

    def upsert_case_fact(self, fact: CaseFact) -> None:
        row = self.session.get(CaseFactRow, fact.case_id)
        if row is None:
            self.session.add(CaseFactRow(**fact.__dict__))
        elif fact.version > row.version:
            for key, value in fact.__dict__.items():
                setattr(row, key, value)

    def touch_case(self, case_id: str, *, state: str, version: int, at: datetime) -> None:
        self.session.execute(
            update(CaseFactRow)
            .where(CaseFactRow.case_id == case_id, CaseFactRow.version < version)
            .values(state=state, version=version, updated_at=at)
        )

    def count_received(
        self, *, tier: Tier, region_code: str, start: datetime | None, end: datetime | None, with_ids: bool
    ) -> tuple[int, list[str]]:
        conditions = [_TIER_COLUMN[tier] == region_code]
        if start is not None:
            conditions.append(CaseFactRow.submitted_at >= start)
        if end is not None:
            conditions.append(CaseFactRow.submitted_at < end)
        count = self.session.scalar(select(func.count()).select_from(CaseFactRow).where(*conditions)) or 0
        ids: list[str] = []
        if with_ids:
            ids = list(self.session.scalars(select(CaseFactRow.case_id).where(*conditions).order_by(CaseFactRow.case_id)))
        return int(count), ids
