"""Shared fixtures: the real PostgreSQL and RabbitMQ of the machine, and the shared data folder.

Without the services a test skips with the reason; with LIANXIN_REQUIRE_SERVICES=1 (CI) it fails.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.services import AMQP_HOST, fresh_postgres_database, fresh_vhost, unavailable

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("LIANXIN_SHARED_DATA", REPO.parent / "shared" / "data"))
# A crash of the session names its test (the hooks are in tests/support/crash.py).
pytest_plugins = ("tests.support.crash",)

PG_ADMIN_URL = os.environ.get("LIANXIN_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return SHARED_DATA


@pytest.fixture(scope="session")
def messages_csv() -> Path:
    path = SHARED_DATA / "messages.csv"
    if not path.exists():
        pytest.skip(f"{path} is absent (it cannot be shipped; place ../shared/data beside the repo)")
    return path


@pytest.fixture(scope="session")
def postgres_admin_url() -> str:
    try:
        import sqlalchemy as sa

        engine = sa.create_engine(PG_ADMIN_URL)
        with engine.connect() as conn:
            conn.execute(sa.text("select 1"))
        engine.dispose()
    except Exception as exc:
        unavailable("PostgreSQL", f"{PG_ADMIN_URL}: {exc.__class__.__name__}: {exc}")
    return PG_ADMIN_URL


@pytest.fixture()
def postgres_url(postgres_admin_url: str) -> Iterator[str]:
    """A fresh, empty database for one test, dropped afterwards."""
    with fresh_postgres_database(postgres_admin_url) as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Persistence tests run on both backends (DESIGN §5)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'test.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture(scope="session")
def rabbitmq_available() -> None:
    if not _port_open(AMQP_HOST, 5672):
        unavailable("RabbitMQ", f"nothing listens on {AMQP_HOST}:5672")


@pytest.fixture()
def amqp_uri(rabbitmq_available: None) -> Iterator[str]:
    """A fresh RabbitMQ virtual host for one test (a node has its own broker or vhost), deleted afterwards."""
    with fresh_vhost() as uri:
        yield uri
