"""The nameko test session: eventlet-patched, and therefore run on its own (DESIGN §4).

Commands: ``python -m tests.eventlet_pytest tests/nameko`` (``make test-nameko``: patches
before pytest starts) or plain ``python -m pytest tests/nameko``, where ``pytest_configure`` below
patches before any test module imports nameko. pytest has already imported ``tests/conftest.py``
(socket, subprocess) by then; eventlet patches those modules in place, so that is harmless.

A session that also collects other tests (``pytest tests`` without ``--ignore=tests/nameko``) must
stay unpatched for grpcio, so there these tests are not collected at all.
"""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def _dedicated(config: pytest.Config) -> bool:
    base = Path(config.invocation_params.dir)
    for arg in config.args:
        path = (base / arg.split("::")[0]).resolve()
        if path != HERE and HERE not in path.parents:
            return False
    return True


def pytest_configure(config: pytest.Config) -> None:
    if _dedicated(config):
        import eventlet

        eventlet.monkey_patch()  # idempotent when eventlet_pytest already did it


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    if not _dedicated(config) and HERE in collection_path.resolve().parents:
        return True
    return None
