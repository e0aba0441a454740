"""video_consultations: remote consultations (远程会商) booked here or copied from nodes below.

Revision ID: 0004
Revises: 0003

Idempotent: the baseline creates the tables from the current models, so on a fresh database there
is nothing left to do; a database from before gets the table and its indexes.
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if "video_consultations" in sa.inspect(op.get_bind()).get_table_names():
        return
    op.create_table(
        "video_consultations",
        sa.Column("consultation_id", sa.String(64), primary_key=True),
        sa.Column("case_id", sa.String(64), nullable=False),
        sa.Column("host_node", sa.String(6), nullable=False),
        sa.Column("topic", sa.String(200), nullable=False),
        sa.Column("participants", sa.JSON(), nullable=False),
        sa.Column("starts_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ends_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("minutes", sa.Text(), nullable=False),
        sa.Column("booked_by", sa.String(64), nullable=False),
        sa.Column("held_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("hold_ids", sa.JSON(), nullable=False),
        sa.Column("replica", sa.Boolean(), nullable=False),
        sa.Column("cancel_reason", sa.String(1000), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_video_consultations_case_start", "video_consultations", ["case_id", "starts_at"])
    op.create_index("ix_video_consultations_state", "video_consultations", ["state"])


def downgrade() -> None:
    op.drop_table("video_consultations")
