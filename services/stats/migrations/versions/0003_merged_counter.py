"""并单: a ``merged`` counter in the rollups (metrics ``merged`` and ``matters``, docs/stats.md).

Revision ID: 0003
Revises: 0002

The derived tables hold nothing that is not in the facts: they are dropped, created in their
current shape and rebuilt from the facts (as 0002 does). Idempotent.
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    from services.stats.store import recreate_derived_tables

    recreate_derived_tables(op.get_bind())


def downgrade() -> None:
    raise NotImplementedError("the derived tables are rebuilt from the facts: restore a backup instead")
