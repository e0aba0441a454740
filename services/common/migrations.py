"""Per-service Alembic migrations, applied at start (embedded) or by a separate step (production)."""

from __future__ import annotations

from importlib import resources
from types import ModuleType
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.environment import EnvironmentContext
from sqlalchemy import Engine, text

from services.common.outbox import install_outbox_notify


def _config(service: str, engine: Engine) -> Config:
    location = resources.files(f"services.{service}") / "migrations"
    config = Config()
    config.set_main_option("script_location", str(location))
    config.attributes["engine"] = engine
    return config


def upgrade(engine: Engine, service: str, revision: str = "head") -> None:
    """Bring the service's schema to ``revision``; idempotent, safe to call at every start.

    On PostgreSQL several pods (api, worker, the migration Job) may start at once: a session-level
    advisory lock per service makes them migrate one after another instead of racing on DDL.
    """
    if engine.dialect.name != "postgresql":
        command.upgrade(_config(service, engine), revision)
        return
    with engine.connect() as lock_conn:
        key = lock_conn.execute(text("SELECT hashtext(:name)"), {"name": f"lianxin-migrate-{service}"}).scalar_one()
        lock_conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
        try:
            command.upgrade(_config(service, engine), revision)
            with engine.begin() as conn:
                # The outbox's NOTIFY trigger wakes a worker's relay at each commit (outside the
                # revision chain: every service's outbox gets it, whichever revision made the table).
                install_outbox_notify(conn)
        finally:
            lock_conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
            lock_conn.commit()


def run_env(context: EnvironmentContext | ModuleType, target_metadata: Any) -> None:
    """Body of every service's ``migrations/env.py``: online mode on the engine handed in by ``upgrade``."""
    engine: Engine = context.config.attributes["engine"]
    with engine.begin() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=engine.dialect.name == "sqlite",
            compare_type=True,
        )
        context.run_migrations()
