"""The container image recipe: multi-stage, python:3.11-slim, non-root, the project pip-installed, one entrypoint."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = (REPO / "Dockerfile").read_text(encoding="utf-8")


def _instructions(keyword: str) -> list[str]:
    return re.findall(rf"^{keyword}\s+(.+)$", DOCKERFILE, flags=re.MULTILINE)


def test_image_is_built_in_stages_from_python_311_slim() -> None:
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in DOCKERFILE
    stages = _instructions("FROM")
    assert len(stages) >= 2
    assert all(stage.startswith("${PYTHON_IMAGE}") for stage in stages)


def test_runtime_runs_as_a_numeric_non_root_user() -> None:
    (user,) = _instructions("USER")
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0  # numeric, so Kubernetes can check runAsNonRoot


def test_project_is_pip_installed_and_lianxin_is_the_entrypoint() -> None:
    assert "pip install --no-deps ." in DOCKERFILE
    assert "-c constraints.txt" in DOCKERFILE  # the same lock as `make venv`
    assert _instructions("ENTRYPOINT") == ['["lianxin"]']


def test_build_context_keeps_what_pip_install_needs() -> None:
    ignored = {
        line.strip()
        for line in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    for needed in ("services", "gen", "pyproject.toml", "README.md", "constraints.txt"):
        assert needed not in ignored
    assert {".venv", ".git", "var"} <= ignored
