"""并单: the main case a case was merged into (``cases.merged_into``), shown by TrackCase.

Revision ID: 0006
Revises: 0005

Idempotent: the baseline creates the tables from the current models, so on a fresh database there
is nothing left to do.
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    columns = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("cases")}
    if "merged_into" not in columns:
        with op.batch_alter_table("cases") as batch:
            batch.add_column(sa.Column("merged_into", sa.String(32), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("cases") as batch:
        batch.drop_column("merged_into")
