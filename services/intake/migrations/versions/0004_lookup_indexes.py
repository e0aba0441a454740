"""Index-backed submit lookups: per-branch indexes, and partial indexes over open cases only.

The per-submit lookup asked "same phone OR same ID number" in one condition; with most stored ID
numbers empty PostgreSQL's generic plan walked every case by date instead (issue 20). Each branch
now has an index of its own whose leading column is the equality, and the lookups among open cases
(same person, same text, SimHash bands) use partial indexes holding the open cases only: their cost
follows the open workload, not the years of closed cases. The single-column indexes they replace
are dropped (each index costs every insert).

Revision ID: 0004
Revises: 0003

Idempotent: the baseline creates the tables from the current models, so on a fresh database there
is nothing left to do.
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_REPLACED = {
    "ix_cases_id_number_bidx": ("id_number_bidx",),
    "ix_cases_phone_bidx": ("phone_bidx",),
    "ix_cases_fingerprint": ("fingerprint",),
    **{f"ix_cases_band{n}": (f"band{n}",) for n in range(4)},
}


def upgrade() -> None:
    from services.intake.models import OPEN_CASE_INDEXES, OPEN_CASE_SQL, PERSON_INDEXES

    indexes = {i["name"] for i in sa.inspect(op.get_bind()).get_indexes("cases")}
    for name, columns in PERSON_INDEXES.items():
        if name not in indexes:
            op.create_index(name, "cases", list(columns))
    open_case = sa.text(OPEN_CASE_SQL)
    for name, columns in OPEN_CASE_INDEXES.items():
        if name not in indexes:
            op.create_index(name, "cases", list(columns), sqlite_where=open_case, postgresql_where=open_case)
    for name in _REPLACED:
        if name in indexes:
            op.drop_index(name, table_name="cases")


def downgrade() -> None:
    from services.intake.models import OPEN_CASE_INDEXES

    for name, columns in _REPLACED.items():
        op.create_index(name, "cases", list(columns))
    for name in OPEN_CASE_INDEXES:
        op.drop_index(name, table_name="cases")
    op.drop_index("ix_cases_id_number_received", table_name="cases")
