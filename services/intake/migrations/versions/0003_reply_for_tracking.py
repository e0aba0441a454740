"""The citizen's TrackCase shows the latest reply and the handling deadline: two columns on ``cases``.

Revision ID: 0003
Revises: 0002

Idempotent: the baseline creates the tables from the current models, so on a fresh database there
is nothing left to do; a database from before gets the columns (empty until the next reply or
handling event of each case).
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    columns = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("cases")}
    with op.batch_alter_table("cases") as batch:
        if "reply_text" not in columns:
            batch.add_column(sa.Column("reply_text", sa.Text, nullable=True, server_default=""))
        if "handling_due" not in columns:
            batch.add_column(sa.Column("handling_due", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("cases") as batch:
        batch.drop_column("handling_due")
        batch.drop_column("reply_text")
