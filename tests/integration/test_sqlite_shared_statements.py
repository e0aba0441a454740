"""Every SQLite engine of a process shares its compiled statements (issue 21: a host of ~60 nodes).

SQLAlchemy keys compiled statements by the engine's dialect object. Each node's services had a
dialect of their own, so every node compiled every statement again at its first cases: the Sichuan
tree spent its first seconds of load compiling (~50 ms a node) and fell behind for minutes. The ORM's
flush statements sit in a cache of 100 per mapper, too small for ~60 nodes' engines at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, insert, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.sql import compiler

from services.common.db import make_engine, make_session_factory

metadata = MetaData()
items = Table("items", metadata, Column("id", Integer, primary_key=True), Column("name", String(20)))


class _Base(DeclarativeBase):
    pass


class Note(_Base):
    __tablename__ = "shared_statement_notes"
    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str] = mapped_column(String(40))


@pytest.fixture()
def compiled(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The SQL of every statement SQLAlchemy compiles while the test runs."""
    seen: list[str] = []
    original = compiler.SQLCompiler.__init__

    def counting(self: compiler.SQLCompiler, *args: object, **kwargs: object) -> None:
        original(self, *args, **kwargs)  # type: ignore[arg-type]
        seen.append(self.string)

    monkeypatch.setattr(compiler.SQLCompiler, "__init__", counting)
    yield seen


def _nodes(tmp_path: Path, count: int) -> list[str]:
    return [f"sqlite:///{tmp_path / f'node{i}.db'}" for i in range(count)]


def test_a_statement_is_compiled_once_for_every_node_of_the_process(tmp_path: Path, compiled: list[str]) -> None:
    engines = [make_engine(url, service="shared") for url in _nodes(tmp_path, 4)]
    for number, engine in enumerate(engines):
        metadata.create_all(engine)
        with engine.begin() as conn:
            conn.execute(insert(items), {"id": 1, "name": f"node {number}"})
    compiled.clear()
    answers = []
    for engine in engines:
        with engine.begin() as conn:
            conn.execute(insert(items), {"id": 2, "name": "second"})
            answers.append(conn.execute(select(items.c.name).where(items.c.id == 1)).scalar_one())
    # Each node reads its own file: the statements are shared, the data is not.
    assert answers == ["node 0", "node 1", "node 2", "node 3"]
    assert [sql for sql in compiled if sql.startswith("SELECT")] == [
        "SELECT items.name \nFROM items \nWHERE items.id = ?"
    ]
    assert not [sql for sql in compiled if sql.startswith("INSERT")], "the insert was compiled again"


def test_the_orm_flush_of_sixty_nodes_is_compiled_once(tmp_path: Path, compiled: list[str]) -> None:
    engines = [make_engine(url, service="shared") for url in _nodes(tmp_path, 60)]
    for engine in engines:
        _Base.metadata.create_all(engine)
    sessions = [make_session_factory(engine) for engine in engines]
    for round_ in range(2):
        compiled.clear()
        for number, factory in enumerate(sessions):
            with factory() as session, session.begin():
                session.add(Note(id=round_ + 1, text=f"node {number} round {round_}"))
        inserts = [sql for sql in compiled if sql.startswith("INSERT INTO shared_statement_notes")]
        # The mapper's cache holds 100 statements: one per engine could not stay for 60 engines.
        assert len(inserts) == (1 if round_ == 0 else 0), inserts
    with sessions[59]() as session:
        assert [note.text for note in session.query(Note).order_by(Note.id)] == ["node 59 round 0", "node 59 round 1"]
