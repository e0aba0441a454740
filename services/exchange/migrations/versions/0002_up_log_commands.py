"""Commands climb on the up-log: a ``kind`` column, and the per-case sequence is unique for envelopes only.

The last sequence per case is read from the up-log itself (that index), so ``up_case_sequence``
(one more row written per case and batch) goes.

Revision ID: 0002
Revises: 0001

Idempotent: the baseline creates the tables from the current models, so on a fresh database
there is nothing left to do; a database from before gets the column and the partial index.
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_ONLY_ENVELOPES = sa.text("kind = 'envelope'")


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    if "kind" not in {c["name"] for c in inspector.get_columns("up_log")}:
        with op.batch_alter_table("up_log") as batch:
            batch.add_column(sa.Column("kind", sa.String(16), nullable=False, server_default="envelope"))
    indexes = {i["name"] for i in sa.inspect(op.get_bind()).get_indexes("up_log")}
    if "ux_up_log_case_sequence" in indexes:
        op.drop_index("ux_up_log_case_sequence", table_name="up_log")
    if "ux_up_log_envelope_case_sequence" not in indexes:
        op.create_index(
            "ux_up_log_envelope_case_sequence",
            "up_log",
            ["case_id", "case_sequence"],
            unique=True,
            sqlite_where=_ONLY_ENVELOPES,
            postgresql_where=_ONLY_ENVELOPES,
        )
    if sa.inspect(op.get_bind()).has_table("up_case_sequence"):
        op.drop_table("up_case_sequence")


def downgrade() -> None:
    op.create_table(
        "up_case_sequence",
        sa.Column("case_id", sa.String(64), primary_key=True),
        sa.Column("last_sequence", sa.BigInteger, nullable=False),
    )
    op.execute(
        "INSERT INTO up_case_sequence (case_id, last_sequence)"
        " SELECT case_id, max(case_sequence) FROM up_log WHERE kind = 'envelope' GROUP BY case_id"
    )
    op.drop_index("ux_up_log_envelope_case_sequence", table_name="up_log")
    op.execute("DELETE FROM up_log WHERE kind <> 'envelope'")
    op.create_index("ux_up_log_case_sequence", "up_log", ["case_id", "case_sequence"], unique=True)
    with op.batch_alter_table("up_log") as batch:
        batch.drop_column("kind")
