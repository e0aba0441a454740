"""video_case_owners: the owner and epoch of each case as this node last heard, for video's events.

Revision ID: 0002
Revises: 0001

Idempotent: the baseline creates the tables from the current models, so on a fresh database there
is nothing left to do; a database from before gets the table.
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if "video_case_owners" in sa.inspect(op.get_bind()).get_table_names():
        return
    op.create_table(
        "video_case_owners",
        sa.Column("case_id", sa.String(64), primary_key=True),
        sa.Column("owner_node", sa.String(6), nullable=False),
        sa.Column("owner_epoch", sa.Integer(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("video_case_owners")
