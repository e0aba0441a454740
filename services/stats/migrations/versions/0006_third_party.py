"""第三方评价: the sample month and the evaluation group's rating of a case (``case_facts.tp_month``,
``case_facts.tp_rating``) and the ``tp_sampled``, ``tp_rated``, ``tp_satisfied`` counters in the rollups.

Revision ID: 0006
Revises: 0005

Idempotent: the columns are added when missing; the derived tables are rebuilt from the facts.
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    from services.stats.store import recreate_derived_tables

    columns = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("case_facts")}
    with op.batch_alter_table("case_facts") as batch:
        if "tp_month" not in columns:
            batch.add_column(sa.Column("tp_month", sa.String(7), nullable=False, server_default=""))
        if "tp_rating" not in columns:
            batch.add_column(sa.Column("tp_rating", sa.String(24), nullable=False, server_default=""))
    recreate_derived_tables(op.get_bind())


def downgrade() -> None:
    raise NotImplementedError("the derived tables are rebuilt from the facts: restore a backup instead")
