"""第三方评价: the month's drawn samples (``evaluation_samples``) and their cases with the ratings
(``evaluation_items``), for DrawEvaluationSample / ListEvaluationSample / RecordThirdPartyRating.

Revision ID: 0009
Revises: 0008

Idempotent: the baseline creates the tables from the current models, so on a fresh database there
is nothing left to do.
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    if not inspector.has_table("evaluation_samples"):
        op.create_table(
            "evaluation_samples",
            sa.Column("month", sa.String(7), primary_key=True),
            sa.Column("node", sa.String(6), nullable=False),
            sa.Column("seed", sa.String(64), nullable=False),
            sa.Column("percent", sa.Integer, nullable=False),
            sa.Column("minimum", sa.Integer, nullable=False),
            sa.Column("drawn_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("drawn_by", sa.String(64), nullable=False),
            sa.Column("units", sa.Text, nullable=False),
        )
    if not inspector.has_table("evaluation_items"):
        op.create_table(
            "evaluation_items",
            sa.Column("month", sa.String(7), primary_key=True),
            sa.Column("case_id", sa.String(32), primary_key=True),
            sa.Column("work_order_id", sa.String(64), nullable=False),
            sa.Column("unit_id", sa.String(64), nullable=False),
            sa.Column("rank", sa.Integer, nullable=False),
            sa.Column("closed_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("category", sa.String(32), nullable=False),
            sa.Column("region_code", sa.String(12), nullable=False),
            sa.Column("rating", sa.String(24), nullable=False),
            sa.Column("comment", sa.Text, nullable=False),
            sa.Column("rated_by", sa.String(64), nullable=False),
            sa.Column("rated_at", sa.DateTime(timezone=True), nullable=True),
        )
        op.create_index("ix_evaluation_items_unit", "evaluation_items", ["month", "unit_id", "rank"])


def downgrade() -> None:
    op.drop_table("evaluation_items")
    op.drop_table("evaluation_samples")
