"""Baselines shared by the benchmarks: what the machine does without Lianxin in the way."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy import Engine

# About the size of a submission's title and body.
_BODY = "乐山市市中区嘉州大道路段路灯长期不亮，夜间出行不安全，请尽快维修。" * 3


def raw_insert_loop(engine: Engine) -> tuple[Callable[[int, int], None], Callable[[], None]]:
    """(insert, drop): ``insert(client, n)`` is one single-row INSERT + COMMIT of a submission-sized
    row through SQLAlchemy with the engine's settings (the services' own); ``drop`` removes the table."""
    metadata = sa.MetaData()
    table = sa.Table(
        "bench_raw_insert",
        metadata,
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("body", sa.Text),
        sa.Column("at", sa.DateTime(timezone=True)),
    )
    metadata.create_all(engine)

    def insert(client: int, n: int) -> None:
        with engine.begin() as conn:
            conn.execute(table.insert().values(id=f"{client}-{n}-{uuid.uuid4().hex[:8]}", body=_BODY, at=sa.func.now()))

    return insert, lambda: metadata.drop_all(engine)
