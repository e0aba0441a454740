"""The machine's real PostgreSQL and RabbitMQ for tests.

Skip on a laptop without them, fail in CI (LIANXIN_REQUIRE_SERVICES=1).
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

AMQP_HOST = os.environ.get("LIANXIN_TEST_AMQP_HOST", "127.0.0.1")


def _required() -> bool:
    return os.environ.get("LIANXIN_REQUIRE_SERVICES") == "1"


def unavailable(what: str, why: str) -> None:
    """Skip (laptop) or fail (CI) when a real service the test needs is not there."""
    message = f"{what} is not available: {why}"
    if _required():
        pytest.fail(message + " (LIANXIN_REQUIRE_SERVICES=1)")
    pytest.skip(message)


@contextmanager
def fresh_postgres_database(admin_url: str) -> Iterator[str]:
    """A new, empty PostgreSQL database (its URL), dropped when the block ends."""
    import sqlalchemy as sa

    name = f"lianxin_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def fresh_vhost() -> Iterator[str]:
    """A fresh RabbitMQ virtual host, deleted afterwards (for fixtures of any scope)."""
    vhost = f"lianxin_test_{uuid.uuid4().hex[:12]}"
    try:
        subprocess.run(["rabbitmqctl", "-q", "add_vhost", vhost], check=True, capture_output=True, timeout=60)
        subprocess.run(
            ["rabbitmqctl", "-q", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"],
            check=True,
            capture_output=True,
            timeout=60,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        unavailable("RabbitMQ vhost management (rabbitmqctl)", str(exc))
    yield f"amqp://guest:guest@{AMQP_HOST}:5672/{vhost}"
    subprocess.run(["rabbitmqctl", "-q", "delete_vhost", vhost], capture_output=True, timeout=60)
