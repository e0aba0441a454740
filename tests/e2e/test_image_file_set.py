"""The image's exact file set runs: the Dockerfile's build context, wheel and dependencies, nothing from the work tree.

The build context is what the Dockerfile's build stage COPYs, filtered by .dockerignore; the wheel is
built from it alone; it is installed with the same dependency list and lock as the Dockerfile into a
fresh virtualenv that sees none of the work tree. Then the commands the image runs in production:
``lianxin --help``, ``lianxin migrate`` on PostgreSQL, ``lianxin serve --service intake`` to SERVING
(and ``lianxin call`` against it), ``lianxin report``.

The dependency layer is cached under var/image-deps/<hash of the dependency list and the lock>, like
the Dockerfile's own dependency layer; the project layer (wheel and venv) is rebuilt on every run.
A real ``docker build`` is not run here: the base image (python:3.11-slim) comes from a registry this
machine cannot reach, and buildah/podman would need it as well.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import re
import shutil
import socket
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.crypto import new_data_key
from tests.support.helpers import wait_until

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = (REPO / "Dockerfile").read_text(encoding="utf-8")
pytestmark = [pytest.mark.slow, pytest.mark.postgres]


def build_stage_copies() -> list[tuple[list[str], str]]:
    """(sources, destination) of every COPY from the build context in the build stage."""
    build_stage = DOCKERFILE.split("\nFROM ")[1]
    copies = []
    for line in re.findall(r"^COPY\s+(.+)$", build_stage, flags=re.MULTILINE):
        parts = line.split()
        assert not parts[0].startswith("--from"), line
        copies.append((parts[:-1], parts[-1]))
    return copies


def dockerignore_names() -> list[str]:
    """The ``**/name`` patterns of .dockerignore (the others name top-level paths the COPYs never take)."""
    lines = (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
    return [line.strip()[3:] for line in lines if line.strip().startswith("**/")] + ["*.egg-info"]


def make_build_context(into: Path) -> Path:
    ignored = dockerignore_names()
    ignore = shutil.ignore_patterns(*ignored)
    for sources, destination in build_stage_copies():
        for source in sources:
            origin = REPO / source
            target = into / destination / source if destination.endswith("/") else into / destination
            if origin.is_dir():
                shutil.copytree(origin, target, ignore=ignore)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(origin, target)
    assert not any(fnmatch.fnmatch(path.name, pattern) for path in into.rglob("*") for pattern in ignored)
    return into


def dependencies() -> list[str]:
    """The image's dependency list: pyproject's runtime dependencies, exactly as the Dockerfile extracts them."""
    with (REPO / "pyproject.toml").open("rb") as fh:
        return list(tomllib.load(fh)["project"]["dependencies"])


def base_python() -> str:
    """The interpreter beneath the dev venv: a fresh venv from it inherits none of the dev packages."""
    for name in ("python3.11", "python3"):
        candidate = Path(sys.base_prefix) / "bin" / name
        if candidate.exists():
            return str(candidate)
    raise AssertionError(f"no python under {sys.base_prefix}")


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "--quiet", *args], check=True, timeout=1800)


def dependency_layer() -> Path:
    lock = (REPO / "constraints.txt").read_bytes()
    key = hashlib.sha256("\n".join([sys.version, *dependencies()]).encode() + lock).hexdigest()[:16]
    layer = REPO / "var" / "image-deps" / key
    if not layer.exists():
        building = layer.with_name(f"{key}.building-{os.getpid()}")
        shutil.rmtree(building, ignore_errors=True)
        requirements = building.with_suffix(".txt")
        building.parent.mkdir(parents=True, exist_ok=True)
        requirements.write_text("\n".join(dependencies()) + "\n", encoding="utf-8")
        pip("install", "--target", str(building), "-c", str(REPO / "constraints.txt"), "-r", str(requirements))
        requirements.unlink()
        building.rename(layer)
        for stale in layer.parent.iterdir():  # layers of earlier dependency lists (half a gigabyte each)
            if stale.is_dir() and stale != layer and ".building-" not in stale.name:
                shutil.rmtree(stale, ignore_errors=True)
    return layer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the image's dependencies and the wheel built from the image's file set; its bin dir."""
    root = tmp_path_factory.mktemp("image")
    context = make_build_context(root / "context")
    wheel_command = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation"]
    subprocess.run(
        [*wheel_command, "-w", str(root / "dist"), str(context)],
        check=True,
        timeout=600,
        cwd=root,
    )
    (wheel,) = (root / "dist").glob("lianxin-*.whl")
    venv = root / "venv"
    subprocess.run([base_python(), "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    (site,) = venv.glob("lib/python3*/site-packages")
    (site / "image-dependencies.pth").write_text(f"{dependency_layer()}\n", encoding="utf-8")
    pip("--python", str(venv / "bin" / "python"), "install", "--no-deps", str(wheel))
    return venv / "bin"


def environment(image: Path, home: Path, **settings: str) -> dict[str, str]:
    """The container's environment: nothing of the test's (no PYTHONPATH, no work tree), the image's paths."""
    return {
        "PATH": f"{image}:/usr/bin:/bin",
        "HOME": str(home),
        "MPLCONFIGDIR": str(home / "matplotlib"),
        "LIANXIN_DATA_DIR": str(home / "lianxin"),
        "LIANXIN_GRPC_HOST": "127.0.0.1",
        "PYTHONDONTWRITEBYTECODE": "1",
        **settings,
    }


def run(image: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(image / "lianxin"), *args], capture_output=True, text=True, timeout=600, env=env, cwd=env["HOME"]
    )
    assert result.returncode == 0, f"lianxin {' '.join(args)}: {result.stderr[-3000:]}"
    assert "Traceback" not in result.stderr
    return result


@pytest.fixture()
def serving(image: Path, postgres_url: str, tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    env = environment(
        image,
        tmp_path,
        LIANXIN_NODE="511102",
        LIANXIN_DATABASE_URL=postgres_url,
        LIANXIN_GRPC_PORT=str(free_port()),
        LIANXIN_METRICS_PORT=str(free_port()),
        LIANXIN_DATA_KEYS=f"image:{new_data_key()}",  # production processes refuse to start without
    )
    run(image, env, "migrate")
    process = subprocess.Popen(
        [str(image / "lianxin"), "serve", "--service", "intake"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    address = f"127.0.0.1:{env['LIANXIN_GRPC_PORT']}"
    try:
        yield address, env
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=30)
        assert "Traceback" not in output, output[-3000:]


def test_image_file_set_has_no_bench_and_no_dev_extras(image: Path, tmp_path: Path) -> None:
    code = "import importlib.util as u; print([m for m in ('bench', 'grpc_requests', 'pytest') if u.find_spec(m)])"
    result = subprocess.run(
        [str(image / "python"), "-c", code],
        capture_output=True,
        text=True,
        env=environment(image, tmp_path),
        cwd=tmp_path,
    )
    assert result.stdout.strip() == "[]", result.stderr


def test_image_runs_help(image: Path, tmp_path: Path) -> None:
    help_text = run(image, environment(image, tmp_path), "--help").stdout
    for command in ("serve", "worker", "migrate", "report", "call"):
        assert command in help_text


def test_image_migrates_serves_intake_to_serving_and_answers_call(
    image: Path, serving: tuple[str, dict[str, str]]
) -> None:
    address, env = serving

    def intake_serving() -> bool:
        with grpc.insecure_channel(address) as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service="lianxin.intake.v1.IntakeService"), timeout=2
                )
            except grpc.RpcError:
                return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    wait_until(intake_serving, timeout=120, message="the image's intake-api SERVING")
    listed = run(image, env, "call", address, "--list").stdout
    assert "lianxin.intake.v1.IntakeService" in listed and "  SubmitCase" in listed


def test_image_writes_the_monthly_bulletin_from_postgresql(image: Path, postgres_url: str, tmp_path: Path) -> None:
    env = environment(image, tmp_path, LIANXIN_NODE="511100", LIANXIN_DATABASE_URL=postgres_url)
    run(image, env, "migrate", "--service", "stats")
    out = tmp_path / "bulletin"
    printed = run(image, env, "report", "--region", "511100", "--month", "2026-11", "--out", str(out)).stdout
    assert f"wrote {out / 'bulletin.md'}" in printed
    assert (out / "bulletin.md").read_text(encoding="utf-8").startswith("# ")
    assert list(out.glob("*.png")) and list(out.glob("*.csv"))
