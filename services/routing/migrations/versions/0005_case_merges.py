"""并单: the cases merged into a main case at this node (``case_merges``), for MergeCases / UnmergeCase.

Revision ID: 0005
Revises: 0004

Idempotent: the baseline creates the tables from the current models, so on a fresh database there
is nothing left to do.
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if not sa.inspect(op.get_bind()).has_table("case_merges"):
        op.create_table(
            "case_merges",
            sa.Column("case_id", sa.String(32), primary_key=True),
            sa.Column("main_case_id", sa.String(32), nullable=False),
            sa.Column("merged_at", sa.DateTime(timezone=True), nullable=False),
        )
        op.create_index("ix_case_merges_main_case_id", "case_merges", ["main_case_id"])


def downgrade() -> None:
    op.drop_table("case_merges")
