"""Personal data in free text sealed, and the place of the matter kept apart from the complainant's home.

Revision ID: 0005
Revises: 0004

``title_sealed``/``body_sealed`` hold the citizen's original title and body (SM4) when they held
personal data, ``title``/``body`` then hold the masked text; ``place_address`` is the place of the
matter (事发地址), visible to handlers. Idempotent like 0003: a fresh database already has them.
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    columns = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("cases")}
    with op.batch_alter_table("cases") as batch:
        for name in ("title_sealed", "body_sealed"):
            if name not in columns:
                batch.add_column(sa.Column(name, sa.LargeBinary, nullable=True))
        if "place_address" not in columns:
            batch.add_column(sa.Column("place_address", sa.String(200), nullable=True, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("cases") as batch:
        batch.drop_column("place_address")
        batch.drop_column("body_sealed")
        batch.drop_column("title_sealed")
