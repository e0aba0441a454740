"""SimHash version 2: recompute every stored case's SimHash and its four bands.

Version 2 hashes a shingle with the splitmix64 finaliser in numpy instead of a blake2b call per
shingle (services.intake.dedup, six times faster on real messages). Values of the two versions are
not comparable, so the stored ones are recomputed from the stored title and body; otherwise a new
submission would no longer find its near-duplicates among the cases already registered.

Revision ID: 0002
Revises: 0001

Batched by case id (keyset), so memory stays flat whatever the table's size; a fresh database has
nothing to recompute. The downgrade recomputes nothing (version 1 is gone from the code): after it,
near-duplicate links between old and new cases stay missing until the upgrade runs again.
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

BATCH = 1000
_BANDS = 4
_BAND_BITS = 16


def _columns(value: int) -> dict[str, int]:
    # As services.intake.store stores them: signed 64-bit SimHash, 16-bit bands from the low end.
    out = {f"band{n}": (value >> (n * _BAND_BITS)) & ((1 << _BAND_BITS) - 1) for n in range(_BANDS)}
    out["simhash"] = value - (1 << 64) if value >= 1 << 63 else value
    return out


def upgrade() -> None:
    from services.intake import dedup

    bind = op.get_bind()
    cases = sa.table(
        "cases",
        sa.column("case_id", sa.String),
        sa.column("title", sa.String),
        sa.column("body", sa.Text),
        sa.column("simhash", sa.BigInteger),
        *(sa.column(f"band{n}", sa.Integer) for n in range(_BANDS)),
    )
    update = (
        cases.update()
        .where(cases.c.case_id == sa.bindparam("id"))
        .values(simhash=sa.bindparam("simhash"), **{f"band{n}": sa.bindparam(f"band{n}") for n in range(_BANDS)})
    )
    after = ""
    while True:
        rows = bind.execute(
            sa.select(cases.c.case_id, cases.c.title, cases.c.body)
            .where(cases.c.case_id > after)
            .order_by(cases.c.case_id)
            .limit(BATCH)
        ).all()
        if not rows:
            return
        bind.execute(
            update,
            [
                {"id": case_id, **_columns(dedup.simhash(dedup.submission_text(title or "", body or "")))}
                for case_id, title, body in rows
            ],
        )
        after = rows[-1].case_id


def downgrade() -> None:
    pass
