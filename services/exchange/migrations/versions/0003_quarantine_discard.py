"""Quarantine discard: how an item left quarantine (replayed or discarded, by whom, why), and skips.

Revision ID: 0003
Revises: 0002

Idempotent: the baseline creates the tables from the current models, so on a fresh database there
is nothing left to do; a database from before gets the columns and the ``sequence_skip`` table.
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_COLUMNS = (
    ("disposition", sa.String(16)),
    ("resolved_by", sa.String(64)),
    ("note", sa.Text()),
)


def upgrade() -> None:
    present = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("quarantine")}
    missing = [(name, kind) for name, kind in _COLUMNS if name not in present]
    if missing:
        with op.batch_alter_table("quarantine") as batch:
            for name, kind in missing:
                batch.add_column(sa.Column(name, kind, nullable=True))
    if not sa.inspect(op.get_bind()).has_table("sequence_skip"):
        op.create_table(
            "sequence_skip",
            sa.Column("child_node", sa.String(16), nullable=False),
            sa.Column("case_id", sa.String(64), nullable=False),
            sa.Column("case_sequence", sa.BigInteger(), nullable=False),
            sa.Column("quarantine_id", sa.BigInteger(), nullable=False),
            sa.Column("skipped_at", sa.DateTime(timezone=True), nullable=False),
            sa.PrimaryKeyConstraint("child_node", "case_id", "case_sequence", name="pk_sequence_skip"),
        )


def downgrade() -> None:
    op.drop_table("sequence_skip")
    with op.batch_alter_table("quarantine") as batch:
        for name, _ in reversed(_COLUMNS):
            batch.drop_column(name)
