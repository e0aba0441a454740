"""主办/协办: the assisting units late with their answer (``case_facts.assist_late_units``) and an
``assist_late`` counter in the rollups.

Revision ID: 0004
Revises: 0003

Idempotent: the column is added when missing; the derived tables are rebuilt from the facts.
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    from services.stats.store import recreate_derived_tables

    columns = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("case_facts")}
    if "assist_late_units" not in columns:
        with op.batch_alter_table("case_facts") as batch:
            batch.add_column(sa.Column("assist_late_units", sa.String(1000), nullable=False, server_default=""))
    recreate_derived_tables(op.get_bind())


def downgrade() -> None:
    raise NotImplementedError("the derived tables are rebuilt from the facts: restore a backup instead")
