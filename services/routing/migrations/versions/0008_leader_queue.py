"""领导批转: the leader class a work order waits for (``work_orders.leader_queue``), for ListLeaderQueue.

Revision ID: 0008
Revises: 0007

Idempotent: the baseline creates the tables from the current models, so on a fresh database there
is nothing left to do; older work orders wait for no leader.
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    columns = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("work_orders")}
    if "leader_queue" not in columns:
        with op.batch_alter_table("work_orders") as batch:
            batch.add_column(sa.Column("leader_queue", sa.String(64), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("work_orders") as batch:
        batch.drop_column("leader_queue")
