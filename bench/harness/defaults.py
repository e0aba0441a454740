"""The harness's choices that `lianxin --help` shows, importable without the harness's dependencies."""

from __future__ import annotations

import os

DEFAULT_PG_ADMIN = os.environ.get("LIANXIN_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
BACKENDS = ("sqlite", "postgres")
