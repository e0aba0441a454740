"""video's tables. The first release has only the event outbox and inbox; the service's own tables follow."""

from __future__ import annotations

from sqlalchemy.orm import DeclarativeBase

from services.common.outbox import inbox_table, outbox_table


class Base(DeclarativeBase):
    pass


metadata = Base.metadata
outbox = outbox_table(metadata)
inbox = inbox_table(metadata)
