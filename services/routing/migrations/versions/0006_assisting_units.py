"""主办/协办: the assisting units a work order waits for (``work_orders.assisting``), for ListWorkOrders.

Revision ID: 0006
Revises: 0005

Idempotent: the baseline creates the tables from the current models, so on a fresh database there
is nothing left to do; older work orders have no assisting units.
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    columns = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("work_orders")}
    if "assisting" not in columns:
        with op.batch_alter_table("work_orders") as batch:
            batch.add_column(sa.Column("assisting", sa.String(1000), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("work_orders") as batch:
        batch.drop_column("assisting")
