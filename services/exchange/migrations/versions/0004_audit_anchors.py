"""Audit anchors: the heads of each child's audit chain, held by the parent.

Revision ID: 0004
Revises: 0003

Idempotent: the baseline creates the tables from the current models, so on a fresh database there
is nothing left to do; a database from before gets the table.
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if not sa.inspect(op.get_bind()).has_table("audit_anchor"):
        op.create_table(
            "audit_anchor",
            sa.Column("child_node", sa.String(16), nullable=False),
            sa.Column("sequence", sa.BigInteger(), nullable=False),
            sa.Column("hash", sa.String(64), nullable=False),
            sa.Column("at", sa.DateTime(timezone=True), nullable=True),
            sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
            sa.PrimaryKeyConstraint("child_node", "sequence", name="pk_audit_anchor"),
        )


def downgrade() -> None:
    op.drop_table("audit_anchor")
