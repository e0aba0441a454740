"""The public reply board reads only published replies: ``ix_cases_published``.

ListPublishedReplies looked for the consent flag with a LIKE over every stored case, newest first,
and counted every match (5.2 s a page at 100,000 cases, issue 17). The partial index holds the
cases whose reply the citizen consented to publish, by date; the count stops at COUNT_LIMIT.

Revision ID: 0007
Revises: 0006

Idempotent: the baseline creates the tables from the current models, so on a fresh database there
is nothing left to do.
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    from services.intake.models import PUBLISHED_INDEX, PUBLISHED_TERMS

    name, columns = PUBLISHED_INDEX
    if name not in {i["name"] for i in sa.inspect(op.get_bind()).get_indexes("cases")}:
        published = sa.text(" AND ".join(PUBLISHED_TERMS))
        op.create_index(name, "cases", list(columns), sqlite_where=published, postgresql_where=published)


def downgrade() -> None:
    from services.intake.models import PUBLISHED_INDEX

    op.drop_index(PUBLISHED_INDEX[0], table_name="cases")
