"""Baseline: the exchange tables as of the first release (later revisions use explicit operations).

Revision ID: 0001
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    from services.exchange.models import metadata

    metadata.create_all(op.get_bind())


def downgrade() -> None:
    from services.exchange.models import metadata

    metadata.drop_all(op.get_bind())
