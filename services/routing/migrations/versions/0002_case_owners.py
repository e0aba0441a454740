"""Who owns the subtree's cases this node does not handle (``case_owners``), for a supervisor's 督办.

Revision ID: 0002
Revises: 0001

Idempotent: the baseline creates the tables from the current models, so on a fresh database there
is nothing left to do; a database from before gets the table, filled by the replicas that arrive
from then on (a case with none since then is still NOT_FOUND to a supervisor above its owner).
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if not sa.inspect(op.get_bind()).has_table("case_owners"):
        op.create_table(
            "case_owners",
            sa.Column("case_id", sa.String(32), primary_key=True),
            sa.Column("owner_node", sa.String(6), nullable=False),
            sa.Column("owner_epoch", sa.Integer, nullable=False),
            sa.Column("version", sa.Integer, nullable=False),
        )


def downgrade() -> None:
    op.drop_table("case_owners")
