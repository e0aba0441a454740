"""One statement per table and batch for exchange's hot path, sent to the DB-API driver directly.

Why not SQLAlchemy Core here: its executemany builds and processes a parameter dict per row, and
psycopg's executemany sends one statement per row (pipelined, but still parsed and executed per
row). For a 500-event push that was most of the time (cProfile: about 60 % of ``receive_push`` on
SQLite, 75 % on PostgreSQL). Here a batch costs one statement per table: SQLite gets ``executemany``
with plain tuples (in-process, no round trip), PostgreSQL one ``INSERT … SELECT * FROM unnest(arrays)``
(one round trip whatever the batch size). IN lists are one parameter as well: a JSON array read
with ``json_each`` on SQLite, an array with ``= ANY`` on PostgreSQL, so no statement is re-compiled
per list length.

Statements are written with ``?`` placeholders and an ``{in}`` marker per IN list; the same SQL
(``ON CONFLICT … DO UPDATE … WHERE``, ``excluded``) is valid on both databases.

They run on the connection's DB-API cursor, not through ``exec_driver_sql``: at Sichuan's rate a
push carries one or two events, so a push's transaction is about eight small statements, and
SQLAlchemy's execution of each (context, event dispatch, result wrapping: ~0.1 ms) cost more than
SQLite's running it. A driver error is raised as SQLAlchemy's wrapper (``DBAPIError.instance``, as
``exec_driver_sql`` would), so callers and the servicer's error mapping see what they saw before
("database is locked" is an ``OperationalError``: UNAVAILABLE), with the parameters hidden.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import LargeBinary, Table
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session


@dataclass(frozen=True)
class AsSet:
    """An IN list that PostgreSQL matches as a set (``IN (SELECT unnest(…::text[]))``: hashed, or an index probe
    per value) rather than ``= ANY(…)``.

    A parameter's array is opaque to the planner, which guesses ten elements; on a table it thinks
    small (a new node's, before autovacuum has analysed it) it then scans the table and compares every
    row with every element of the array. A 500-event push's 500 cases against a parent's 3,333 known
    epochs took 25 ms that way, most of what storing the push cost (issue 21: a 10,000-event catch-up is
    20 of them). As a set the same lookup took under 1 ms, and on a large analysed table no longer than
    ``= ANY``. SQLite's form is the same either way.
    """

    values: Sequence[Any]
    sql_type: str = "text"  # the elements' type on PostgreSQL, written in the statement so that it
    # stands on its own (a PREPARE with untyped parameters cannot choose among unnest's overloads)


class Bulk:
    """Raw batch statements on the session's connection (inside the caller's transaction)."""

    def __init__(self, session: Session) -> None:
        self._conn: Connection = session.connection()
        self.postgres = self._conn.dialect.name == "postgresql"
        self._cursor: Any = None

    def _execute(self, sql: str, params: Any, *, many: bool = False) -> Any:
        """Run ``sql`` on the DB-API cursor of the session's connection (its transaction)."""
        if self._cursor is None:
            self._cursor = self._conn.connection.cursor()
        cursor = self._cursor
        try:
            if many:
                cursor.executemany(sql, params)
            else:
                cursor.execute(sql, params)
        except Exception as error:
            dialect = self._conn.dialect
            base = dialect.loaded_dbapi.Error
            if not isinstance(error, base):
                raise
            raise DBAPIError.instance(
                sql, None, error, base, hide_parameters=True, dialect=dialect, ismulti=many
            ) from error
        return cursor

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.postgres else sql

    def _in(self, values: Sequence[Any] | AsSet) -> tuple[str, Any]:
        if isinstance(values, AsSet):
            if self.postgres:
                return f"IN (SELECT unnest(%b::{values.sql_type}[]))", list(values.values)
            values = values.values
        if self.postgres:
            return "= ANY(%b)", list(values)
        return "IN (SELECT value FROM json_each(?))", json.dumps(list(values))

    def rows(self, sql: str, *params: Any, lists: Sequence[Sequence[Any] | AsSet] = ()) -> list[Any]:
        """Rows of ``sql``; each ``{in}`` marker is filled, in order, from ``lists`` (after ``params``)."""
        fragments: list[str] = []
        values: list[Any] = list(params)
        for items in lists:
            fragment, value = self._in(items)
            fragments.append(fragment)
            values.append(value)
        text = sql.format(*fragments) if fragments else sql
        return list(self._execute(self._sql(text), tuple(values)).fetchall())

    def execute(self, sql: str, *params: Any) -> None:
        self._execute(self._sql(sql), tuple(params))

    def moment(self, table: Table, column: str, value: Any) -> Any:
        """``value`` as ``table.column``'s type stores it (SQLite: a DateTime's text), for ``rows``' parameters."""
        if self.postgres:
            return value
        dialect = self._conn.dialect
        process = table.c[column].type.dialect_impl(dialect).bind_processor(dialect)
        return process(value) if process is not None else value

    def insert(self, table: Table, columns: Sequence[str], rows: Sequence[Sequence[Any]], *, suffix: str = "") -> None:
        """INSERT ``rows`` (tuples in ``columns`` order) into ``table``; ``suffix`` is e.g. an ON CONFLICT clause.

        On PostgreSQL rows of one statement must not hit the same conflict key twice (callers
        pass one row per key), as for any multi-row upsert.
        """
        if not rows:
            return
        dialect = self._conn.dialect
        key = (table.name, tuple(columns), suffix, dialect.name)
        built = _INSERTS.get(key)
        if built is None:
            built = _INSERTS[key] = _build_insert(table, columns, suffix, dialect)
        sql, processors = built
        if self.postgres:
            self._execute(sql, tuple(list(column) for column in zip(*rows, strict=True)))
            return
        if processors:
            memos = [(index, _last_value_memo(process)) for index, process in processors]
            converted: list[Sequence[Any]] = []
            for row in rows:
                values = list(row)
                for index, memo in memos:
                    values[index] = memo(values[index])
                converted.append(tuple(values))
            rows = converted
        self._execute(sql, list(rows), many=True)


