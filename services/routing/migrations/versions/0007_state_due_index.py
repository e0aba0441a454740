"""The node's inbox reads only its work orders in the asked states: ``ix_work_orders_state_due``.

ListWorkOrders without a unit (the console's inbox of a clerk of the whole node, the overdue list)
asked for the open states in one IN: SQLite walked the due-date index over every work order and
PostgreSQL's generic plan read the whole table, and the total counted every match (issue 17). Each
state is now one ordered range of (state, next_due, work_order_id); it replaces the index on state
alone (its leading column).

Revision ID: 0007
Revises: 0006

Idempotent: the baseline creates the tables from the current models, so on a fresh database there
is nothing left to do.
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_NAME = "ix_work_orders_state_due"
_REPLACED = "ix_work_orders_state"


def upgrade() -> None:
    indexes = {i["name"] for i in sa.inspect(op.get_bind()).get_indexes("work_orders")}
    if _NAME not in indexes:
        op.create_index(_NAME, "work_orders", ["state", "next_due", "work_order_id"])
    if _REPLACED in indexes:
        op.drop_index(_REPLACED, table_name="work_orders")


def downgrade() -> None:
    op.create_index(_REPLACED, "work_orders", ["state"])
    op.drop_index(_NAME, table_name="work_orders")
