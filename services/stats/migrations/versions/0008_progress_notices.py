"""办事进度推送: the notices sent and given up per case (``case_facts.notices_sent``, ``notices_failed``), the
citizen's opt-out (``notices_off``) and their counters in the rollups.

Revision ID: 0008
Revises: 0007

Idempotent: the columns are added when missing; the derived tables are rebuilt from the facts.
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    from services.stats.store import recreate_derived_tables

    columns = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("case_facts")}
    with op.batch_alter_table("case_facts") as batch:
        for name in ("notices_sent", "notices_failed"):
            if name not in columns:
                batch.add_column(sa.Column(name, sa.Integer(), nullable=False, server_default="0"))
        if "notices_off" not in columns:
            batch.add_column(sa.Column("notices_off", sa.Boolean(), nullable=False, server_default=sa.false()))
    recreate_derived_tables(op.get_bind())


def downgrade() -> None:
    raise NotImplementedError("the derived tables are rebuilt from the facts: restore a backup instead")