# Each insert's SQL and its columns' SQLite bind processors, built once per (table, columns, suffix,
# dialect): looking the processors up for every push cost more than SQLite's executing the insert.
_INSERTS: dict[tuple[str, tuple[str, ...], str, str], tuple[str, list[tuple[int, Callable[[Any], Any]]]]] = {}


def _build_insert(
    table: Table, columns: Sequence[str], suffix: str, dialect: Dialect
) -> tuple[str, list[tuple[int, Callable[[Any], Any]]]]:
    names = ", ".join(columns)
    if dialect.name == "postgresql":
        casts = ", ".join(f"%b::{table.c[name].type.compile(dialect=dialect)}[]" for name in columns)
        return f"INSERT INTO {table.name} ({names}) SELECT * FROM unnest({casts}) {suffix}", []
    processors: list[tuple[int, Callable[[Any], Any]]] = []
    for index, name in enumerate(columns):
        column_type = table.c[name].type
        # sqlite3 takes bytes as they are; SQLAlchemy would only wrap them in a memoryview.
        found = (
            None if isinstance(column_type, LargeBinary) else column_type.dialect_impl(dialect).bind_processor(dialect)
        )
        if found is not None:
            processors.append((index, found))
    marks = ", ".join("?" for _ in columns)
    return f"INSERT INTO {table.name} ({names}) VALUES ({marks}) {suffix}", processors


def _last_value_memo(process: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``process`` that reuses its last answer for the same object (a batch shares one timestamp)."""
    last: list[Any] = [object(), None]

    def memo(value: Any) -> Any:
        if value is not last[0]:
            last[0], last[1] = value, process(value)
        return last[1]

    return memo
