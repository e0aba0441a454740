"""远程会商: when a consultation's minutes were first recorded on a case (``case_facts.consulted_at``) and a
``consulted`` counter in the rollups.

Revision ID: 0007
Revises: 0006

Idempotent: the column is added when missing; the derived tables are rebuilt from the facts.
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    from services.stats.store import recreate_derived_tables

    columns = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("case_facts")}
    if "consulted_at" not in columns:
        with op.batch_alter_table("case_facts") as batch:
            batch.add_column(sa.Column("consulted_at", sa.DateTime(timezone=True), nullable=True))
    recreate_derived_tables(op.get_bind())


def downgrade() -> None:
    raise NotImplementedError("the derived tables are rebuilt from the facts: restore a backup instead")
