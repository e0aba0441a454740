"""Region rollups and daily counts; INTEGER rollup counters with server defaults; fact indexes.

Revision ID: 0002
Revises: 0001

The derived tables (rollups, region rollups, days over, daily counts) hold nothing that is not in
the facts: they are dropped, created in their current shape and rebuilt from the facts. Idempotent:
on a fresh database (the baseline already created the current models) it rebuilds empty tables.
The fact indexes by region and time now carry region and category (hotspot counts read only the
index); the index on state alone served no query.
"""

from alembic import op
from sqlalchemy.orm import Session

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    from services.stats.models import DERIVED_TABLES, CaseFactRow
    from services.stats.store import SqlWarehouse

    bind = op.get_bind()
    for table in reversed(DERIVED_TABLES):
        table.drop(bind, checkfirst=True)
    for table in DERIVED_TABLES:
        table.create(bind)
    for name in ("ix_case_facts_province", "ix_case_facts_city", "ix_case_facts_county", "ix_case_facts_state"):
        op.execute(f"DROP INDEX IF EXISTS {name}")
    for index in CaseFactRow.__table__.indexes:
        index.create(bind, checkfirst=True)
    with Session(bind=bind) as session:
        SqlWarehouse(session).rebuild_rollups()


def downgrade() -> None:
    raise NotImplementedError("the derived tables of 0001 are rebuilt from the facts: restore a backup instead")
