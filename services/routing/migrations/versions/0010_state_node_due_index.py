"""The node's inbox counted and paged from one index: ``ix_work_orders_state_node_due``.

``ix_work_orders_state_due`` (0007) had no ``node``, so every entry of a state's range read its
table row to check the node: the inbox's per-state count read 1,301 open work orders' rows to say
"more than 1,000" (~0.7 ms of SQLite's time a ListInbox on the 100k preload, issue 17). With
``node`` after ``state`` the counts are answered from the index alone (SQLite's covering index,
PostgreSQL's index-only scan) and a page reads only the rows it shows. ``state`` stays first, so
the sweep's open counts (``state IN``, no node) still read a range of it. It replaces 0007's index.

Revision ID: 0010
Revises: 0009

Idempotent: the baseline creates the tables from the current models, so on a fresh database there
is nothing left to do.
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

_NAME = "ix_work_orders_state_node_due"
_REPLACED = "ix_work_orders_state_due"


def upgrade() -> None:
    indexes = {i["name"] for i in sa.inspect(op.get_bind()).get_indexes("work_orders")}
    if _NAME not in indexes:
        op.create_index(_NAME, "work_orders", ["state", "node", "next_due", "work_order_id"])
    if _REPLACED in indexes:
        op.drop_index(_REPLACED, table_name="work_orders")


def downgrade() -> None:
    op.create_index(_REPLACED, "work_orders", ["state", "next_due", "work_order_id"])
    op.drop_index(_NAME, table_name="work_orders")
