"""领导批转: when a leader's instruction was recorded (``case_facts.instructed_at``) and an
``instructed`` counter in the rollups.

Revision ID: 0005
Revises: 0004

Idempotent: the column is added when missing; the derived tables are rebuilt from the facts.
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    from services.stats.store import recreate_derived_tables

    columns = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("case_facts")}
    if "instructed_at" not in columns:
        with op.batch_alter_table("case_facts") as batch:
            batch.add_column(sa.Column("instructed_at", sa.DateTime(timezone=True), nullable=True))
    recreate_derived_tables(op.get_bind())


def downgrade() -> None:
    raise NotImplementedError("the derived tables are rebuilt from the facts: restore a backup instead")
