"""The sweep's pass over provisional deadlines reads those work orders only: ``ix_work_orders_provisional``.

It walked every work order by id and filtered out those without a provisional deadline, on every
sweep (issue 20). A partial index of the provisional ones, in id order, serves it.

Revision ID: 0004
Revises: 0003

Idempotent: the baseline creates the tables from the current models, so on a fresh database
there is nothing left to do.
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_NAME = "ix_work_orders_provisional"


def upgrade() -> None:
    from services.routing.models import PROVISIONAL_SQL

    if _NAME not in {i["name"] for i in sa.inspect(op.get_bind()).get_indexes("work_orders")}:
        where = sa.text(PROVISIONAL_SQL)
        op.create_index(_NAME, "work_orders", ["work_order_id"], sqlite_where=where, postgresql_where=where)


def downgrade() -> None:
    op.drop_index(_NAME, table_name="work_orders")
