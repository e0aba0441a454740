"""A unit's inbox reads only its work orders in the asked states: ``ix_work_orders_unit_state``.

ListWorkOrders of a unit in the open states (and its count) walked the unit's whole history on
``ix_work_orders_unit_due`` and filtered out the closed work orders (issue 20).

Revision ID: 0003
Revises: 0002

Idempotent: the baseline creates the tables from the current models, so on a fresh database
there is nothing left to do.
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_NAME = "ix_work_orders_unit_state"


def upgrade() -> None:
    if _NAME not in {i["name"] for i in sa.inspect(op.get_bind()).get_indexes("work_orders")}:
        op.create_index(_NAME, "work_orders", ["unit_id", "state", "next_due", "work_order_id"])


def downgrade() -> None:
    op.drop_index(_NAME, table_name="work_orders")
