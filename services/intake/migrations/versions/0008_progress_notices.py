"""办事进度推送: the ``progress_notices`` outbox (notices to the citizen, with their retries).

Revision ID: 0008
Revises: 0007

Idempotent: the baseline creates the tables from the current models, so on a fresh database there
is nothing left to do.
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    from services.intake.models import ProgressNoticeRow

    if "progress_notices" not in sa.inspect(op.get_bind()).get_table_names():
        ProgressNoticeRow.__table__.create(op.get_bind())  # type: ignore[attr-defined]


def downgrade() -> None:
    op.drop_table("progress_notices")
