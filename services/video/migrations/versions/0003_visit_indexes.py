"""ListVisits reads one page: a leader's and a case's visits by start time.

ListVisits read every visit of the leader (or case) and sliced the page in Python, so a leader's
years of receptions were read for each page (issue 20). ``ix_video_visits_leader_start`` and
``ix_video_visits_case_start`` serve the page as one index range; they replace the single-column
indexes on leader_id and case_id (their leading column).

Revision ID: 0003
Revises: 0002

Idempotent: the baseline creates the tables from the current models, so on a fresh database there
is nothing left to do.
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_NEW = {
    "ix_video_visits_leader_start": ("leader_id", "starts_at", "visit_id"),
    "ix_video_visits_case_start": ("case_id", "starts_at", "visit_id"),
}
_REPLACED = {"ix_video_visits_leader_id": ("leader_id",), "ix_video_visits_case_id": ("case_id",)}


def upgrade() -> None:
    indexes = {i["name"] for i in sa.inspect(op.get_bind()).get_indexes("video_visits")}
    for name, columns in _NEW.items():
        if name not in indexes:
            op.create_index(name, "video_visits", list(columns))
    for name in _REPLACED:
        if name in indexes:
            op.drop_index(name, table_name="video_visits")


def downgrade() -> None:
    for name, columns in _REPLACED.items():
        op.create_index(name, "video_visits", list(columns))
    for name in _NEW:
        op.drop_index(name, table_name="video_visits")
